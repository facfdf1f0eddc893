"""Semantic IoU per class, pooled over a whole split (method doc section 7.1, HDMapNet protocol).

The prediction is the one-hot of the argmax over the semantic logits; the ground truth is the one-hot raster. For
each channel the intersections and unions are summed over every pixel of every sample of the split, then divided.
The reported per-class IoU are the map classes (divider, ped_crossing, boundary) and mIoU is their mean; background
is reported for information only. A class that never occurs in the split (no ground truth and no prediction) has no
IoU: it is reported as None and left out of the mean, which the report says.
"""
from __future__ import annotations

import numpy as np
import torch

from ..constants import CLASS_NAMES


def onehot_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, C, H, W) bool one-hot of the argmax."""
    idx = logits.argmax(dim=1, keepdim=True)
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)


def intersection_union(pred_onehot: torch.Tensor, gt_onehot: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel pixel intersections and unions summed over the batch, as int64 arrays."""
    pred = pred_onehot.bool()
    gt = gt_onehot.bool()
    if pred.shape != gt.shape:
        raise ValueError(f'prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape')
    dims = (0, 2, 3)
    inter = (pred & gt).sum(dim=dims).cpu().numpy().astype(np.int64)
    union = (pred | gt).sum(dim=dims).cpu().numpy().astype(np.int64)
    return inter, union


class IoUMeter:
    """Accumulate intersections and unions over a split; ``compute()`` gives IoU per class name and mIoU."""

    def __init__(self, class_names=CLASS_NAMES):
        self.class_names = tuple(class_names)
        self.inter = np.zeros(len(self.class_names), np.int64)
        self.union = np.zeros(len(self.class_names), np.int64)
        self.samples = 0

    def update(self, semantic_logits: torch.Tensor, gt_semantic: torch.Tensor) -> None:
        """Add a batch: (B, C, H, W) logits and the (B, C, H, W) one-hot ground truth."""
        inter, union = intersection_union(onehot_from_logits(semantic_logits), gt_semantic)
        self.inter += inter
        self.union += union
        self.samples += semantic_logits.shape[0]

    def merge(self, other: 'IoUMeter') -> None:
        self.inter += other.inter
        self.union += other.union
        self.samples += other.samples

    def compute(self) -> dict:
        iou = {name: (float(i) / float(u) if u > 0 else None)
               for name, i, u in zip(self.class_names, self.inter, self.union)}
        defined = [iou[n] for n in self.class_names[1:] if iou[n] is not None]
        return {'iou': iou, 'miou': float(np.mean(defined)) if defined else None,
                'classes_in_miou': [n for n in self.class_names[1:] if iou[n] is not None],
                'intersection': dict(zip(self.class_names, self.inter.tolist())),
                'union': dict(zip(self.class_names, self.union.tolist())), 'samples': self.samples}
