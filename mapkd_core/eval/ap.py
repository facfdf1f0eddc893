"""Vector average precision by Chamfer-distance matching (method doc section 7.2).

Default: the P-MapNet protocol (``tools/evaluate_json.py``):
* predicted and ground-truth polylines of a class are rasterised as instance masks, ``line_width`` (5) px thick;
  each instance is the set of its pixel centres in metres;
* Chamfer distance is one-directional: the mean over the prediction's pixels of the distance to the nearest ground
  truth pixel, clipped at the threshold;
* greedy matching in increasing distance; a pair with distance >= threshold stops the matching; a pair also needs a
  pixel IoU >= ``iou_gate`` (0.1) between the two instance masks, and a pair that fails the gate still removes both
  from further matching (as P-MapNet does);
* per frame and class: predictions sorted by confidence (descending), precision/recall, precision made monotone,
  AP = mean precision at recalls 0.1, 0.2, ..., 1.0;
* thresholds 0.5 / 1.0 / 1.5 m; AP per class and threshold is averaged over the frames in which the class has a
  prediction or a ground truth; mAP is the mean of the class x threshold matrix.

``bidirectional=True, iou_gate=0.0`` gives HDMapNet's variant (Chamfer distance = mean of both directed means).

One fix: P-MapNet sorts the matches by *ascending* confidence before accumulating precision and recall, so a
false positive with a higher score than every true positive does not lower its AP. We sort by descending confidence,
as average precision is defined. Ground truth is rasterised without HDMapNet's overlap filter (which erases lower
classes near higher ones) so that every ground-truth polyline is scored whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from ..config import GridConfig
from ..constants import CLASS_NAMES
from ..data.rasterize import draw_polylines
from ..data.vectors import MapVector
from ..geometry import index_to_metres

RECALLS = tuple(np.round(np.linspace(0.1, 1.0, 10), 6))


@dataclass(frozen=True)
class APConfig:
    thresholds: tuple[float, ...] = (0.5, 1.0, 1.5)
    iou_gate: float = 0.1
    bidirectional: bool = False
    line_width: int = 5
    recalls: tuple[float, ...] = field(default=RECALLS)

    @classmethod
    def hdmapnet(cls, thresholds=(0.5, 1.0, 1.5)) -> 'APConfig':
        """HDMapNet's variant: bidirectional Chamfer distance and no IoU gate."""
        return cls(thresholds=tuple(thresholds), iou_gate=0.0, bidirectional=True)


def rasterize_instances(polylines: Sequence[np.ndarray], grid: GridConfig, line_width: int) -> np.ndarray:
    """(H, W) int32 mask with polyline i drawn as id i + 1 (later ones on top)."""
    mask = np.zeros(grid.shape, np.int32)
    return draw_polylines(mask, list(polylines), grid, list(range(1, len(polylines) + 1)), line_width)


def instance_pixels(mask: np.ndarray, n: int, grid: GridConfig) -> list[np.ndarray]:
    """For ids 1..n, the (k, 2) metres of the pixel centres of each instance (possibly empty)."""
    rows, cols = np.nonzero(mask)
    ids = mask[rows, cols]
    x, y = index_to_metres(grid, rows, cols)
    pts = np.stack([x, y], 1)
    order = np.argsort(ids, kind='stable')
    bounds = np.searchsorted(ids[order], np.arange(1, n + 2))
    return [pts[order[bounds[i]:bounds[i + 1]]] for i in range(n)]


def _directed_chamfer(src: list[np.ndarray], dst: list[np.ndarray]) -> np.ndarray:
    """(S, D): the mean distance from the points of each ``src`` instance to the nearest point of each ``dst``
    instance (inf where either is empty). One KD-tree query per ``dst`` instance for all ``src`` points at once (the
    nearest distance of a point does not depend on the other points queried with it), each instance's mean over its
    own points, as a query of those points alone would give."""
    out = np.full((len(src), len(dst)), np.inf)
    sizes = [len(s) for s in src]
    if not sum(sizes):
        return out
    pts = np.concatenate([np.asarray(s, np.float64).reshape(-1, 2) for s in src])
    bounds = np.cumsum([0, *sizes])
    for j, d in enumerate(dst):
        if not len(d):
            continue
        dist = cKDTree(d).query(pts)[0]
        for i, n in enumerate(sizes):
            if n:
                out[i, j] = dist[bounds[i]:bounds[i + 1]].copy().mean()
    return out


def chamfer_distances(pred: list[np.ndarray], gt: list[np.ndarray], bidirectional: bool) -> np.ndarray:
    """(P, G) Chamfer distances between predicted and ground-truth instances' points (metres): the mean distance of
    a prediction's points to the ground truth's, with ``bidirectional`` averaged with the reverse one; inf where an
    instance is empty. Computed once for all thresholds (:func:`chamfer_matrix` clips it)."""
    out = _directed_chamfer(pred, gt)
    if bidirectional:
        out = (out + _directed_chamfer(gt, pred).T) / 2
    return out


def chamfer_matrix(pred: list[np.ndarray], gt: list[np.ndarray], threshold: float, bidirectional: bool,
                   distances: np.ndarray | None = None) -> np.ndarray:
    """(P, G) Chamfer distances, clipped at ``threshold`` (empty instances get the threshold); ``distances``: the
    unclipped :func:`chamfer_distances` of the same instances, when already computed."""
    d = chamfer_distances(pred, gt, bidirectional) if distances is None else distances
    return np.minimum(d, float(threshold))


def iou_matrix(pred_mask: np.ndarray, n_pred: int, gt_mask: np.ndarray, n_gt: int) -> np.ndarray:
    """(P, G) pixel IoU between instance masks, from one joint histogram of the ids."""
    joint = np.bincount((pred_mask.astype(np.int64) * (n_gt + 1) + gt_mask).ravel(),
                        minlength=(n_pred + 1) * (n_gt + 1)).reshape(n_pred + 1, n_gt + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_p = joint[1:, :].sum(1)[:, None]
    area_g = joint[:, 1:].sum(0)[None, :]
    return inter / np.maximum(area_p + area_g - inter, 1e-9)


def greedy_match(cd: np.ndarray, iou: np.ndarray, threshold: float, iou_gate: float) -> np.ndarray:
    """Matched ground-truth index per prediction (-1 = none), greedy in increasing Chamfer distance."""
    cd = cd.copy()
    match = np.full(cd.shape[0], -1)
    if cd.size == 0:
        return match
    while True:
        i, j = np.unravel_index(np.argmin(cd), cd.shape)
        if cd[i, j] >= threshold:
            break
        if iou[i, j] >= iou_gate:
            match[i] = j
        cd[i, :] = threshold
        cd[:, j] = threshold
    return match


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int, recalls=RECALLS) -> float:
    """AP at the sampled recalls from predictions' scores and true-positive flags (monotone precision)."""
    if num_gt == 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind='stable')
    tp = np.asarray(tp, dtype=np.float64)[order]
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    total = 0.0
    for r in recalls:
        idx = np.nonzero(recall >= r - 1e-9)[0]
        if len(idx):
            total += precision[idx[0]]
    return total / len(recalls)


def frame_class_ap(pred: Sequence[MapVector], gt: Sequence[MapVector], grid: GridConfig,
                   cfg: APConfig) -> np.ndarray | None:
    """AP per threshold for one class in one frame; None when the frame has neither prediction nor ground truth."""
    if not pred and not gt:
        return None
    if not pred or not gt:
        return np.zeros(len(cfg.thresholds))
    pm = rasterize_instances([v.points for v in pred], grid, cfg.line_width)
    gm = rasterize_instances([v.points for v in gt], grid, cfg.line_width)
    pp = instance_pixels(pm, len(pred), grid)
    gp = instance_pixels(gm, len(gt), grid)
    iou = iou_matrix(pm, len(pred), gm, len(gt))
    scores = np.array([v.score for v in pred])
    distances = chamfer_distances(pp, gp, cfg.bidirectional)  # once for every threshold
    out = []
    for t in cfg.thresholds:
        match = greedy_match(chamfer_matrix(pp, gp, t, cfg.bidirectional, distances), iou, t, cfg.iou_gate)
        out.append(average_precision(scores, match >= 0, len(gt), cfg.recalls))
    return np.array(out)


class APMeter:
    """Accumulate per-frame, per-class AP over a split."""

    def __init__(self, grid: GridConfig, cfg: APConfig | None = None, class_names=CLASS_NAMES):
        self.grid = grid
        self.cfg = cfg or APConfig()
        self.class_names = tuple(class_names)
        n = len(self.class_names)
        self.sum = np.zeros((n, len(self.cfg.thresholds)))
        self.count = np.zeros(n, np.int64)

    def update(self, pred: Sequence[MapVector], gt: Sequence[MapVector]) -> None:
        """Add one frame's predicted and ground-truth polylines (ego-frame metres)."""
        for c in range(1, len(self.class_names)):
            ap = frame_class_ap([v for v in pred if v.cls == c], [v for v in gt if v.cls == c], self.grid, self.cfg)
            if ap is not None:
                self.sum[c] += ap
                self.count[c] += 1

    def merge(self, other: 'APMeter') -> None:
        self.sum += other.sum
        self.count += other.count

    def compute(self) -> dict:
        per_class = {}
        rows = []
        for c in range(1, len(self.class_names)):
            if self.count[c] == 0:
                per_class[self.class_names[c]] = None
                continue
            ap = self.sum[c] / self.count[c]
            per_class[self.class_names[c]] = {f'{t:g}': float(a) for t, a in zip(self.cfg.thresholds, ap)}
            rows.append(ap)
        return {'ap': per_class, 'map': float(np.mean(rows)) if rows else None,
                'thresholds': list(self.cfg.thresholds), 'iou_gate': self.cfg.iou_gate,
                'bidirectional': self.cfg.bidirectional,
                'frames_per_class': {self.class_names[c]: int(self.count[c]) for c in range(1, len(self.class_names))}}
