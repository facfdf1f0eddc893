"""Rasterising polylines on the BEV grid (HDMapNet / P-MapNet ground-truth protocol, method doc section 6).

For each class (divider, ped_crossing, boundary, in that order):
* instance mask: every polyline drawn ``line_width`` px thick with its own id, unique across classes;
* filter mask: the same lines ``line_width + overlap_extra_width`` px thick;
* forward / backward direction masks: every segment drawn with its heading quantised into ``angle_classes`` bins
  (+1, so 0 means "no direction"); backward is the opposite heading.
Overlap rule: where a class's filter mask is set, every lower class is erased (boundary overrides ped crossing and
divider, ped crossing overrides divider), in all masks. The semantic one-hot follows from the instance masks
(channel 0 = background where no class is left), so the classes are exclusive per pixel.

Drawing uses OpenCV with sub-pixel precision (``SHIFT`` fractional bits) at the pixel coordinates of
:func:`mapkd_core.geometry.metres_to_pixel`, so cell centres are exact (HDMapNet truncated to whole pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..config import GridConfig, MapGtConfig
from ..constants import CLASS_NAMES
from ..geometry import metres_to_pixel
from .vectors import MapVector

SHIFT = 3  # fractional bits of the OpenCV coordinates (1/8 px)
_SCALE = float(1 << SHIFT)


def to_cv_points(grid: GridConfig, points: np.ndarray) -> np.ndarray:
    """(N, 2) ego-frame metres -> (N, 2) int32 OpenCV coordinates with SHIFT fractional bits."""
    u, v = metres_to_pixel(grid, points[:, 0], points[:, 1])
    return np.round(np.stack([u, v], axis=1) * _SCALE).astype(np.int32)


def draw_polylines(canvas: np.ndarray, polylines: Sequence[np.ndarray], grid: GridConfig, value,
                   thickness: int) -> np.ndarray:
    """Draw polylines given in metres onto ``canvas`` (H, W) in place; ``value`` is one number or one per line."""
    values = value if isinstance(value, (list, tuple, np.ndarray)) else [value] * len(polylines)
    for pts, val in zip(polylines, values):
        if len(pts) < 2:
            continue
        cv2.polylines(canvas, [to_cv_points(grid, pts)], False, int(val), thickness=thickness, shift=SHIFT)
    return canvas


def direction_bins(points_px: np.ndarray, angle_classes: int) -> np.ndarray:
    """Heading of each segment of a polyline (pixel coordinates) as bins 1..angle_classes (HDMapNet rounding)."""
    d = np.diff(points_px, axis=0)
    deg = np.mod(np.degrees(np.arctan2(d[:, 1], d[:, 0])), 360.0)
    return (np.floor(deg / (360.0 / angle_classes) + 0.5).astype(np.int64) % angle_classes) + 1


def _draw_direction(canvas: np.ndarray, pts_cv: np.ndarray, angle_classes: int, thickness: int, backward: bool):
    pts = pts_cv[::-1] if backward else pts_cv
    bins = direction_bins(pts.astype(np.float64), angle_classes)
    for i, b in enumerate(bins):
        if pts[i, 0] == pts[i + 1, 0] and pts[i, 1] == pts[i + 1, 1]:
            continue
        cv2.line(canvas, (int(pts[i, 0]), int(pts[i, 1])), (int(pts[i + 1, 0]), int(pts[i + 1, 1])), int(b),
                 thickness=thickness, shift=SHIFT)


@dataclass
class MapRaster:
    """Rasterised ground truth of one sample.

    semantic:  (C, H, W) uint8 one-hot, C = len(CLASS_NAMES), channel 0 = background
    instance:  (H, W) int32, 0 = none, ids unique across classes (numbered class by class, in ``vectors`` order
               within a class)
    direction: (2, H, W) uint8 forward / backward heading bins, 0 = none; see :func:`direction_onehot`
    """

    semantic: np.ndarray
    instance: np.ndarray
    direction: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """(H, W) class index per pixel (argmax of the one-hot)."""
        return self.semantic.argmax(0).astype(np.uint8)


def rasterize_map(vectors: Sequence[MapVector], grid: GridConfig, cfg: MapGtConfig) -> MapRaster:
    h, w = grid.shape
    n_cls = len(CLASS_NAMES)
    instance = np.zeros((n_cls, h, w), np.int32)
    filt = np.zeros((n_cls, h, w), np.uint8)
    fwd = np.zeros((n_cls, h, w), np.uint8)
    bwd = np.zeros((n_cls, h, w), np.uint8)
    next_id = 1
    for c in range(1, n_cls):
        for vec in vectors:
            if vec.cls != c or len(vec.points) < 2:
                continue
            pts = to_cv_points(grid, vec.points)
            cv2.polylines(instance[c], [pts], False, next_id, thickness=cfg.line_width, shift=SHIFT)
            cv2.polylines(filt[c], [pts], False, 1, thickness=cfg.line_width + cfg.overlap_extra_width, shift=SHIFT)
            _draw_direction(fwd[c], pts, cfg.angle_classes, cfg.line_width, backward=False)
            _draw_direction(bwd[c], pts, cfg.angle_classes, cfg.line_width, backward=True)
            next_id += 1
    # overlap rule: a higher class erases every lower class under its (thicker) filter mask
    for c in range(n_cls - 1, 1, -1):
        erase = filt[c] != 0
        instance[1:c, erase] = 0
        fwd[1:c, erase] = 0
        bwd[1:c, erase] = 0
    semantic = np.zeros((n_cls, h, w), np.uint8)
    semantic[1:] = instance[1:] != 0
    semantic[0] = semantic[1:].sum(0) == 0
    return MapRaster(semantic=semantic, instance=instance.sum(0).astype(np.int32),
                     direction=np.stack([fwd.sum(0), bwd.sum(0)]).astype(np.uint8))


def direction_onehot(direction, num_channels: int):
    """(..., 2, H, W) forward/backward bins -> (..., num_channels, H, W) two-hot normalised to sum 1 (HDMapNet).

    Pixels without a direction get channel 0 = 1. Accepts numpy arrays or torch tensors (returns the same kind).
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(direction, torch.Tensor):
        d = direction.long()
        oh = torch.nn.functional.one_hot(d, num_channels)  # (..., 2, H, W, K)
        oh = oh.sum(-4).movedim(-1, -3).float()  # (..., K, H, W)
        return oh / oh.sum(-3, keepdim=True)
    d = np.asarray(direction).astype(np.int64)
    oh = np.eye(num_channels, dtype=np.float32)[d]  # (..., 2, H, W, K)
    oh = np.moveaxis(oh.sum(-4), -1, -3)
    return oh / oh.sum(-3, keepdims=True)
