"""BEV pictures: rasters and polylines drawn with forward (+x) to the right and left (+y) up."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..config import GridConfig
from ..constants import CLASS_NAMES, class_bgr8
from ..data.vectors import MapVector
from ..geometry import metres_to_pixel

#: BGR colours per class index (background unused): constants.CLASS_COLORS, the markers' colours
CLASS_COLOURS = {c: class_bgr8(c) for c in range(1, len(CLASS_NAMES))}


def _finish(img: np.ndarray, scale: int, title: str | None) -> np.ndarray:
    img = img[::-1]  # row 0 is y = ymin (the right side): flip so that left is up
    h, w = img.shape[:2]
    img = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if title:
        cv2.putText(img, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.ascontiguousarray(img)


def draw_ego(img: np.ndarray, grid: GridConfig, scale: int) -> None:
    """An arrow at the ego position, facing +x (drawn on a finished, flipped picture)."""
    u, v = metres_to_pixel(grid, 0.0, 0.0)
    cx, cy = int((u + 0.5) * scale), int((grid.H - 1 - v + 0.5) * scale)
    cv2.arrowedLine(img, (cx - 5 * scale, cy), (cx + 7 * scale, cy), (0, 0, 0), max(1, scale), tipLength=0.4)


def raster_picture(semantic: np.ndarray, grid: GridConfig, sd_prior: np.ndarray | None = None, scale: int = 2,
                   title: str | None = None) -> np.ndarray:
    """(C, H, W) one-hot or logits -> BGR picture of the argmax classes (over OSM roads in grey if given)."""
    h, w = semantic.shape[1:]
    img = np.full((h, w, 3), 255, np.uint8)
    if sd_prior is not None:
        img[sd_prior[0] > 0] = (210, 210, 210)
    labels = semantic.argmax(0)
    for c, col in CLASS_COLOURS.items():
        img[labels == c] = col
    out = _finish(img, scale, title)
    draw_ego(out, grid, scale)
    return out


def vector_picture(vectors: Sequence[MapVector], grid: GridConfig, scale: int = 2, title: str | None = None,
                   show_scores: bool = False) -> np.ndarray:
    """Polylines drawn on a white BEV canvas, 2 px wide, with their vertices."""
    h, w = grid.shape
    img = np.full((h * scale, w * scale, 3), 255, np.uint8)
    for v in vectors:
        u, r = metres_to_pixel(grid, v.points[:, 0], v.points[:, 1])
        pts = np.stack([(u + 0.5) * scale, (h - 1 - r + 0.5) * scale], 1).round().astype(np.int32)
        col = CLASS_COLOURS[v.cls]
        cv2.polylines(img, [pts], False, col, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 2, col, -1)
        if show_scores:
            cv2.putText(img, f'{v.score:.2f}', tuple(int(c) for c in pts[0]), cv2.FONT_HERSHEY_SIMPLEX, 0.35, col, 1)
    if title:
        cv2.putText(img, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    draw_ego(img, grid, scale)
    return img


def side_by_side(*pictures: np.ndarray, gap: int = 6) -> np.ndarray:
    h = max(p.shape[0] for p in pictures)
    parts = []
    for i, p in enumerate(pictures):
        parts.append(np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
        if i + 1 < len(pictures):
            parts.append(np.full((h, gap, 3), 128, np.uint8))
    return np.hstack(parts)
