"""Find faces, cut them out aligned at 512x512, and paste restored faces back.

:func:`restore_faces` runs a face restorer network (GFPGAN, CodeFormer...) on every face of a picture:

1. RetinaFace (ResNet-50) finds the faces and their five landmarks (eyes, nose, mouth corners);
2. each face is warped onto the FFHQ landmark template, giving an aligned 512x512 crop;
3. the restorer network turns the crop (a ``1x3x512x512`` RGB tensor in ``[-1, 1]``) into a restored crop;
4. ParseNet segments the restored crop into face parts; a soft mask of the skin/eyes/nose/mouth parts
   is warped back with the crop, and the restored face is blended into the picture under that mask.

Steps 1-4 are facexlib's ``FaceRestoreHelper`` as A1111 runs it (``get_face_landmarks_5(resize=640,
eye_dist_threshold=5)``, ``align_warp_face``, ``paste_faces_to_input_image`` with ``use_parse=True``; checked
against it in tests/test_face_detection.py), except that the blended picture is rounded to uint8 where
facexlib truncates it.

Pixels outside the pasted faces are left exactly as they were; a picture in which no face is found is
returned unchanged (the same object).

Weight files — read from ``models/`` only, never downloaded:

* ``detection_Resnet50_Final.pth`` (RetinaFace) and ``parsing_parsenet.pth`` (ParseNet) are looked up
  in ``models/GFPGAN`` first (where A1111 and Forge keep them), then in ``models/Codeformer``. Get them
  from https://github.com/xinntao/facexlib/releases (``v0.1.0/detection_Resnet50_Final.pth`` and
  ``v0.2.2/parsing_parsenet.pth``).
* The restorer's own weights are found by :mod:`webui.builtin.face_restorers`.

A missing file raises :class:`MissingWeights`, which names the file, the folder to put it in and where
to download it. Files are read with :func:`webui.models.safeload.read_state_dict` (safetensors, or
pickles with ``weights_only=True``), and the networks are built here and given the tensors with
``load_state_dict``: facexlib's own loaders (``init_detection_model``, ``init_parsing_model``,
``FaceRestoreHelper``), which download missing files, are never called.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from webui.errors import ModelError
from webui.models.safeload import read_state_dict

DETECTION_FILE = "detection_Resnet50_Final.pth"
DETECTION_URL = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
PARSING_FILE = "parsing_parsenet.pth"
PARSING_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth"

FACE_SIZE = 512
#: Where the five landmarks (left eye, right eye, nose, left and right mouth corner) of an FFHQ-aligned
#: 512x512 face lie; the restorers were trained on faces aligned this way.
FACE_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]],
    dtype=np.float32,
)
DETECTION_THRESHOLD = 0.97  # face confidence needed
DETECTION_SHORT_SIDE = 640  # the picture is scaled to this short side for detection
MIN_EYE_DISTANCE = 5.0  # pixels; smaller detections are profiles or specks
#: ParseNet's 19 classes: 0 background, 1-13 skin/brows/eyes/ears/nose/mouth/lips, 14 neck, 15 earring?,
#: 16 cloth, 17 hair, 18 hat. The restored face is pasted over these classes only.
PASTE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
CROP_BORDER_RGB = (132, 133, 135)  # grey that fills the crop where the face runs off the picture

#: ``net_fn(face)``: the restorer network on one aligned face, ``1x3x512x512`` in ``[-1, 1]`` -> same.
NetFn = Callable[[torch.Tensor], torch.Tensor]


class MissingWeights(ModelError):
    """A weight file face restoration needs is not in the models folder (``str()`` says which and where)."""

    @classmethod
    def of(cls, missing: Sequence[MissingFile]) -> MissingWeights:
        """One error for all of ``missing`` (its ``path`` is the first file's expected location)."""
        if not missing:
            raise ValueError("nothing is missing")
        first = missing[0]
        return cls(first.folder.absolute() / first.filename, " ".join(m.sentence() for m in missing))


@dataclass(frozen=True)
class MissingFile:
    """A weight file that was not found: its name, the folder it belongs in and its download address."""

    filename: str
    folder: Path
    url: str
    purpose: str = "Face restoration"
    note: str = ""  # e.g. other names or folders that also work

    def sentence(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return (f"{self.purpose} needs {self.filename}: put it in {self.folder.absolute()} "
                f"(download it from {self.url}{note}).")


def find_file(folders: Iterable[Path], filename: str) -> Path | None:
    """``filename`` in the first of ``folders`` that has it (the name compared without case)."""
    wanted = filename.lower()
    for folder in folders:
        if not folder.is_dir():
            continue
        exact = folder / filename
        if exact.is_file():
            return exact
        for entry in sorted(folder.iterdir()):
            if entry.name.lower() == wanted and entry.is_file():
                return entry
    return None


def find_helper_weights(folders: Sequence[Path]) -> tuple[Path | None, Path | None, list[MissingFile]]:
    """``(detection_path, parsing_path, missing)`` for the detector and parser weights in ``folders``."""
    folders = list(folders)
    note = f"{', '.join(str(f.absolute()) for f in folders[1:])} also works" if len(folders) > 1 else ""
    detection = find_file(folders, DETECTION_FILE)
    parsing = find_file(folders, PARSING_FILE)
    missing = []
    if detection is None:
        missing.append(MissingFile(DETECTION_FILE, folders[0], DETECTION_URL,
                                   "Face restoration (face detection)", note))
    if parsing is None:
        missing.append(MissingFile(PARSING_FILE, folders[0], PARSING_URL,
                                   "Face restoration (face parsing)", note))
    return detection, parsing, missing


def state_dict_from(path: Path, prefer: Sequence[str] = ("params_ema", "params")) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped: the first wrapper of ``prefer`` present (BasicSR files
    keep ``{"params_ema": ..., "params": ...}``) and a ``module.`` prefix (DataParallel) removed."""
    tensors, _meta = read_state_dict(path)
    for wrapper in prefer:
        head = wrapper + "."
        inner = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
        if inner:
            tensors = inner
            break
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def load_weights(net: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``net.load_state_dict(state_dict, strict=True)``, a mismatch reported as a ModelError on ``path``."""
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(path, f"its weights do not fit the {what} network ({detail}). "
                               "Use the original file (see models/GFPGAN/README.md).") from exc


class FaceHelpers:
    """The face detector (RetinaFace ResNet-50) and face parser (ParseNet), both float32 on ``device``."""

    def __init__(self, detector: torch.nn.Module, parser: torch.nn.Module, device: torch.device):
        self.detector = detector.eval()
        self.parser = parser.eval()
        self.device = device
        self._lock = threading.Lock()  # detect_faces keeps per-call state on the module

    @classmethod
    def from_files(cls, detection_path: Path, parsing_path: Path, device: torch.device) -> FaceHelpers:
        """Build both networks and load them from the two local files (nothing is downloaded)."""
        from webui.compat import patch_torchvision_functional_tensor

        patch_torchvision_functional_tensor()
        from facexlib.detection.retinaface import RetinaFace
        from facexlib.parsing.parsenet import ParseNet

        detection_sd = state_dict_from(detection_path)
        parsing_sd = state_dict_from(parsing_path)
        with warnings.catch_warnings():  # torchvision's "'pretrained' is deprecated" (it is False: no download)
            warnings.simplefilter("ignore")
            detector = RetinaFace(network_name="resnet50", half=False, device=device)
        load_weights(detector, detection_sd, detection_path, "RetinaFace ResNet-50 face detection")
        parser = ParseNet(in_size=FACE_SIZE, out_size=FACE_SIZE, parsing_ch=19)
        load_weights(parser, parsing_sd, parsing_path, "ParseNet face parsing")
        return cls(detector.to(device).float(), parser.to(device).float(), device)

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Five-landmark sets (``5x2``, picture pixels) of the faces in an ``HxWx3`` uint8 RGB array."""
        import cv2

        h, w = rgb.shape[:2]
        factor = DETECTION_SHORT_SIDE / min(h, w)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        sx = sy = 1.0
        if factor != 1.0:
            dw, dh = max(1, round(w * factor)), max(1, round(h * factor))
            bgr = cv2.resize(bgr, (dw, dh), interpolation=cv2.INTER_LANCZOS4)
            sx, sy = w / dw, h / dh
        with self._lock, torch.no_grad():
            found = np.asarray(self.detector.detect_faces(bgr, DETECTION_THRESHOLD), dtype=np.float32)
        faces = []
        for row in found.reshape(-1, 15):  # box (4), score, 5 landmarks (x, y)
            marks = row[5:15].reshape(5, 2) * np.array([sx, sy], dtype=np.float32)
            if np.linalg.norm(marks[0] - marks[1]) < MIN_EYE_DISTANCE:
                continue
            faces.append(marks)
        return faces

    def paste_mask(self, face_rgb: np.ndarray) -> np.ndarray:
        """Soft ``512x512`` float64 mask in ``[0, 1]`` of the face parts in a restored uint8 RGB crop."""
        import cv2

        with torch.no_grad():
            logits = self.parser(to_tensor(face_rgb, self.device))[0]
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        # float64 as facexlib's mask: warpAffine interpolates a float32 mask more coarsely (up to 1/64 apart)
        mask = np.isin(labels, PASTE_CLASSES).astype(np.float64) * 255.0
        for _ in range(2):
            mask = cv2.GaussianBlur(mask, (101, 101), 11)
        edge = 10  # keep the crop's own border out of the picture
        mask[:edge, :] = 0
        mask[-edge:, :] = 0
        mask[:, :edge] = 0
        mask[:, -edge:] = 0
        return mask / 255.0


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``1x3xHxW`` float32 in ``[-1, 1]``."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float()
    return (t / 127.5 - 1.0).to(device)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """``1x3xHxW`` in ``[-1, 1]`` -> ``HxWx3`` uint8 RGB."""
    t = t.detach().float().clamp(-1.0, 1.0)[0].permute(1, 2, 0).cpu()
    return ((t + 1.0) * 127.5).round().to(torch.uint8).numpy()


def _center_face(faces: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    """The face nearest the picture's centre, measured from its landmarks' mean (facexlib's get_center_face
    measures from the box centre, which :meth:`FaceHelpers.detect` does not keep; the two pick different faces
    only when two faces are about equally far from the centre)."""
    center = np.array([width / 2, height / 2], dtype=np.float32)
    return [min(faces, key=lambda marks: float(np.linalg.norm(marks.mean(axis=0) - center)))]


def restore_faces(image: Image.Image, net_fn: NetFn, helpers: FaceHelpers, *,
                  only_center_face: bool = False) -> Image.Image:
    """``image`` with every detected face restored by ``net_fn`` and pasted back (same size).

    ``net_fn`` gets each aligned face as a ``1x3x512x512`` float32 RGB tensor in ``[-1, 1]`` on
    ``helpers.device`` and returns one of the same shape. With no face found, ``image`` itself is
    returned. An RGBA picture keeps its alpha channel; other modes come back as RGB.
    """
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = rgb.shape[:2]
    faces = helpers.detect(rgb)
    if only_center_face and faces:
        faces = _center_face(faces, w, h)
    if not faces:
        return image

    out = rgb.astype(np.float32)
    changed = False
    for marks in faces:
        matrix = cv2.estimateAffinePartial2D(marks, FACE_TEMPLATE, method=cv2.LMEDS)[0]
        if matrix is None:  # degenerate landmarks
            continue
        crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_CONSTANT,
                              borderValue=CROP_BORDER_RGB)
        with torch.no_grad():
            restored_t = net_fn(to_tensor(crop, helpers.device))
        if tuple(restored_t.shape) != (1, 3, FACE_SIZE, FACE_SIZE):
            raise ValueError(f"the face restorer returned shape {tuple(restored_t.shape)}, "
                             f"expected (1, 3, {FACE_SIZE}, {FACE_SIZE})")
        restored = to_uint8(restored_t)
        mask = helpers.paste_mask(restored)
        inverse = cv2.invertAffineTransform(matrix)
        face_back = cv2.warpAffine(restored, inverse, (w, h)).astype(np.float32)
        # bilinear, as facexlib's paste_faces_to_input_image: its ``flags=3`` is INTER_AREA, which warpAffine
        # runs as INTER_LINEAR (face_restoration_helper.py); a bicubic mask strayed up to ~10 levels from it
        mask_back = np.clip(cv2.warpAffine(mask, inverse, (w, h), flags=cv2.INTER_LINEAR), 0.0, 1.0)[:, :, None]
        out = mask_back * face_back + (1.0 - mask_back) * out
        changed = True
    if not changed:
        return image

    result = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result
