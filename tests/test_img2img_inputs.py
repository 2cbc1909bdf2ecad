"""img2img inputs outside the browser: editor values -> init image and mask, sub-tab requests, batch folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.errors import RequestError
from webui.pipeline.batch_folder import run_folder
from webui.pipeline.request import GenerationRequest
from webui.ui.editor import editor_value, inpaint_input, inpaint_sketch_input, sketch_input, strokes_mask
from webui.ui.img2img_inputs import img2img_request
from webui.ui.sendto import values_from_infotext

BASE = GenerationRequest(prompt="x", steps=3, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)


def stroke_layer(size=(64, 64), box=(10, 10, 30, 20), colour=(255, 0, 0, 255)) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(colour, box)
    return layer


def editor(background: Image.Image, layer: Image.Image | None) -> dict:
    composite = background.convert("RGBA")
    if layer is not None:
        composite.alpha_composite(layer)
    return {"background": background, "layers": [layer] if layer is not None else [], "composite": composite}


def test_strokes_become_the_mask_whatever_their_colour():
    value = editor(Image.new("RGB", (64, 64), "blue"), stroke_layer(colour=(12, 200, 40, 255)))
    image, mask = inpaint_input(value)
    m = np.asarray(mask)
    assert image.size == (64, 64) and m[15, 20] == 255 and m[0, 0] == 0 and m.sum() == 255 * 20 * 10
    assert np.asarray(image.convert("RGB"))[15, 20].tolist() == [0, 0, 255]  # inpaint: strokes not painted in


def test_sketch_and_inpaint_sketch_paint_the_strokes_into_the_image():
    value = editor(Image.new("RGB", (64, 64), "blue"), stroke_layer(colour=(255, 0, 0, 255)))
    assert np.asarray(sketch_input(value).convert("RGB"))[15, 20].tolist() == [255, 0, 0]
    image, mask = inpaint_sketch_input(value)
    assert np.asarray(image.convert("RGB"))[15, 20].tolist() == [255, 0, 0] and np.asarray(mask)[15, 20] == 255


def test_nothing_drawn_means_no_mask_and_layers_of_another_size_are_scaled():
    assert strokes_mask(editor(Image.new("RGB", (64, 64)), None), (64, 64)) is None
    small = stroke_layer((32, 32), (0, 0, 16, 16))
    mask = strokes_mask({"layers": [small]}, (64, 64))
    assert np.asarray(mask)[31, 31] == 255 and np.asarray(mask)[40, 40] == 0
    assert editor_value(None) is None and editor_value(Image.new("RGB", (8, 8)))["layers"] == []


def test_each_sub_tab_builds_its_request():
    pic = Image.new("RGB", (64, 64), "green")
    v = {"input_mode": "inpaint", "input_inpaint": editor(pic, stroke_layer()), "mask_blur": 2,
         "inpainting_fill": "latent noise", "inpaint_full_res": "Only masked", "inpaint_full_res_padding": 16,
         "inpainting_mask_invert": "Inpaint not masked", "resize_mode": "Crop and resize"}
    req = img2img_request(BASE, v)
    assert req.mode == "img2img" and req.mask is not None
    assert (req.mask_blur_x, req.inpainting_fill, req.inpaint_full_res, req.inpaint_full_res_padding,
            req.inpainting_mask_invert, req.resize_mode) == (2, 2, True, 16, 1, 1)
    assert img2img_request(BASE, {"input_mode": "img2img", "input_image": pic}).mask is None
    assert img2img_request(BASE, {"input_mode": "sketch", "input_sketch": editor(pic, stroke_layer())}).mask is None
    with pytest.raises(RequestError) as e:
        img2img_request(BASE, {"input_mode": "inpaint", "input_inpaint": editor(pic, None)})
    assert e.value.field == "mask"
    with pytest.raises(RequestError) as e:
        img2img_request(BASE, {"input_mode": "img2img", "input_image": None})
    assert e.value.field == "init_images"
    out = img2img_request(BASE, {"input_mode": "img2img", "input_image": pic, "outpaint_enable": True,
                                 "outpaint_pixels": 32, "outpaint_directions": ["left"], "mask_blur": 4,
                                 "inpainting_fill": "fill"})
    assert out.width == 96 and out.height == 64 and out.mask.size == (96, 64) and out.inpainting_fill == 0


def test_infotext_fills_img2img_fields_with_their_labels():
    text = ("p\nSteps: 5, Sampler: Euler, Seed: 3, Size: 64x64, Denoising strength: 0.3, Mask blur: 7, "
            "Mask mode: Inpaint not masked, Masked content: latent nothing, Inpaint area: Only masked, "
            "Masked area padding: 48")
    v = values_from_infotext(text, ["mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                                    "inpaint_full_res_padding", "denoising_strength", "steps"])
    assert v == {"mask_blur": 7, "inpainting_mask_invert": "Inpaint not masked", "inpainting_fill": "latent nothing",
                 "inpaint_full_res": "Only masked", "inpaint_full_res_padding": 48, "denoising_strength": 0.3,
                 "steps": 5}
    assert values_from_infotext("", ["steps"]) == {}


def test_batch_folder_with_masks_outputs_and_a_broken_file(ctx, tmp_path):
    src, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    src.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(src / "a.png")
    Image.fromarray(255 - a).save(src / "b.jpg", quality=95)
    (src / "c.png").write_bytes(b"this is not a png")
    (src / "notes.txt").write_text("ignored")
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(masks / "a.png")
    base = BASE.with_(mode="img2img", mask_blur_x=0, mask_blur_y=0, inpaint_full_res=False, inpainting_fill=0)
    report = run_folder(ctx.generate, base, src, out, ctx.saver, masks)
    assert report.processed == ["a.png", "b.jpg"]
    assert [name for name, _ in report.skipped] == ["c.png"]
    # A1111 img2img batch with an output folder: the input's name after the number (save_images_add_number)
    assert sorted(p.name for p in out.iterdir()) == ["00000-a.png", "00001-b.png"]
    first = np.asarray(Image.open(out / "00000-a.png").convert("RGB"))
    assert np.array_equal(first[m == 0], a[m == 0])  # a.png was inpainted with its mask
    assert "Mask blur: 0" in report.infotexts[0] and "Mask blur" not in report.infotexts[1]
    again = run_folder(ctx.generate, base, src, out, ctx.saver, masks)  # numbered on: never overwrites
    assert sorted(p.name for p in out.iterdir()) == ["00000-a.png", "00001-b.png", "00002-a.png", "00003-b.png"]
    assert again.processed == report.processed


def test_batch_folder_errors_name_the_field(ctx, tmp_path):
    with pytest.raises(RequestError) as e:
        run_folder(ctx.generate, BASE, tmp_path / "missing", None, ctx.saver)
    assert e.value.field == "input_dir"
    with pytest.raises(RequestError) as e:
        run_folder(ctx.generate, BASE, tmp_path, None, ctx.saver)
    assert e.value.field == "input_dir" and "no images" in e.value.message
