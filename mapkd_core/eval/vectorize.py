"""From the model's rasters to polylines: our fast deterministic vectorizer.

HDMapNet's post-processing (DBSCAN over the instance embeddings, then thinning and chaining from a random seed) ran
at about 1 frame/s and was that system's bottleneck; it is kept as the reference in :mod:`.dbscan`. Ours, per class:

1. **mask**: pixels whose argmax class is this class (optionally closed with a small kernel);
2. **instances**: the instance embeddings of those pixels are grouped by a greedy seeded clustering (radius
   ``cluster_radius``, half the discriminative loss's push margin of 3.0) refined by one mean-shift step; each
   cluster is split into its 8-connected pieces, pieces smaller than ``min_pixels`` are dropped;
3. **centre lines**: each piece is thinned to a one-pixel skeleton (scikit-image); its pixel graph (8-neighbours,
   weights 1 and sqrt 2) is reduced to a minimum spanning tree (scipy.sparse.csgraph), whose longest path is the
   polyline; a long side branch is kept as an out-and-back detour, short spurs are dropped; a path whose two ends
   touch is closed (rings);
4. **chaining**: the polylines of one cluster whose ends are within ``max_gap`` metres are joined (an instance cut
   by an occluder or by a higher class stays one polyline);
5. **orientation** from the direction head: the polyline is reversed when its segments disagree with the predicted
   heading bins along it;
6. **simplification** (Douglas-Peucker, ``simplify`` px) and conversion to ego-frame metres with
   :func:`mapkd_core.geometry.pixel_to_metres`; the score is the mean softmax probability of the class over the
   instance's pixels.

Everything is deterministic (no random seed point), and vectorised with numpy / OpenCV / scipy.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree, shortest_path
from skimage.measure import label
from skimage.morphology import skeletonize

from ..config import GridConfig
from ..constants import CLASS_NAMES
from ..data.vectors import MapVector
from ..geometry import pixel_to_metres

_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))  # half of the 8-neighbourhood: each edge once


@dataclass(frozen=True)
class VectorizeConfig:
    min_pixels: int = 20  # instance pieces smaller than this are noise
    cluster_radius: float = 1.5  # embedding distance (discriminative loss: pull 0.5, push 3.0)
    min_branch: int = 10  # leftover skeleton branches of at least this many pixels become polylines
    max_gap: float = 3.0  # metres: pieces of one instance closer than this are joined
    simplify: float = 0.5  # Douglas-Peucker tolerance in pixels
    close_kernel: int = 0  # morphological closing of the class mask (0 = none)
    min_score: float = 0.0


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def cluster_embeddings(emb: np.ndarray, radius: float) -> np.ndarray:
    """Greedy seeded clustering of (n, d) embeddings: labels 0..k-1. The seed is the first unassigned row."""
    n = len(emb)
    labels = np.full(n, -1, np.int64)
    k = 0
    r2 = radius * radius
    while True:
        free = np.nonzero(labels < 0)[0]
        if len(free) == 0:
            return labels
        seed = emb[free[0]]
        d2 = ((emb[free] - seed) ** 2).sum(1)
        members = free[d2 < r2]
        centre = emb[members].mean(0)  # one mean-shift step from the seed
        d2 = ((emb[free] - centre) ** 2).sum(1)
        members = free[d2 < r2]
        if len(members) == 0:
            members = free[:1]
        labels[members] = k
        k += 1


def _skeleton_graph(pixels: np.ndarray, owner: np.ndarray):
    """Sparse 8-neighbour graph (weights 1 / sqrt 2) over skeleton pixel coordinates (k, 2) (row, col); pixels of
    different owners are never joined."""
    k = len(pixels)
    rmin, cmin = pixels.min(0)
    h, w = pixels.max(0) - pixels.min(0) + 3
    index = np.full((h, w), -1, np.int64)
    rr, cc = pixels[:, 0] - rmin + 1, pixels[:, 1] - cmin + 1
    index[rr, cc] = np.arange(k)
    src, dst, wts = [], [], []
    for dr, dc in _OFFSETS:
        nb = index[rr + dr, cc + dc]
        ok = nb >= 0
        ok[ok] = owner[nb[ok]] == owner[ok]
        src.append(np.nonzero(ok)[0])
        dst.append(nb[ok])
        wts.append(np.full(ok.sum(), np.hypot(dr, dc)))
    src, dst, wts = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    return coo_matrix((wts, (src, dst)), shape=(k, k)).tocsr()


def _trace(pred: np.ndarray, start: int, end: int) -> list[int]:
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return path[::-1]


def _add_detours(tree, nodes: np.ndarray, main: list[int], min_branch: int) -> list[int]:
    """Insert side branches of at least ``min_branch`` nodes into the main path as out-and-back detours."""
    left = np.setdiff1d(nodes, main)
    if len(left) < min_branch:
        return main
    sub = tree[left][:, left]
    n_left, lab = connected_components(sub, directed=False)
    link = tree[left][:, main].tocoo()  # edges from leftover nodes to the main path
    detours = []
    for k in range(n_left):
        piece = np.nonzero(lab == k)[0]
        if len(piece) < min_branch:
            continue
        e = np.nonzero(np.isin(link.row, piece))[0]
        if len(e) == 0:
            continue
        start, at = int(link.row[e[0]]), int(link.col[e[0]])
        d, pred = shortest_path(sub, directed=False, indices=start, return_predecessors=True)
        d = np.where(lab == k, d, -1)
        detours.append((at, [int(left[n]) for n in _trace(pred, start, int(np.argmax(d)))]))
    for at, out in sorted(detours, key=lambda t: -t[0]):  # from the end, so that indices stay valid
        main = main[:at + 1] + out + out[-2::-1] + main[at:]
    return main


def skeleton_paths(mask: np.ndarray, min_branch: int, pieces: np.ndarray | None = None) -> list[np.ndarray]:
    """Pixel polylines (k, 2) (row, col) of the centre lines of a binary mask: one per connected skeleton.

    ``pieces`` (optional, same shape, int ids > 0) labels separate instances: each is skeletonised on its own and no
    graph edge joins two of them. The skeleton pixel graph (8-neighbours, weights 1 and sqrt 2) is reduced to a
    minimum spanning tree; its longest path is the polyline (all trees at once: two Dijkstra sweeps). A side branch
    of at least ``min_branch`` pixels is kept as an out-and-back detour inserted where it leaves the path (a boundary
    ring that runs out along a spike and back rasterises to exactly that); shorter spurs are dropped as noise.
    Returns the paths and, when ``pieces`` is given, each path's piece id in a second list.
    """
    from scipy.ndimage import find_objects
    if pieces is None:
        pieces = mask.astype(np.int32)
    pix, owner = [], []
    for pid, sl in enumerate(find_objects(pieces), start=1):
        if sl is None:
            continue
        crop = np.pad(pieces[sl] == pid, 1)
        p = np.argwhere(skeletonize(crop)) + [sl[0].start - 1, sl[1].start - 1]
        pix.append(p)
        owner.append(np.full(len(p), pid))
    if not pix:
        return [], []
    pixels = np.concatenate(pix)
    owner = np.concatenate(owner)
    if len(pixels) < 2:
        return [], []
    tree = minimum_spanning_tree(_skeleton_graph(pixels, owner))
    tree = (tree + tree.T).tocsr()
    n_comp, comp = connected_components(tree, directed=False)
    starts = np.unique(comp, return_index=True)[1]
    member = comp[None, :] == np.arange(n_comp)[:, None]  # (n_comp, K)

    def farthest(dist):
        return np.where(member & np.isfinite(dist), dist, -1.0).argmax(1)
    ends_a = farthest(shortest_path(tree, directed=False, indices=starts))
    d, pred = shortest_path(tree, directed=False, indices=ends_a, return_predecessors=True)
    ends_b = farthest(d)
    sizes = member.sum(1)
    paths, ids = [], []
    for c in range(n_comp):
        if sizes[c] < 2:
            continue
        main = _trace(pred[c], int(ends_a[c]), int(ends_b[c]))
        nodes = np.nonzero(member[c])[0]
        if len(nodes) - len(main) >= min_branch:
            main = _add_detours(tree, nodes, main, min_branch)
        paths.append(pixels[np.array(main)].astype(np.float64))
        ids.append(int(owner[nodes[0]]))
    return paths, ids


def _closes(pts: np.ndarray) -> bool:
    return len(pts) > 8 and np.abs(pts[0] - pts[-1]).max() <= 1.5


def _chain(paths: list[np.ndarray], max_gap_px: float) -> list[np.ndarray]:
    """Join polylines whose ends are within max_gap_px, longest first; returns the chains."""
    paths = sorted(paths, key=len, reverse=True)
    chains = []
    while paths:
        chain = paths.pop(0)
        joined = True
        while joined and paths:
            joined = False
            best = None
            for i, p in enumerate(paths):
                for end_c, flip_c in ((chain[-1], False), (chain[0], True)):
                    for end_p, flip_p in ((p[0], False), (p[-1], True)):
                        d = np.hypot(*(end_c - end_p))
                        if d <= max_gap_px and (best is None or d < best[0]):
                            best = (d, i, flip_c, flip_p)
            if best is not None:
                _, i, flip_c, flip_p = best
                p = paths.pop(i)
                c = chain[::-1] if flip_c else chain
                p = p[::-1] if flip_p else p
                chain = np.vstack([c, p])
                joined = True
        chains.append(chain)
    return chains


def _orient(pts: np.ndarray, direction_bins: np.ndarray | None, angle_classes: int) -> np.ndarray:
    """Reverse the polyline (row, col) if its headings disagree with the predicted direction bins along it."""
    if direction_bins is None or len(pts) < 2:
        return pts
    r = np.clip(np.round(pts[:-1, 0]).astype(int), 0, direction_bins.shape[0] - 1)
    c = np.clip(np.round(pts[:-1, 1]).astype(int), 0, direction_bins.shape[1] - 1)
    bins = direction_bins[r, c]
    ok = bins > 0
    if not ok.any():
        return pts
    d = np.diff(pts, axis=0)[ok]
    heading = np.arctan2(d[:, 0], d[:, 1])  # pixel space: atan2(d row, d col), as the direction ground truth
    predicted = (bins[ok] - 1) * (2 * np.pi / angle_classes)
    return pts[::-1] if np.cos(heading - predicted).sum() < 0 else pts


def _simplify(pts: np.ndarray, tol: float) -> np.ndarray:
    if len(pts) < 3 or tol <= 0:
        return pts
    closed = _closes(pts)
    approx = cv2.approxPolyDP(pts[:, ::-1].astype(np.float32).reshape(-1, 1, 2), tol, closed)
    out = approx.reshape(-1, 2)[:, ::-1].astype(np.float64)
    if closed:
        out = np.vstack([out, out[:1]])
    return out if len(out) >= 2 else pts[[0, -1]]


def vectorize(semantic: np.ndarray, embedding: np.ndarray | None, direction: np.ndarray | None, grid: GridConfig,
              cfg: VectorizeConfig | None = None) -> list[MapVector]:
    """Polylines from one sample's outputs: semantic (C, H, W) logits, embedding (D, H, W), direction (K, H, W)
    logits (K = angle classes + 1; optional). Returns MapVectors in ego-frame metres with scores."""
    cfg = cfg or VectorizeConfig()
    probs = softmax(semantic.astype(np.float32), 0)
    labels = probs.argmax(0)
    dir_bins = direction.argmax(0) if direction is not None else None
    angle_classes = direction.shape[0] - 1 if direction is not None else 36
    max_gap_px = cfg.max_gap / grid.xbound[2]
    out = []
    for c in range(1, len(CLASS_NAMES)):
        mask = (labels == c).astype(np.uint8)
        if cfg.close_kernel > 1:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_kernel, cfg.close_kernel))
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
        rows, cols = np.nonzero(mask)
        if len(rows) < cfg.min_pixels:
            continue
        if embedding is not None:
            cluster = cluster_embeddings(embedding[:, rows, cols].T.astype(np.float32), cfg.cluster_radius)
        else:
            cluster = np.zeros(len(rows), np.int64)
        # instance pieces: connected regions of one cluster (skimage labels equal-valued regions separately)
        cl_img = np.zeros(mask.shape, np.int32)
        cl_img[rows, cols] = cluster + 1
        pieces = label(cl_img, background=0, connectivity=2).astype(np.int32)
        sizes = np.bincount(pieces.ravel())
        pieces[sizes[pieces] < cfg.min_pixels] = 0
        piece_cluster = np.zeros(len(sizes), np.int64)
        piece_cluster[pieces[rows, cols]] = cluster
        paths, owners = skeleton_paths(pieces > 0, cfg.min_branch, pieces)
        by_cluster: dict[int, list[np.ndarray]] = {}
        for path, pid in zip(paths, owners):
            by_cluster.setdefault(int(piece_cluster[pid]), []).append(path)
        for k in sorted(by_cluster):
            sel = cluster == k
            score = float(probs[c, rows[sel], cols[sel]].mean())
            if score < cfg.min_score:
                continue
            for chain in _chain(by_cluster[k], max_gap_px):
                if _closes(chain) and np.abs(chain[0] - chain[-1]).max() > 0:
                    chain = np.vstack([chain, chain[:1]])
                chain = _simplify(_orient(chain, dir_bins, angle_classes), cfg.simplify)
                x, y = pixel_to_metres(grid, chain[:, 1], chain[:, 0])
                out.append(MapVector(c, np.stack([x, y], 1), score))
    return out
