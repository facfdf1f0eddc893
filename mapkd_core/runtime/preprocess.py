"""Camera preprocessing for inference: any input size -> the model's size, normalised, intrinsics updated.

The resize of each image is one OpenCV call (area averaging when shrinking); normalisation is one vectorised numpy
expression over the stacked images; the intrinsics follow the resize exactly
(:func:`mapkd_core.geometry.scale_intrinsics`, pixel centres preserved). Images are RGB uint8 (H, W, 3); the ROS
node converts encodings (bgr8, mono8, JPEG, ...) before calling this.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import ImageConfig
from ..data.images import normalize_images, resize_image
from ..errors import CalibrationError, ImageFormatError, IncompleteSampleError
from ..geometry import scale_intrinsics, validate_calibration


def prepare_inputs(images: Sequence[np.ndarray], intrinsics, cam_to_ego, image_cfg: ImageConfig,
                   camera_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Model inputs with a batch of one: images (1, N, 3, h, w) float32, intrinsics (1, N, 3, 3) at the model's
    image size, cam_to_ego (1, N, 4, 4). Raises ValueError naming the camera for a bad image or calibration."""
    names = list(camera_names or image_cfg.cameras)
    n = len(image_cfg.cameras)
    if len(images) != n:
        raise IncompleteSampleError(f'expected {n} images ({", ".join(image_cfg.cameras)}), got {len(images)}')
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    cam_to_ego = np.asarray(cam_to_ego, dtype=np.float64)
    if intrinsics.shape != (n, 3, 3) or cam_to_ego.shape != (n, 4, 4):
        raise CalibrationError(f'calibration must be ({n}, 3, 3) intrinsics and ({n}, 4, 4) extrinsics, got '
                         f'{intrinsics.shape} and {cam_to_ego.shape}')
    hw = (image_cfg.height, image_cfg.width)
    resized = np.empty((n, hw[0], hw[1], 3), np.uint8)
    ks = np.empty((n, 3, 3), np.float64)
    for i, (img, name) in enumerate(zip(images, names)):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ImageFormatError(f'{name}: expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}')
        if img.shape[0] < 8 or img.shape[1] < 8:
            raise ImageFormatError(f'{name}: image too small ({img.shape[1]}x{img.shape[0]})')
        validate_calibration(intrinsics[i], cam_to_ego[i], name)
        resized[i] = resize_image(img, hw)
        ks[i] = scale_intrinsics(intrinsics[i], hw[1] / img.shape[1], hw[0] / img.shape[0])
    return {'images': normalize_images(resized, image_cfg.mean, image_cfg.std)[None],
            'intrinsics': ks.astype(np.float32)[None], 'cam_to_ego': cam_to_ego.astype(np.float32)[None]}
