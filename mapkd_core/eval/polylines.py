"""Score predicted polylines against ground-truth polylines when only vectors are at hand (a replayed bag: the
node publishes polylines, the bag holds the ground-truth map as polylines).

IoU: both sides are rasterised the same way as the training ground truth (``rasterize_map`` with the data config's
line width and overlap rule) and scored with the pooled :class:`IoUMeter`; AP: :class:`APMeter` (P-MapNet protocol).
Because the predicted raster is redrawn from the vectorized polylines, this IoU is a little below the raster IoU that
``mapkd-eval`` reports for the same model (the vectorizer drops small blobs and thins wide ones).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..config import GridConfig, MapGtConfig
from ..data.rasterize import rasterize_map
from ..data.vectors import MapVector
from .ap import APConfig, APMeter
from .iou import IoUMeter


class PolylineEvaluator:
    def __init__(self, grid: GridConfig, map_gt: MapGtConfig | None = None, ap: APConfig | None = None):
        self.grid = grid
        self.map_gt = map_gt or MapGtConfig()
        self.iou = IoUMeter()
        self.ap = APMeter(grid, ap)
        self.frames = 0

    def update(self, pred: Sequence[MapVector], gt: Sequence[MapVector]) -> None:
        """Add one frame: predicted and ground-truth polylines in the ego frame (metres)."""
        p = rasterize_map(pred, self.grid, self.map_gt).semantic
        g = rasterize_map(gt, self.grid, self.map_gt).semantic
        self.iou.update(torch.from_numpy(p[None]).float(), torch.from_numpy(g[None]))
        self.ap.update(pred, gt)
        self.frames += 1

    def compute(self) -> dict:
        iou = self.iou.compute()
        ap = self.ap.compute()
        return {'frames': self.frames, 'iou': iou['iou'], 'miou': iou['miou'], 'ap': ap['ap'], 'map': ap['map']}
