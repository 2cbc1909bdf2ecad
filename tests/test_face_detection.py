"""Face detection on a real RetinaFace file, unpatched, checked against facexlib's own pipeline.

The other face tests make RetinaFace report a face by patching ``detect_faces`` (conftest ``force_one_face``).
Here nothing is patched: the detector is facexlib's ``RetinaFace(network_name="resnet50")`` with random weights
whose three output heads are set so that, on the test picture, it finds two faces and one speck at places the
test chooses (see :func:`face_finding_detector`). It is saved the way the official
``detection_Resnet50_Final.pth`` is (DataParallel ``module.`` keys, legacy ``torch.save`` format) and loaded by
the built-in plugin from ``models/GFPGAN``.

The reference is facexlib's ``FaceRestoreHelper`` -- what GFPGANer and A1111 run -- loading the same files with
its own loaders, called the way A1111's ``restore_with_face_helper`` (modules/face_restoration_utils.py) calls
it: ``get_face_landmarks_5(only_center_face=False, resize=640, eye_dist_threshold=5)``, ``align_warp_face()``,
the restorer on each crop converted as GFPGANer.enhance converts it (basicsr ``img2tensor`` / ``normalize`` /
``tensor2img``), ``get_inverse_affine`` and ``paste_faces_to_input_image`` with ``use_parse=True``. (GFPGANer
itself detects at the picture's own size; A1111, Forge and we scale the short side to 640.)

The restorer is a cheap fixed function (mirror, swap channels, invert) instead of GFPGAN: real-size GFPGAN costs
~20 s on a CPU, and what is tested here is detection, alignment and paste-back, which do not depend on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import GFPGAN_NAME, make_settings, skin_parser
from webui.restoration.faces import DETECTION_FILE, FACE_TEMPLATE, PARSING_FILE, FaceHelpers

# --- the picture and where the detector is made to find things -------------------------------------------------
# 320x256: the short side is scaled to 640 for detection, so the detector sees 800x640 (factor 2.5 on both axes).
WIDTH, HEIGHT = 320, 256
DET_FACTOR = 640 / HEIGHT
DET_SIZE = (round(WIDTH * DET_FACTOR), 640)  # (w, h) = (800, 640)

# RetinaFace's prior boxes (facexlib retinaface.py cfg_re50 + retinaface_utils.PriorBox): level k has a grid of
# stride `steps[k]` with two anchors per cell, of sizes `min_sizes[k]`; a cell (row i, column j) is centred at
# ((j + 0.5) * step, (i + 0.5) * step) in detector pixels. Decoding (decode / decode_landm, variances 0.1 / 0.2):
# a landmark is the anchor centre + 0.1 * anchor size * prediction; a box is centred at the anchor centre +
# 0.1 * size * (dx, dy) and is size * exp(0.2 * (dw, dh)) big.
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
FACE_LEVEL, SPECK_LEVEL = 2, 1
# level-2 cells, detector centres (496, 80) and (208, 336): the first face's aligned crop runs off the top of the
# picture (its crop gets the grey border fill), the second is nearer the picture's centre
FACE_CELLS = ((2, 15), (10, 6))
SPECK_CELL = (4, 4)  # level-1 cell: detector centre (72, 72)
FACE_EYE_DISTANCE = 24.0  # picture pixels
SPECK_EYE_DISTANCE = 3.0  # picture pixels: below facexlib's eye_dist_threshold=5, but 7.5 in detector pixels
TEMPLATE_EYE_DISTANCE = float(np.linalg.norm(FACE_TEMPLATE[1] - FACE_TEMPLATE[0]))
FACE_LOGIT = 12.0  # the fitted class head's face logit: >= 24 / = 12 at the two faces, <= -12 elsewhere


def cell_centre(level: int, cell: tuple[int, int]) -> np.ndarray:
    """Detector-pixel centre of a prior cell (PriorBox: ((j + 0.5) * step, (i + 0.5) * step))."""
    i, j = cell
    return np.array([(j + 0.5) * STEPS[level], (i + 0.5) * STEPS[level]], dtype=np.float64)


def template_offsets(eye_distance_px: float) -> np.ndarray:
    """The 5 FFHQ template landmarks around the 512 template's centre, scaled to ``eye_distance_px`` (detector
    pixels): a face whose aligned crop is centred on the anchor."""
    return (FACE_TEMPLATE.astype(np.float64) - 256.0) * (eye_distance_px / TEMPLATE_EYE_DISTANCE)


# the expected landmarks of the two faces in picture pixels (detector pixels / 2.5), in the order RetinaFace
# returns them (by score; the fitted class head gives the first face the higher score, see _fit_class_head)
EXPECTED_FACES = [
    (cell_centre(FACE_LEVEL, c) + template_offsets(FACE_EYE_DISTANCE * DET_FACTOR)) / DET_FACTOR for c in FACE_CELLS
]
FACE_CENTRES = [cell_centre(FACE_LEVEL, c) / DET_FACTOR for c in FACE_CELLS]  # (198.4, 32), (83.2, 134.4)
SPECK_CENTRE = cell_centre(SPECK_LEVEL, SPECK_CELL) / DET_FACTOR  # (28.8, 28.8)


def make_picture() -> np.ndarray:
    """320x256 RGB: dark grey, two textured discs where the faces are found and a small bright speck."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rgb = np.full((HEIGHT, WIDTH, 3), 24.0, dtype=np.float32)
    textures = (
        0.5 + 0.5 * np.sin(xx * 0.6) * np.cos(yy * 0.45),
        0.5 + 0.5 * np.cos((xx + yy) * 0.35),
    )
    for (cx, cy), tex in zip(FACE_CENTRES, textures, strict=True):
        disc = (np.hypot(xx - cx, yy - cy) < 30).astype(np.float32)[:, :, None]
        colour = np.stack([200 * tex + 40, 120 * tex + 80, 180 - 120 * tex], axis=-1)
        rgb = disc * colour + (1 - disc) * rgb
    speck = np.hypot(xx - SPECK_CENTRE[0], yy - SPECK_CENTRE[1]) < 6
    rgb[speck] = (250, 240, 90)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def restorer(face: torch.Tensor) -> torch.Tensor:
    """The cheap "restorer" both pipelines run on each aligned face (``1x3x512x512`` RGB in [-1, 1]): mirrored,
    channels rotated and inverted -- a left/right or RGB/BGR mix-up in either pipeline shows."""
    return (-0.8 * face[:, [2, 0, 1]]).flip(-1)


class CheapGFPGAN(torch.nn.Module):
    """Stands in for the GFPGAN network the built-in plugin loads (called as ``net(face, return_rgb=False)[0]``)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, face, return_rgb=True, weight=None):
        return self.fn(face), None


def _constant_parser(mp: pytest.MonkeyPatch) -> None:
    """ParseNet's forward, shortened for conftest's ``skin_parser`` (9 s a call on this CPU otherwise): its mask
    head ``out_mask_conv`` (a plain conv, no norm, no activation) has zero weights, so ParseNet's mask output is
    that conv's bias everywhere whatever the encoder/decoder compute -- taken here from the loaded weights."""
    from facexlib.parsing.parsenet import ParseNet

    def forward(self, x):
        conv = self.out_mask_conv.conv2d
        assert not conv.weight.any(), "the shortcut holds only for a mask head with zero weights"
        n, _, h, w = x.shape
        return conv.bias.view(1, -1, 1, 1).expand(n, -1, h, w).to(x.dtype), x

    mp.setattr(ParseNet, "forward", forward)


def _refuse_downloads(mp: pytest.MonkeyPatch) -> None:
    """Any download fails the test. (conftest's ``no_downloads`` refuses facexlib's ``load_file_from_url``
    itself, which facexlib's loaders call even for a file that is present; here only the fetch is refused.)"""
    import torch.hub

    from webui.compat import patch_torchvision_functional_tensor

    patch_torchvision_functional_tensor()
    import basicsr.utils.download_util
    import facexlib.utils.misc

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    mp.setattr(facexlib.utils.misc, "download_url_to_file", refuse)
    mp.setattr(basicsr.utils.download_util, "download_file_from_google_drive", refuse, raising=False)
    mp.setattr(torch.hub, "download_url_to_file", refuse)
    mp.setattr(torch.hub, "load_state_dict_from_url", refuse)


# --- the detector ---------------------------------------------------------------------------------------------


def _fit_class_head(features: torch.Tensor, cells: list[tuple[int, int]]) -> tuple[torch.Tensor, float]:
    """``(w, b)`` such that the face logit ``w . f + b`` is ``>= 2 * FACE_LOGIT`` at the first of ``cells``,
    exactly ``FACE_LOGIT`` at the others and ``<= -FACE_LOGIT`` at every other cell of the ``1xCxHxW`` class-head
    input ``features``. (In float32, softmax gives 1.0 for a logit of 24 and 0.999994 for 12: RetinaFace's sort by
    score puts the faces in the order of ``cells``; the rest score <= 6e-6, far below the 0.97 threshold.)

    A linear program (scipy's HiGHS) on the features scaled to [-1, 1]: maximise the margin ``t`` subject to
    those constraints with ``t`` for FACE_LOGIT and ``|w| <= 1``, then everything scaled so that ``t`` is
    FACE_LOGIT. Fails if the picture's features at ``cells`` cannot be told apart from the others linearly."""
    from scipy.optimize import linprog

    c, h, w = features.shape[1:]
    flat = features[0].permute(1, 2, 0).reshape(-1, c).double().numpy()
    unit = np.abs(flat).max()
    rows = np.hstack([flat / unit, np.ones((h * w, 1))])  # [f, 1] . [w, b] is the logit
    first, *others = [i * w + j for i, j in cells]
    negative = np.setdiff1d(np.arange(h * w), [first, *others])
    a_ub = np.vstack([
        np.r_[-rows[first], 2.0][None],  # -(w.f + b) + 2t <= 0
        np.hstack([rows[negative], np.ones((len(negative), 1))]),  # (w.f + b) + t <= 0
    ])
    a_eq = np.hstack([rows[others], -np.ones((len(others), 1))]) if others else None  # w.f + b - t = 0
    result = linprog(np.r_[np.zeros(c + 1), -1.0], A_ub=a_ub, b_ub=np.zeros(len(a_ub)),
                     A_eq=a_eq, b_eq=np.zeros(len(others)) if others else None,
                     bounds=[(-1, 1)] * c + [(-100, 100), (0, 1)], method="highs")
    assert result.status == 0 and result.x[-1] > 1e-3, "the picture's features at the chosen cells are not separable"
    scale = FACE_LOGIT / result.x[-1]
    return torch.from_numpy(result.x[:c] * scale / unit).float(), float(result.x[c] * scale)


def face_finding_detector() -> torch.nn.Module:
    """RetinaFace ResNet-50 (random weights, seed 0, as conftest's ``no_face_detector``) whose heads find, on
    :func:`make_picture` scaled to 800x640, exactly two faces at FACE_CELLS and one speck at SPECK_CELL.

    * Class heads: the first anchor of the face level (2) and of the speck level (1) scores ``w . f + b``, where
      ``f`` is the head's input feature at a cell and ``(w, b)`` are fitted on this picture's features
      (:func:`_fit_class_head`) to be >= +12 at the chosen cells and <= -12 everywhere else; every other anchor
      and level says "background" by 40 (face probability ~4e-18).
    * Box and landmark heads: zero weights, biases that put the five landmarks on the FFHQ template around the
      anchor's centre (eye distance 24 picture pixels for the faces, 3 for the speck) and a box around them.
    """
    from webui.compat import patch_torchvision_functional_tensor

    patch_torchvision_functional_tensor()
    import cv2
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision: "'pretrained' is deprecated" (False: nothing downloaded)
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    heads = (net.ClassHead, net.BboxHead, net.LandmarkHead)
    with torch.no_grad():
        for level in range(3):
            for head in heads:
                head[level].conv1x1.weight.zero_()
                head[level].conv1x1.bias.zero_()
            net.ClassHead[level].conv1x1.bias.copy_(torch.tensor([20.0, -20.0, 20.0, -20.0]))

    # the class heads' input features on the picture as the detector will see it (BGR, short side 640, Lanczos)
    features: dict[int, torch.Tensor] = {}
    hooks = [net.ClassHead[k].register_forward_hook(lambda m, args, out, k=k: features.__setitem__(k, args[0]))
             for k in (FACE_LEVEL, SPECK_LEVEL)]
    bgr = cv2.resize(np.ascontiguousarray(make_picture()[:, :, ::-1]), DET_SIZE, interpolation=cv2.INTER_LANCZOS4)
    with torch.no_grad():
        assert len(net.detect_faces(bgr, 0.5)) == 0  # all background before the fit
    for hook in hooks:
        hook.remove()

    for level, cells, eye_px, box_px in ((FACE_LEVEL, list(FACE_CELLS), FACE_EYE_DISTANCE, 80.0),
                                         (SPECK_LEVEL, [SPECK_CELL], SPECK_EYE_DISTANCE, 10.0)):
        anchor = MIN_SIZES[level][0]
        weights, bias = _fit_class_head(features[level], cells)
        offsets = template_offsets(eye_px * DET_FACTOR)  # detector pixels from the anchor centre
        box_centre = offsets.mean(axis=0)
        box_log_size = np.log(box_px * DET_FACTOR / anchor) / 0.2
        with torch.no_grad():
            net.ClassHead[level].conv1x1.weight[1, :, 0, 0] = weights
            net.ClassHead[level].conv1x1.bias[:2] = torch.tensor([0.0, bias])
            net.BboxHead[level].conv1x1.bias[:4] = torch.tensor(
                [*(box_centre / (0.1 * anchor)), box_log_size, box_log_size])
            net.LandmarkHead[level].conv1x1.bias[:10] = torch.from_numpy(offsets.reshape(-1) / (0.1 * anchor))
    return net.eval()


@pytest.fixture(scope="module")
def detector_models(tmp_path_factory) -> Path:
    """models/ with GFPGAN/detection_Resnet50_Final.pth (the face-finding detector, DataParallel keys, legacy
    format), GFPGAN/parsing_parsenet.pth (conftest's ParseNet that answers "skin" everywhere) and a placeholder
    GFPGANv1.4.pth (the plugin finds it; its loader is replaced by :class:`CheapGFPGAN`)."""
    root = tmp_path_factory.mktemp("face_detection_models")
    gfpgan_dir = root / "GFPGAN"
    gfpgan_dir.mkdir()
    detector = {"module." + k: v for k, v in face_finding_detector().state_dict().items()}
    torch.save(detector, gfpgan_dir / DETECTION_FILE, _use_new_zipfile_serialization=False)
    torch.save(skin_parser().state_dict(), gfpgan_dir / PARSING_FILE)
    (gfpgan_dir / GFPGAN_NAME).write_bytes(b"placeholder: load_gfpgan is replaced")
    return root


@pytest.fixture(scope="module")
def ours(detector_models, tmp_path_factory):
    """The built-in plugin's GFPGAN "Restore faces" on the test picture, with the real detector and parser files
    and :class:`CheapGFPGAN` as the network; records what FaceHelpers.detect returned and the crops the network
    got (nothing in detection is patched)."""
    from webui.builtin import face_restorers as plugin

    found: list[list[np.ndarray]] = []
    crops: list[np.ndarray] = []
    detect = FaceHelpers.detect

    def recording_detect(self, rgb):
        faces = detect(self, rgb)
        found.append([f.copy() for f in faces])
        return faces

    def cheap_net(face):
        crops.append(((face[0].permute(1, 2, 0).double() + 1.0) * 127.5).round().byte().numpy())
        return restorer(face)

    settings = make_settings(tmp_path_factory.mktemp("face_detection_data"), detector_models)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FaceHelpers, "detect", recording_detect)
        mp.setattr(plugin, "load_gfpgan", lambda path: CheapGFPGAN(cheap_net))
        _refuse_downloads(mp)
        _constant_parser(mp)
        defs = {d.name: d for d in plugin.register_face_restorers(settings)}
        image = Image.fromarray(make_picture(), "RGB")
        out = defs["GFPGAN"].restore(image, {})
    return {"input": image, "output": out, "found": found, "crops": crops}


@pytest.fixture(scope="module")
def reference(detector_models):
    """facexlib's FaceRestoreHelper on the same picture and files, run as A1111's restore_with_face_helper runs
    it (BGR in, resize=640, eye_dist_threshold=5, use_parse=True, upscale 1), the crops converted as
    GFPGANer.enhance converts them."""
    from webui.compat import patch_torchvision_functional_tensor

    patch_torchvision_functional_tensor()
    from basicsr.utils import img2tensor, tensor2img
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper
    from torchvision.transforms.functional import normalize

    with pytest.MonkeyPatch.context() as mp:
        _refuse_downloads(mp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # loads <models>/GFPGAN/detection_Resnet50_Final.pth and parsing_parsenet.pth with facexlib's own
            # loaders (load_file_from_url finds them in model_rootpath; torch.load; "module." stripped)
            helper = FaceRestoreHelper(1, face_size=512, crop_ratio=(1, 1), det_model="retinaface_resnet50",
                                       save_ext="png", use_parse=True, device=torch.device("cpu"),
                                       model_rootpath=str(detector_models / "GFPGAN"))
        _constant_parser(mp)
        helper.clean_all()
        helper.read_image(np.ascontiguousarray(make_picture()[:, :, ::-1]))
        count = helper.get_face_landmarks_5(only_center_face=False, resize=640, eye_dist_threshold=5)
        helper.align_warp_face()
        for crop in helper.cropped_faces:
            face = img2tensor(crop / 255.0, bgr2rgb=True, float32=True)
            normalize(face, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
            with torch.no_grad():
                out = restorer(face.unsqueeze(0))
            helper.add_restored_face(tensor2img(out.squeeze(0), rgb2bgr=True, min_max=(-1, 1)).astype("uint8"))
        helper.get_inverse_affine(None)
        pasted = helper.paste_faces_to_input_image()
    return {
        "count": count,
        "landmarks": [np.asarray(m, dtype=np.float64) for m in helper.all_landmarks_5],
        "boxes": [np.asarray(b, dtype=np.float64) for b in helper.det_faces],
        "crops": [c[:, :, ::-1] for c in helper.cropped_faces],  # RGB
        "pasted": pasted[:, :, ::-1],  # RGB
    }


# --- tests ----------------------------------------------------------------------------------------------------


def test_detector_finds_the_two_faces_where_they_were_put(ours, reference):
    """Detection on the real file: two faces at the designed places (picture pixels, after the 640 px scaling is
    undone); the speck (eye distance 3 px in the picture, 7.5 px at detection scale) is dropped by the
    5-pixel eye-distance rule, which is applied in picture pixels. facexlib finds the same two faces."""
    [faces] = ours["found"]
    assert len(faces) == 2
    for got, want in zip(faces, EXPECTED_FACES, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert got.dtype == np.float32 and got.shape == (5, 2)
    assert reference["count"] == 2


def test_landmarks_equal_facexlib(ours, reference):
    """Our landmarks (per-axis scale w/dw, h/dh) equal facexlib's (one scale min(h, w)/640; the same here, 0.4)."""
    [faces] = ours["found"]
    assert len(faces) == len(reference["landmarks"])
    for got, want in zip(faces, reference["landmarks"], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # room for float32/float64 products; equal here


def test_center_face_is_facexlibs_choice(ours, reference):
    """``only_center_face``: we pick the face whose landmarks' mean is nearest the picture centre, facexlib
    (get_center_face) the face whose box centre is; with boxes around the landmarks, the same face."""
    from facexlib.utils.face_restoration_helper import get_center_face

    from webui.restoration.faces import _center_face

    [faces] = ours["found"]
    [chosen] = _center_face(faces, WIDTH, HEIGHT)
    _, index = get_center_face(reference["boxes"], HEIGHT, WIDTH)
    assert index == 1  # (83.2, 134.4) is nearer the centre (160, 128) than (198.4, 32), the higher-scored face
    np.testing.assert_array_equal(chosen, faces[index])


def test_aligned_crops_equal_facexlib(ours, reference):
    """The 512x512 crops the restorer gets are facexlib's cropped faces, pixel for pixel (the same landmarks,
    the same LMEDS similarity estimate onto the FFHQ template, the same warp with the same grey border)."""
    assert len(ours["crops"]) == len(reference["crops"]) == 2
    for got, want in zip(ours["crops"], reference["crops"], strict=True):
        assert got.shape == want.shape == (512, 512, 3)
        np.testing.assert_array_equal(got, want)
    # the first face runs off the top of the picture: facexlib fills the crop there with its grey, (135, 133, 132)
    # in BGR; the picture's top edge lands near crop row 256 - 32 * 512 / 97.6 = 88
    assert (ours["crops"][0][:80] == (132, 133, 135)).all()
    assert not (ours["crops"][1] == (132, 133, 135)).all(axis=2).any()  # the second lies inside the picture


def test_pasted_picture_equals_facexlib(ours, reference):
    """The final picture equals facexlib's pasted picture, up to one deliberate difference: facexlib truncates
    the blended floats to uint8 (``astype``), we round them (which keeps a pixel under a tiny positive mask value
    exactly as it was), so ours may be one level above facexlib's (on this picture they come out equal: the
    skin mask is 1 inside each crop and fractional only along its edges). A bicubic-warped or float32 mask
    (what faces.py did before) is 3 to 10 levels off along the crop edges."""
    got = np.asarray(ours["output"]).astype(int)
    want = reference["pasted"].astype(int)
    assert got.shape == want.shape == (HEIGHT, WIDTH, 3)
    diff = got - want
    assert set(np.unique(diff)) <= {0, 1}
    changed = np.any(np.asarray(ours["input"]).astype(int) != want, axis=2)
    assert changed.sum() > 2 * 40 * 40  # both faces were pasted by the reference too


def test_restore_faces_end_to_end_changes_only_the_faces(ours):
    """The built-in plugin's "Restore faces" with the unpatched detector: each face's neighbourhood changes,
    everything outside the two pasted 512 px crops -- the speck included -- is exactly as it was."""
    import cv2

    before = np.asarray(ours["input"]).astype(int)
    after = np.asarray(ours["output"]).astype(int)
    assert ours["output"].size == (WIDTH, HEIGHT) and ours["output"].mode == "RGB"
    footprint = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for marks in EXPECTED_FACES:  # where each aligned crop lands in the picture
        matrix = cv2.estimateAffinePartial2D(marks.astype(np.float32), FACE_TEMPLATE, method=cv2.LMEDS)[0]
        inverse = cv2.invertAffineTransform(matrix)
        footprint |= cv2.warpAffine(np.ones((512, 512), np.uint8), inverse, (WIDTH, HEIGHT))
    outside = footprint == 0
    assert outside.mean() > 0.5
    assert np.array_equal(before[outside], after[outside]), "pixels outside the faces changed"
    sy, sx = np.round(SPECK_CENTRE[::-1]).astype(int)
    assert outside[sy - 8:sy + 9, sx - 8:sx + 9].all()  # so had the speck been taken for a face, this would fail
    for cx, cy in FACE_CENTRES:
        x, y = round(cx), round(cy)
        region = (slice(y - 15, y + 16), slice(x - 15, x + 16))
        assert np.abs(after[region] - before[region]).mean() > 30, "a face was not restored"
