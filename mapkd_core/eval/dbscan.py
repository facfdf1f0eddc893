"""The reference vectorizer: HDMapNet / P-MapNet post-processing with DBSCAN (method doc section 7.2).

Per class: the argmax mask is closed with a 5 x 5 elliptical kernel and connected components of 100 px or less are
dropped; the 16-d embeddings of the remaining pixels are standardised (scikit-learn ``StandardScaler``) and clustered
with ``DBSCAN(eps=1.5, min_samples=50)``; each cluster's confidence is its mean class probability; the cluster is
thinned by directional non-maximum suppression (a 1 x 5 or 5 x 1 max filter chosen per pixel from 9 x 5 against
5 x 9 average pools, on the class probability smoothed by a 5 x 5 Gaussian); the remaining points are chained. HDMapNet chains from a random seed point along the two
strongest predicted directions; this reference chains greedily to the nearest remaining point from the point at one
end of the cluster's principal axis, so that it is deterministic. It is here to compare speed and quality with our
vectorizer (``benchmarks/bench_vectorize.py``), not to be used on a vehicle.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..config import GridConfig
from ..constants import CLASS_NAMES
from ..data.vectors import MapVector
from ..geometry import pixel_to_metres
from .vectorize import softmax


def _nms(mask: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Directional thinning: keep pixels that are maxima across the local line direction."""
    m = mask.astype(np.float32)
    horiz = cv2.blur(m, (9, 5))  # wide window: large where the structure runs along columns (x)
    vert = cv2.blur(m, (5, 9))
    # the score is smoothed across the line first, so that flat scores (e.g. a one-hot raster) still peak mid-line
    s = cv2.GaussianBlur(np.where(mask, score, 0).astype(np.float32), (5, 5), 0)
    s = np.where(mask, s, 0)
    max_v = cv2.dilate(s, np.ones((5, 1), np.uint8))  # across rows
    max_h = cv2.dilate(s, np.ones((1, 5), np.uint8))  # across columns
    keep_h = (horiz >= vert) & (s >= max_v)
    keep_v = (horiz < vert) & (s >= max_h)
    return mask & (keep_h | keep_v)


def _chain(points: np.ndarray, max_step: float = 10.0, absorb: float = 2.5) -> list[np.ndarray]:
    """Greedy nearest-neighbour chains (pixel coordinates) from one end of the principal axis. Points within
    ``absorb`` px of the current point are consumed without being added (the thinned ridge can be two pixels
    wide); a jump larger than ``max_step`` starts a new chain."""
    if len(points) < 2:
        return []
    centred = points - points.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    remaining = np.ones(len(points), bool)
    tree = cKDTree(points)
    chains = []
    current = int(np.argmin(centred @ axis))
    chain = [current]
    remaining[current] = False
    while remaining.any():
        for i in tree.query_ball_point(points[current], absorb):
            remaining[i] = False
        free = np.nonzero(remaining)[0]
        if len(free) == 0:
            break
        d = np.hypot(*(points[free] - points[current]).T)
        best = int(np.argmin(d))
        if d[best] > max_step:
            if len(chain) > 1:
                chains.append(points[chain])
            current = int(free[np.argmin(centred[free] @ axis)])
            chain = [current]
        else:
            current = int(free[best])
            chain.append(current)
        remaining[current] = False
    if len(chain) > 1:
        chains.append(points[chain])
    return chains


def vectorize_dbscan(semantic: np.ndarray, embedding: np.ndarray, direction: np.ndarray | None, grid: GridConfig,
                     eps: float = 1.5, min_samples: int = 50, min_area: int = 100) -> list[MapVector]:
    """Polylines from one sample's outputs with the DBSCAN reference post-processing."""
    from sklearn.cluster import DBSCAN
    from sklearn.preprocessing import StandardScaler

    probs = softmax(semantic.astype(np.float32), 0)
    labels = probs.argmax(0)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    out = []
    for c in range(1, len(CLASS_NAMES)):
        mask = cv2.morphologyEx((labels == c).astype(np.uint8), cv2.MORPH_CLOSE, kernel)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        small = np.nonzero(stats[:, cv2.CC_STAT_AREA] <= min_area)[0]
        mask[np.isin(comp, small)] = 0
        rows, cols = np.nonzero(mask)
        if len(rows) < min_samples:
            continue
        feats = StandardScaler().fit_transform(embedding[:, rows, cols].T)
        cluster = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(feats)
        for k in range(cluster.max() + 1):
            sel = cluster == k
            inst = np.zeros(mask.shape, bool)
            inst[rows[sel], cols[sel]] = True
            thin = _nms(inst, probs[c])
            pts = np.argwhere(thin).astype(np.float64)
            score = float(probs[c, rows[sel], cols[sel]].mean())
            for chain in _chain(pts):
                x, y = pixel_to_metres(grid, chain[:, 1], chain[:, 0])
                out.append(MapVector(c, np.stack([x, y], 1), score))
    return out
