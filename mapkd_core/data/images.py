"""Camera images: decode, resize (no crop, as MapKD), normalise, and the matching intrinsics update.

Decoding uses OpenCV. A JPEG file is decoded directly at a reduced size (``IMREAD_REDUCED_COLOR_2/4/8``, libjpeg's
DCT scaling) when the network input is at least that much smaller: a 1600x900 frame needed at 352x128 is decoded at
400x225, several times faster than a full decode, then resized with area averaging. The intrinsics follow the total
scale from the original size to the network size (:func:`mapkd_core.geometry.scale_intrinsics`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import CorruptSensorFileError, MissingSensorFileError
from ..geometry import scale_intrinsics

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def read_image(path: str | Path, target_hw: tuple[int, int] | None = None,
               original_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Decode an image file to RGB uint8 (H, W, 3), optionally at a reduced size no smaller than ``target_hw``.

    Returns the image and the JPEG reduction factor used (1, 2, 4 or 8). ``original_hw`` (from the dataset tables)
    lets us pick the largest safe factor without reading the header twice. Raises MissingSensorFileError /
    CorruptSensorFileError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingSensorFileError(f'camera image missing: {path}')
    factor = 1
    if target_hw is not None and original_hw is not None and path.suffix.lower() in ('.jpg', '.jpeg'):
        for f in (8, 4, 2):
            if original_hw[0] // f >= target_hw[0] and original_hw[1] // f >= target_hw[1]:
                factor = f
                break
    img = cv2.imread(str(path), _REDUCED[factor])
    if img is None:
        raise CorruptSensorFileError(f'camera image cannot be decoded: {path}')
    if original_hw is not None and factor == 1 and tuple(img.shape[:2]) != tuple(original_hw):
        raise CorruptSensorFileError(f'camera image {path} is {img.shape[1]}x{img.shape[0]} but the tables say '
                                     f'{original_hw[1]}x{original_hw[0]}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), factor


def load_camera(path: str | Path, intrinsic: np.ndarray, original_hw: tuple[int, int] | None,
                hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read one camera image resized to ``hw`` (RGB uint8) and its intrinsics at that size.

    libjpeg's reduced decode maps original pixel u to (u + 0.5) / f - 0.5 whatever the rounding of the reduced
    size, so the intrinsics are scaled by 1/f first and then by the resize from the decoded size.
    """
    img, factor = read_image(path, hw, original_hw)
    k = scale_intrinsics(intrinsic, 1.0 / factor, 1.0 / factor) if factor > 1 else np.asarray(intrinsic, float)
    k = scale_intrinsics(k, hw[1] / img.shape[1], hw[0] / img.shape[0])
    return resize_image(img, hw), k


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize (no crop) to (height, width): area averaging when shrinking, bilinear when enlarging."""
    h, w = hw
    if img.shape[0] == h and img.shape[1] == w:
        return img
    interp = cv2.INTER_AREA if (img.shape[0] > h and img.shape[1] > w) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def normalize_images(images: np.ndarray, mean, std) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, (x / 255 - mean) / std, vectorised."""
    x = images.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resized_intrinsics(intrinsic: np.ndarray, original_hw: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image of size ``original_hw`` after resizing it to ``hw`` (no crop)."""
    return scale_intrinsics(intrinsic, hw[1] / original_hw[1], hw[0] / original_hw[0])
