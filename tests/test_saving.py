"""Saving images as A1111 1.10 does. Every expected name below is worked out by hand from A1111's rules
(``modules/images.py`` of 1.10: ``save_image``, ``FilenameGenerator``, ``sanitize_filename_part``,
``get_next_sequence_number``, ``save_image_with_geninfo``; ``modules/processing.py``, ``postprocessing.py``,
``img2img.py`` for where samples, grids, Extras results and init images go), never from our own output.

Rules used (A1111 1.10, restated):

R1  folder: ``outdir_samples`` if set, else ``outdir_<mode>_samples`` (grids: ``outdir_grids`` /
    ``outdir_<mode>_grids``; Extras: ``outdir_samples`` / ``outdir_extras_samples``; init images:
    ``outdir_init_images``).
R2  subfolder: grids when ``grid_save_to_dirs``; images when ``save_to_dirs`` (never Extras, never init
    images); its name is ``directories_filename_pattern`` applied (``[prompt_words]`` when empty), leading
    spaces and trailing "\\ /" off.
R3  name: short names (grids unless ``grid_extended_filename``, Extras) or no seed: empty decoration; else
    ``samples_filename_pattern`` applied, or by default ``[seed]`` when ``save_to_dirs`` else
    ``[seed]-[prompt_spaces]``. With ``save_images_add_number`` (forced when the decoration is empty) the
    name is ``NNNNN-<decoration>`` (``<basename>-NNNN-<decoration>`` with a basename, e.g. ``grid``), where
    NNNNN is one more than the largest number starting any entry of the folder (after ``<basename>-``).
R4  an existing name: "Replace" overwrites it, anything else adds ``-1``, ``-2`` ...
R5  a token's value is sanitised: spaces to "_" (only for [prompt], [hasprompt]), ``#<>:"/\\|?*`` and
    newline/CR/tab to "_", leading spaces off, cut to 128 characters, trailing spaces and dots off.
    An unknown token stays ``[name]`` (args dropped); a few tokens mean "nothing, and drop the text
    before me" ([seed_last] and [batch_number] of a batch of one, [generation_number] of a single
    image, [denoising] of 0).
R6  format: ``samples_format`` / ``grid_format``; JPEG over 65535 px or WEBP over 16383 px: PNG. PNG:
    with ``enable_pnginfo`` the infotext (and the existing items) as text chunks, else none; JPEG/WEBP/AVIF:
    quality ``jpeg_quality``, WEBP lossless ``webp_lossless``, RGBA to RGB (JPEG/WEBP), the infotext as EXIF
    UserComment only with ``enable_pnginfo``.
R7  ``save_txt``: ``<name>.txt`` with the infotext and a newline.
R8  init images (``save_init_img``): ``<md5 of the pixel bytes>.png``, no subfolder, no number.
R9  Extras: numbered ``NNNNN`` (no decoration), or the source's name in batch modes
    (``use_original_name_batch``); chunks ``parameters`` (the source's), ``postprocessing`` and ``extras``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from tests.conftest import needs
from webui.a1111_options import a1111_option_defs
from webui.filenames import ImageFields
from webui.image_metadata import read_image_info
from webui.saving import ImageSaver
from webui.settings import core_option_defs

NOW = dt.datetime(2024, 5, 6, 7, 8, 9)  # naive local time, as A1111's datetime.now()
DAY = "2024-05-06"
INFO = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 16x8"


def options(**changes):
    """A1111 1.10's defaults (our catalogue of them), with ``changes``."""
    defs = core_option_defs()
    defs += a1111_option_defs(d.key for d in defs)
    return {**{d.key: d.default for d in defs}, **changes}


def image(size=(16, 8), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode) if mode in ("RGB", "RGBA") else 1
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


FIELDS = ImageFields(seed=42, prompt="a cat", request_prompt="a cat", negative_prompt="dog", steps=20,
                     cfg_scale=7.0, sampler="Euler a", model_name="tiny-sd1", model_hash="0123456789",
                     all_seeds=(42,), job_timestamp="20240506070000")


def save(tmp_path, opts=None, fields=FIELDS, kind="samples", img=None, info=INFO, **kw):
    saver = kw.pop("saver", None) or ImageSaver()
    return saver.save_image(img if img is not None else image(), kind, opts or options(), tmp_path, fields, info,
                            now=kw.pop("now", NOW), **kw)


def rel(tmp_path, saved) -> str:
    return saved.path.relative_to(tmp_path).as_posix()


# ---------------------------------------------------------------------------------------------- layout


def test_default_layout_is_date_folder_and_numbered_seed(tmp_path):
    # R1 outdir_txt2img_samples, R2 [date] subfolder, R3 "[seed]" decoration with a 5-digit number
    first, second = save(tmp_path), save(tmp_path)
    assert rel(tmp_path, first) == f"outputs/txt2img-images/{DAY}/00000-42.png"
    assert rel(tmp_path, second) == f"outputs/txt2img-images/{DAY}/00001-42.png"


def test_img2img_mode_and_outdir_overrides(tmp_path):
    img2img = ImageFields(seed=7, prompt="p", mode="img2img")
    assert rel(tmp_path, save(tmp_path, fields=img2img)) == f"outputs/img2img-images/{DAY}/00000-7.png"
    opts = options(outdir_txt2img_samples="outputs/mine", outdir_txt2img_grids="outputs/my-grids")
    assert rel(tmp_path, save(tmp_path, opts)) == f"outputs/mine/{DAY}/00000-42.png"
    assert rel(tmp_path, save(tmp_path, opts, kind="grids")) == f"outputs/my-grids/{DAY}/grid-0000.png"
    # R1: outdir_samples / outdir_grids, when set, win over every per-mode folder
    opts = options(outdir_samples="outputs/all", outdir_grids="outputs/all-grids")
    assert rel(tmp_path, save(tmp_path, opts)) == f"outputs/all/{DAY}/00000-42.png"
    assert rel(tmp_path, save(tmp_path, opts, fields=img2img)) == f"outputs/all/{DAY}/00001-7.png"
    assert rel(tmp_path, save(tmp_path, opts, kind="grids")) == f"outputs/all-grids/{DAY}/grid-0000.png"
    # Extras go to outputs/all itself, where the "2024-05-06" subfolder counts as number 2024 (R3)
    assert rel(tmp_path, save(tmp_path, opts, fields=None, kind="extras")) == "outputs/all/02025.png"


def test_default_decoration_without_subfolders_adds_the_prompt(tmp_path):
    # R3: "[seed]-[prompt_spaces]" when save_to_dirs is off; R5 keeps the spaces of [prompt_spaces]
    fields = ImageFields(seed=5, prompt="a red cat: big")
    saved = save(tmp_path, options(save_to_dirs=False), fields)
    assert rel(tmp_path, saved) == "outputs/txt2img-images/00000-5-a red cat_ big.png"


def test_pattern_with_prompt_words_worked_by_hand(tmp_path):
    fields = ImageFields(seed=1234, prompt="a cat, on a mat! (masterpiece:1.2)", steps=30)
    opts = options(samples_filename_pattern="[seed]-[steps]-[prompt_words]")
    # words split at spaces and punctuation: a cat on a mat masterpiece 1 2 -> the first 8
    assert save(tmp_path, opts, fields).path.name == "00000-1234-30-a cat on a mat masterpiece 1 2.png"
    opts = options(samples_filename_pattern="[seed]-[steps]-[prompt_words]", directories_max_prompt_words=3)
    assert save(tmp_path, opts, fields).path.name == "00001-1234-30-a cat on.png"
    opts = options(samples_filename_pattern="[seed]-[steps]-[prompt_words]", save_images_add_number=False)
    assert save(tmp_path, opts, fields).path.name == "1234-30-a cat on a mat masterpiece 1 2.png"
    # no words at all: "empty"
    assert save(tmp_path, opts, ImageFields(seed=1, prompt=",,", steps=2)).path.name == "1-2-empty.png"


def test_sequence_number_counts_every_entry_of_the_folder(tmp_path):
    folder = tmp_path / "outputs" / "txt2img-images"
    folder.mkdir(parents=True)
    for name in ("00003-1.png", "7.txt", "notes.png", "grid-0041.png"):
        (folder / name).write_bytes(b"x")
    opts = options(save_to_dirs=False, samples_filename_pattern="[seed]")
    # R3: the largest leading number of any entry (00003, 7 -> 7), +1; "grid-0041" starts with no number
    assert save(tmp_path, opts).path.name == "00008-42.png"
    # grids count only entries after "grid-": 0041 -> 0042
    grid_opts = options(outdir_txt2img_grids="outputs/txt2img-images", grid_save_to_dirs=False)
    assert save(tmp_path, grid_opts, kind="grids").path.name == "grid-0042.png"


def test_grid_names(tmp_path):
    # process_images / Loopback grids: basename "grid", short name (grid_extended_filename off): grid-NNNN
    assert rel(tmp_path, save(tmp_path, kind="grids")) == f"outputs/txt2img-grids/{DAY}/grid-0000.png"
    assert rel(tmp_path, save(tmp_path, kind="grids")) == f"outputs/txt2img-grids/{DAY}/grid-0001.png"
    # grid_extended_filename: the samples decoration, with the first seed of the job
    fields = ImageFields(seed=43, prompt="a cat", all_seeds=(40, 41, 42, 43), batch_size=2, n_iter=2)
    opts = options(grid_extended_filename=True, grid_save_to_dirs=False)
    assert rel(tmp_path, save(tmp_path, opts, fields, kind="grids")) == "outputs/txt2img-grids/grid-0000-40.png"
    # X/Y/Z plot: basename xyz_grid, not short
    saved = save(tmp_path, options(grid_save_to_dirs=False), fields, kind="grids", basename="xyz_grid",
                 short_filename=False, seed=41)
    assert saved.path.name == "xyz_grid-0000-41.png"


def test_subfolder_patterns(tmp_path):
    fields = ImageFields(seed=9, prompt="blue bird, sky", model_name="tiny-sd1")
    opts = options(directories_filename_pattern="[model_name]_[date]")
    assert rel(tmp_path, save(tmp_path, opts, fields)) == f"outputs/txt2img-images/tiny-sd1_{DAY}/00000-9.png"
    # an empty pattern means [prompt_words]
    opts = options(directories_filename_pattern="", directories_max_prompt_words=2)
    assert rel(tmp_path, save(tmp_path, opts, fields)) == "outputs/txt2img-images/blue bird/00000-9.png"
    # "/" nests folders; ".." never leaves the output folder (ours: A1111 would follow it)
    opts = options(directories_filename_pattern="../[seed]/x/")
    assert rel(tmp_path, save(tmp_path, opts, fields)) == "outputs/txt2img-images/9/x/00000-9.png"
    # grids follow grid_save_to_dirs, images save_to_dirs
    opts = options(save_to_dirs=False, grid_save_to_dirs=True)
    assert rel(tmp_path, save(tmp_path, opts, fields, kind="grids")) == f"outputs/txt2img-grids/{DAY}/grid-0000.png"


# ---------------------------------------------------------------------------------------------- tokens

TOKENS_FIELDS = ImageFields(
    seed=12, prompt="A Cat: on/a mat ", request_prompt="A Cat: on/a mat", negative_prompt="ugly, blurry",
    steps=25, cfg_scale=6.5, sampler="DPM++ 2M", scheduler="Automatic", default_scheduler="karras",
    styles=("None", "Cinematic", "Film/Grain"), model_name="my model", model_hash="abcdef1234",
    vae_file="vae-ft-mse-840000.safetensors", batch_size=4, n_iter=2, index=6, all_seeds=(10, 11, 12, 13, 14, 15,
                                                                                           16, 17),
    job_timestamp="20240506065000", denoising_strength=0.75)


def _sha(text: str, n: int | None = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@pytest.mark.parametrize("pattern, expected", [
    ("[seed]", "12"),
    ("[SEED]", "12"),  # tokens ignore case
    ("[seed_first]-[seed_last]", "10-17"),
    ("[steps]-[cfg]", "25-6.5"),
    ("[width]x[height]", "16x8"),  # the image's own size
    ("[styles]", "Cinematic, Film_Grain"),  # "None" left out, "/" sanitised, spaces kept
    ("[sampler]", "DPM++ 2M"),
    ("[scheduler]", "Karras"),  # "Automatic" is the sampler's default, capitalised
    ("[sampler_scheduler]", "DPM++ 2M Karras"),
    ("[model_hash]", "abcdef1234"),
    ("[model_name]", "my model"),
    ("[date]", DAY),
    ("[datetime]", "20240506070809"),
    ("[datetime<%Y_%m>]", "2024_05"),
    ("[datetime<%H:%M>]", "07_08"),  # ":" sanitised
    ("[datetime<>]", "20240506070809"),  # an empty format is the default one
    ("[job_timestamp]", "20240506065000"),
    ("[prompt_hash]", _sha("A Cat: on/a mat ")),
    ("[prompt_hash<4>]", _sha("A Cat: on/a mat ", 4)),
    ("[negative_prompt_hash]", _sha("ugly, blurry")),
    ("[full_prompt_hash<12>]", _sha("A Cat: on/a mat ugly, blurry", 12)),  # prompt, space, negative prompt
    ("[prompt]", "A_Cat__on_a_mat_"),  # spaces to "_" first, so the trailing one stays as "_"
    ("[prompt_spaces]", "A Cat_ on_a mat"),
    ("[prompt_words]", "A Cat on a mat"),
    ("[batch_number]-[batch_size]", "3-4"),  # index 6 of batches of 4: second batch, third image
    ("[generation_number]", "7"),  # 1 * 4 + 2 + 1
    ("[hasprompt<cat|nocat><dog|nodog><fish>]", "catnodog"),
    ("[clip_skip]", "2"),
    ("[denoising]", "0.75"),
    ("[vae_filename]", "vae-ft-mse-840000"),
    ("x[none]y", "xy"),
    ("[image_hash<10>]", "IMAGE10"),
    ("[basename]", "img"),
    ("[nope]-[nope<a><b>]", "[nope]-[nope]"),  # unknown: kept, arguments dropped
    ("[image_hash<x>]", "[image_hash]"),  # a bad argument keeps the token
    ("[seed<1>]", "[seed]"),  # an argument a token does not take, too
    ("[user]", "[user]"),  # no user: kept
    ('a"b|c?d', 'a"b|c?d'),  # literal text is not sanitised (only token values are)
])
def test_tokens(tmp_path, pattern, expected):
    img = image()
    if expected == "IMAGE10":
        expected = hashlib.sha256(img.tobytes()).hexdigest()[:10]
    opts = options(samples_filename_pattern=pattern, save_images_add_number=False, save_to_dirs=False,
                   CLIP_stop_at_last_layers=2)
    assert save(tmp_path, opts, TOKENS_FIELDS, img=img).path.name == f"{expected}.png"


@pytest.mark.parametrize("pattern, fields, expected", [
    # "nothing, and drop the text before me" (A1111 NOTHING_AND_SKIP_PREVIOUS_TEXT)
    ("[seed]-[seed_last]", ImageFields(seed=5, batch_size=1), "5"),
    ("[seed_first]", ImageFields(seed=5, batch_size=1, all_seeds=(3, 4, 5)), "5"),  # batch of one: its seed
    ("[seed]-[batch_number]", ImageFields(seed=5, batch_size=1, n_iter=3), "5"),
    ("[seed]_[generation_number]", ImageFields(seed=5), "5"),
    ("[seed]-[denoising]", ImageFields(seed=5, denoising_strength=0.0), "5"),
    ("[seed]-[generation_number]", ImageFields(seed=5, n_iter=3, index=2), "5-3"),
    ("[scheduler]", ImageFields(seed=5, scheduler="Align Your Steps"), "Align your steps"),
    ("[scheduler]", ImageFields(seed=5, scheduler="Automatic"), "Automatic"),  # no default of its own
    ("[styles]", ImageFields(seed=5), "None"),
    ("[vae_filename]", ImageFields(seed=5, vae_file=".hidden.vae.pt"), "hidden"),
    ("[vae_filename]", ImageFields(seed=5), "NoneType"),
    ("[prompt_no_styles]", ImageFields(seed=5, prompt="a cat, oil painting, masterpiece",
                                       style_prompts=("{prompt}, oil painting", "masterpiece")), "a cat"),
])
def test_tokens_that_depend_on_the_batch_and_styles(tmp_path, pattern, fields, expected):
    opts = options(samples_filename_pattern=pattern, save_images_add_number=False, save_to_dirs=False)
    assert save(tmp_path, opts, fields).path.name == f"{expected}.png"


def test_none_gives_just_the_number(tmp_path):
    opts = options(samples_filename_pattern="[none]", save_to_dirs=False)
    assert save(tmp_path, opts).path.name == "00000.png"
    # an empty decoration always gets a number, even with numbering off
    opts = options(samples_filename_pattern="[none]", save_to_dirs=False, save_images_add_number=False)
    assert save(tmp_path, opts).path.name == "00001.png"


def test_datetime_time_zones(tmp_path):
    now = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    opts = options(samples_filename_pattern="[datetime<%H-%M><Asia/Tokyo>]-[datetime<%H><asia/tokyo>]",
                   save_images_add_number=False, save_to_dirs=False)
    assert save(tmp_path, opts, now=now).path.name == "16-08-16.png"  # UTC+9; zone names in any case
    local = now.astimezone().strftime("%H")  # an unknown zone: local time
    opts = options(samples_filename_pattern="[datetime<%H><Not/AZone>]", save_images_add_number=False,
                   save_to_dirs=False)
    assert save(tmp_path, opts, now=now).path.name == f"{local}.png"


def test_sanitising_and_length_limit(tmp_path):
    opts = options(samples_filename_pattern="[prompt_spaces]", save_images_add_number=False, save_to_dirs=False)
    name = save(tmp_path, opts, ImageFields(seed=1, prompt='  a#b<c>d:e"f/g\\h|i?j*k\tl. . ')).path.name
    assert name == "a_b_c_d_e_f_g_h_i_j_k_l.png"  # leading spaces off, trailing " ." off
    long = "word " * 60  # 300 characters: cut to 128, then the trailing space off
    name = save(tmp_path, opts, ImageFields(seed=1, prompt=long)).path.name
    assert name == ("word " * 26)[:128].rstrip() + ".png"
    # [prompt] replaces spaces before cutting
    opts = options(samples_filename_pattern="[prompt]", save_images_add_number=False, save_to_dirs=False)
    assert save(tmp_path, opts, ImageFields(seed=1, prompt=long)).path.name == ("word_" * 26)[:128] + ".png"


def test_a_name_longer_than_the_file_system_allows_is_cut(tmp_path):
    opts = options(samples_filename_pattern="[prompt_spaces]-[prompt_spaces]-[prompt_spaces]",
                   save_images_add_number=False, save_to_dirs=False)
    saved = save(tmp_path, opts, ImageFields(seed=1, prompt="x" * 128))
    # three parts of 128 + 2 dashes = 386 characters: cut to 255 - 4 (A1111 keeps room for the extension)
    assert saved.path.name == ("x" * 128 + "-" + "x" * 128 + "-" + "x" * 128)[:251] + ".png"
    assert saved.path.is_file()


# ---------------------------------------------------------------------------------------------- replace


def test_replace_action(tmp_path):
    opts = options(samples_filename_pattern="[seed]", save_images_add_number=False, save_to_dirs=False)
    first = save(tmp_path, opts, img=image(seed=1))
    again = save(tmp_path, opts, img=image(seed=2))
    # R4 "Replace" (A1111's default): the same name, the new image
    assert first.path == again.path and first.path.name == "42.png"
    assert np.array_equal(np.asarray(Image.open(again.path)), np.asarray(image(seed=2)))
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["42.png"]
    # "Add number suffix": -1, -2 ... and nothing is overwritten
    opts = {**opts, "save_images_replace_action": "Add number suffix"}
    assert save(tmp_path, opts, img=image(seed=3)).path.name == "42-1.png"
    assert save(tmp_path, opts, img=image(seed=4)).path.name == "42-2.png"
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(image(seed=2)))


def test_parallel_saves_never_clobber_each_other(tmp_path):
    saver = ImageSaver()
    cases = {"numbered": options(), "suffixed": options(samples_filename_pattern="[seed]", save_images_add_number=False,
                                                        save_images_replace_action="Add number suffix")}
    for name, opts in cases.items():
        out: list[Path] = []
        lock = threading.Lock()

        def one(k: int) -> None:
            saved = saver.save_image(image(seed=k), "samples", opts, tmp_path / name, FIELDS, INFO, now=NOW)
            with lock:
                out.append(saved.path)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(out)) == 8 and all(p.is_file() for p in out), name
        folder = out[0].parent
        assert len([p for p in folder.iterdir() if p.suffix == ".png"]) == 8  # no temporary file left
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- formats


def _pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def _reference(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_png_infotext_and_enable_pnginfo(tmp_path):
    saved = save(tmp_path)
    with Image.open(saved.path) as im:
        assert im.format == "PNG" and read_image_info(im)[0] == INFO
    saved = save(tmp_path, options(enable_pnginfo=False))
    with Image.open(saved.path) as im:
        assert im.format == "PNG" and read_image_info(im) == (None, {}) and not im.text


def test_jpeg_quality_rgba_and_exif(tmp_path):
    img = image(mode="RGBA", seed=5)
    saved = save(tmp_path, options(samples_format="jpg", jpeg_quality=30), img=img)
    assert saved.path.suffix == ".jpg"
    with Image.open(saved.path) as im:
        assert im.format == "JPEG" and im.mode == "RGB"  # RGBA converted
        assert read_image_info(im)[0] == INFO  # EXIF UserComment, A1111's encoding
        got = _pixels(im)
    # quality 30 applied: the same pixels as Pillow's own quality-30 JPEG of the RGB image, not quality 95's
    assert np.array_equal(got, _pixels(_reference(img.convert("RGB"), "JPEG", quality=30)))
    assert not np.array_equal(got, _pixels(_reference(img.convert("RGB"), "JPEG", quality=95)))
    saved = save(tmp_path, options(samples_format="jpeg", enable_pnginfo=False))
    with Image.open(saved.path) as im:
        assert saved.path.suffix == ".jpeg" and im.format == "JPEG"
        assert read_image_info(im)[0] is None and "exif" not in im.info


def test_webp_lossless_and_lossy(tmp_path):
    img = image(seed=6)
    saved = save(tmp_path, options(samples_format="webp", webp_lossless=True))
    with Image.open(saved.path) as im:
        assert im.format == "WEBP" and read_image_info(im)[0] == INFO
    saved = save(tmp_path, options(samples_format="webp", webp_lossless=True), img=img)
    with Image.open(saved.path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(img))  # exactly the source
    saved = save(tmp_path, options(samples_format="webp", webp_lossless=False, jpeg_quality=40), img=img)
    with Image.open(saved.path) as im:
        got = _pixels(im)
    assert not np.array_equal(got, np.asarray(img, dtype=np.int16))
    assert np.array_equal(got, _pixels(_reference(img, "WEBP", quality=40)))


@needs(features.check("avif"), "Pillow without AVIF")
def test_avif(tmp_path):
    saved = save(tmp_path, options(samples_format="avif"))
    with Image.open(saved.path) as im:
        assert saved.path.suffix == ".avif" and im.format == "AVIF" and read_image_info(im)[0] == INFO
    saved = save(tmp_path, options(samples_format="avif", enable_pnginfo=False))
    with Image.open(saved.path) as im:
        assert read_image_info(im)[0] is None


def test_too_large_for_the_format_is_saved_as_png(tmp_path):
    # WEBP holds at most 16383 pixels a side, JPEG 65535 (A1111 switches to PNG)
    saved = save(tmp_path, options(samples_format="webp"), img=Image.new("RGB", (16384, 1)))
    assert saved.path.suffix == ".png" and Image.open(saved.path).format == "PNG"
    saved = save(tmp_path, options(samples_format="webp"), img=Image.new("RGB", (16383, 1)))
    assert saved.path.suffix == ".webp"
    saved = save(tmp_path, options(grid_format="jpg"), kind="grids", img=Image.new("RGB", (1, 65536)))
    assert saved.path.name == "grid-0000.png"


def test_grid_format(tmp_path):
    saved = save(tmp_path, options(grid_format="jpg", samples_format="webp"), kind="grids")
    assert saved.path.name == "grid-0000.jpg" and Image.open(saved.path).format == "JPEG"


def test_save_txt(tmp_path):
    saved = save(tmp_path, options(save_txt=True))
    assert saved.txt_path == saved.path.with_suffix(".txt")
    assert saved.txt_path.read_text(encoding="utf-8") == INFO + "\n"
    # written whatever enable_pnginfo says; not written without the option
    saved = save(tmp_path, options(save_txt=True, enable_pnginfo=False, samples_format="jpg"))
    assert saved.path.with_suffix(".txt").read_text(encoding="utf-8") == INFO + "\n"
    assert save(tmp_path).txt_path is None and not save(tmp_path).path.with_suffix(".txt").exists()
    # beside the file actually written when a suffix was added (ours: A1111 1.10 writes it unsuffixed)
    opts = options(save_txt=True, samples_filename_pattern="[seed]", save_images_add_number=False,
                   save_to_dirs=False, save_images_replace_action="Add number suffix")
    save(tmp_path, opts)
    second = save(tmp_path, opts, info="second")
    assert second.path.name == "42-1.png" and second.txt_path.name == "42-1.txt"
    assert second.txt_path.read_text(encoding="utf-8") == "second\n"


# ---------------------------------------------------------------------------------------------- Extras and init


def test_extras_numbered_with_postprocessing_chunks(tmp_path):
    existing = {"parameters": INFO, "postprocessing": "Postprocess upscale by: 2", "other": "x"}
    saved = save(tmp_path, fields=None, kind="extras", info="Postprocess upscale by: 2", existing_info=existing)
    # R9/R2: numbered NNNNN, no decoration, no date folder
    assert rel(tmp_path, saved) == "outputs/extras-images/00000.png"
    with Image.open(saved.path) as im:
        assert im.text == {"parameters": INFO, "postprocessing": "Postprocess upscale by: 2", "other": "x",
                           "extras": "Postprocess upscale by: 2"}
    assert rel(tmp_path, save(tmp_path, fields=None, kind="extras")) == "outputs/extras-images/00001.png"
    # JPEG: the EXIF comment is the Extras text (A1111 writes the "extras" section there)
    saved = save(tmp_path, options(samples_format="jpg"), fields=None, kind="extras", info="Postprocess: x",
                 existing_info=existing)
    assert read_image_info(Image.open(saved.path))[0] == "Postprocess: x"


def test_extras_batch_keeps_source_names_and_replaces(tmp_path):
    out = tmp_path / "batch-out"
    first = save(tmp_path, fields=None, kind="extras", outdir=out, forced_filename="photo", img=image(seed=1))
    again = save(tmp_path, fields=None, kind="extras", outdir=out, forced_filename="photo", img=image(seed=2))
    assert first.path == again.path == out / "photo.png"
    assert sorted(p.name for p in out.iterdir()) == ["photo.png"]


def test_init_images_named_by_the_md5_of_their_pixels(tmp_path):
    img = image(seed=3)
    img.info["parameters"] = "from an earlier generation"
    expected = hashlib.md5(img.tobytes()).hexdigest() + ".png"
    saved = save(tmp_path, options(samples_format="jpg", save_to_dirs=True), fields=None, kind="init", img=img,
                 info=None)
    assert rel(tmp_path, saved) == f"outputs/init-images/{expected}"  # PNG, no subfolder, no number
    again = save(tmp_path, fields=None, kind="init", img=img, info=None)
    assert again.path == saved.path and len(list(saved.path.parent.iterdir())) == 1
    with Image.open(saved.path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(img))
        # no infotext of its own: the "parameters" it came with is not kept (A1111 writes the text "None")
        assert "parameters" not in im.text
    assert rel(tmp_path, save(tmp_path, options(outdir_init_images="outputs/inits"), fields=None, kind="init",
                              img=img, info=None)) == f"outputs/inits/{expected}"


# ---------------------------------------------------------------------------------------------- failures, hooks


def test_hook_and_failed_write(tmp_path):
    class Hooks:
        def __init__(self):
            self.calls = []

        def image_saved(self, path, infotext, image):
            self.calls.append((path, infotext))

    hooks = Hooks()
    saved = save(tmp_path, hooks=hooks)
    assert hooks.calls == [(str(saved.path), INFO)]
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    with pytest.raises(OSError):
        save(tmp_path, options(outdir_txt2img_samples="blocked"), hooks=hooks)
    assert len(hooks.calls) == 1


def test_batch_folder_output_names(tmp_path):
    # A1111 img2img batch with an output folder: pattern = the input's name, no subfolder, numbering on
    from webui.pipeline.batch_folder import _save_outputs
    from webui.pipeline.request import GenerationRequest
    from webui.pipeline.result import GenerationResult

    one = GenerationResult(images=[image()], infotexts=[INFO], seeds=[3])
    req = GenerationRequest(prompt="x", seed=3, mode="img2img")
    out = tmp_path / "out"
    assert _save_outputs(ImageSaver(), req, one, "cat", out, options()) == [out / "00000-cat.png"]  # no [date]
    opts = options(save_images_add_number=False)
    assert [p.name for p in _save_outputs(ImageSaver(), req, one, "cat", out, opts)] == ["cat.png"]
    two = GenerationResult(images=[image(), image()], infotexts=[INFO, INFO], seeds=[3, 4])
    names = [p.name for p in _save_outputs(ImageSaver(), req.with_(batch_size=2), two, "dog", out, opts)]
    assert names == ["dog-1.png", "dog-2.png"]  # -[generation_number]


# ---------------------------------------------------------------------------------------------- end to end


def test_api_txt2img_saves_with_request_options(api_client, ctx):
    import json

    pattern = "[seed]-[batch_number]-[seed_last]-[steps]-[model_name]-[prompt_words]"
    body = {"prompt": "red ball, blue sky", "steps": 2, "width": 64, "height": 64, "seed": 123, "batch_size": 2,
            "sampler_name": "Euler", "save_images": True,
            "override_settings": {"samples_format": "jpg", "samples_filename_pattern": pattern, "save_to_dirs": False,
                                  "save_txt": True, "outdir_txt2img_samples": "outputs/test-saving-e2e"}}
    r = api_client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    infotexts = json.loads(r.json()["info"])["infotexts"]
    folder = ctx.settings.data_dir / "outputs" / "test-saving-e2e"
    names = ["00000-123-1-124-2-tiny-sd1-red ball blue sky.jpg", "00001-124-2-124-2-tiny-sd1-red ball blue sky.jpg"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg") == names
    for name, infotext in zip(names, infotexts):
        with Image.open(folder / name) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
            assert read_image_info(im)[0] == infotext
        assert (folder / name).with_suffix(".txt").read_text(encoding="utf-8") == infotext + "\n"


def test_script_grid_named_as_a1111(ctx):
    from webui.pipeline.request import GenerationRequest

    day = dt.date.today().isoformat()
    folder = ctx.settings.data_dir / "outputs" / "txt2img-grids" / day
    # A1111's Prompt matrix: basename "prompt_matrix", the default decoration "[seed]" (R3)
    taken = [int(p.name.split("-")[1]) for p in folder.glob("prompt_matrix-*")] if folder.is_dir() else []
    req = GenerationRequest(prompt="a cat|red", steps=2, width=64, height=64, seed=7, sampler_name="Euler",
                            save_images=True, override_settings={"samples_save": False})
    res = ctx.run_script(req, "Prompt matrix", [True, False, "positive", "space", 0])
    assert res.paths == [str(folder / f"prompt_matrix-{max(taken, default=-1) + 1:04}-7.png")]
    with Image.open(res.paths[0]) as im:
        assert read_image_info(im)[0] == res.infotexts[0]


def test_img2img_saves_its_init_image_even_when_results_are_not_saved(ctx):
    from webui.pipeline.request import GenerationRequest

    init = image(size=(64, 64), seed=11)
    req = GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", mode="img2img",
                            init_images=(init,), denoising_strength=0.5, save_images=False,
                            override_settings={"save_init_img": True, "outdir_init_images": "outputs/test-saving-init"})
    res = ctx.generate(req)
    folder = ctx.settings.data_dir / "outputs" / "test-saving-init"
    assert res.paths == [] and [p.name for p in folder.iterdir()] == [hashlib.md5(init.tobytes()).hexdigest() + ".png"]
