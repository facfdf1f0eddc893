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

Speed (``benchmarks/bench_vectorize.py``; the polylines are bit for bit those of the first, 2.5x slower version):
the argmax over classes is taken plane by plane and the direction argmax only at the polylines' pixels (numpy's
axis-0 argmax of the 37 direction planes alone took a third of the time); the clustering computes distances on a
column-major copy, vectorised along the pixels; the pieces are labelled per cluster by OpenCV on the cluster's
bounding box, not on the whole grid; the skeletons of all classes form one graph, so the spanning forest and the
two Dijkstra sweeps run once per frame (Kruskal's stable sort keeps each tree as it was); large temporaries are
avoided (fresh megabyte arrays cost page faults).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree, shortest_path
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
    e = logits - logits.max(axis=axis, keepdims=True)  # in place from here: no large temporaries
    if e.dtype.kind != 'f':
        e = e.astype(np.float64)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def argmax0(a: np.ndarray) -> np.ndarray:
    """``a.argmax(0)`` of a (C, H, W) array, computed plane by plane (numpy's axis-0 argmax transposes the array and
    reduces C-element rows, about 20x slower); the first maximum wins, as in numpy."""
    best = a[0].copy()
    idx = np.zeros(a.shape[1:], np.intp)
    for k in range(1, len(a)):
        greater = a[k] > best
        idx[greater] = k
        np.maximum(best, a[k], out=best)
    return idx


def _sq_dist(cols: np.ndarray, point: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Squared distances of the columns of ``cols`` (d, n) to ``point`` (d,), vectorised along n, summed in the
    order of numpy's pairwise row sum (8 interleaved partial sums, then a tree), so that the bits equal
    ``((rows - point) ** 2).sum(1)`` on the rows. ``scratch``: at least (d, n), same dtype."""
    d, n = cols.shape
    sq = np.subtract(cols, point[:, None], out=scratch[:d, :n])
    sq *= sq
    if d < 8:
        for j in range(1, d):
            sq[0] += sq[j]
        return sq[0]
    full = d - d % 8
    for b in range(8, full, 8):
        sq[:8] += sq[b:b + 8]
    sq[:4] = sq[0:8:2] + sq[1:8:2]  # (r0 + r1), (r2 + r3), (r4 + r5), (r6 + r7)
    sq[:2] = sq[0:4:2] + sq[1:4:2]
    sq[0] += sq[1]
    for j in range(full, d):
        sq[0] += sq[j]
    return sq[0]


def cluster_embeddings(emb: np.ndarray, radius: float) -> np.ndarray:
    """Greedy seeded clustering of (n, d) embeddings: labels 0..k-1. The seed is the first unassigned row.

    Each cluster is the unassigned rows within ``radius`` of the mean of the unassigned rows within ``radius`` of
    the seed (one mean-shift step). The distances are computed on a column-major copy of the unassigned rows,
    vectorised along the rows (numpy's row-wise sum over 16 values is about 5x slower), compacted after each cluster.
    """
    emb = np.asarray(emb)
    n, d = emb.shape
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    r2 = radius * radius
    free = np.arange(n)  # unassigned rows, in order
    cols = np.ascontiguousarray(emb.T)  # (d, n_free): the unassigned rows, column-major
    scratch = np.empty((d, n), emb.dtype)
    k = 0
    while len(free):
        inside = _sq_dist(cols, cols[:, 0].copy(), scratch) < r2
        centre = emb[free[inside]].mean(0)  # one mean-shift step from the seed (the seed itself is always in)
        inside = _sq_dist(cols, centre, scratch) < r2
        if not inside.any():
            inside[0] = True
        labels[free[inside]] = k
        keep = ~inside
        free, cols = free[keep], cols[:, keep]
        k += 1
    return labels


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


def _skeleton_pixels(crop: np.ndarray, row0: int, col0: int) -> np.ndarray:
    """(k, 2) (row, col) pixels of the skeleton of one piece; ``crop`` is its bounding box padded by one pixel,
    whose top-left pixel is at (row0, col0) of the grid."""
    return np.argwhere(skeletonize(crop)) + [row0, col0]


def _forest_paths(pixels: np.ndarray, owner: np.ndarray, min_branch: int) -> tuple[list[np.ndarray], list[int]]:
    """The polylines of skeleton pixels (k, 2) whose pieces are given by ``owner`` (no edge joins two owners): the
    pixel graph's minimum spanning forest, the longest path of each tree (two Dijkstra sweeps for all trees at
    once) and the long side branches as detours. The trees are independent (Kruskal with a stable sort of the
    weights), so one call for all pieces of a frame gives the same paths as one call per piece."""
    if len(pixels) < 2:
        return [], []
    tree = minimum_spanning_tree(_skeleton_graph(pixels, owner))
    tree = (tree + tree.T).tocsr()
    n_comp, comp = connected_components(tree, directed=False)
    starts = np.unique(comp, return_index=True)[1]
    by_comp = np.argsort(comp, kind='stable')  # the nodes of each tree, ascending
    bounds = np.searchsorted(comp[by_comp], np.arange(n_comp + 1))
    node = np.arange(len(comp))

    def farthest(dist):
        """Per tree, the first node at the largest distance from the tree's source (row c of ``dist``)."""
        own = dist[comp, node]  # each node's distance from its own tree's source
        order = np.lexsort((node, -own, comp))
        return order[bounds[:-1]]
    ends_a = farthest(shortest_path(tree, directed=False, indices=starts))
    d, pred = shortest_path(tree, directed=False, indices=ends_a, return_predecessors=True)
    ends_b = farthest(d)
    paths, ids = [], []
    for c in range(n_comp):
        nodes = by_comp[bounds[c]:bounds[c + 1]]
        if len(nodes) < 2:
            continue
        main = _trace(pred[c], int(ends_a[c]), int(ends_b[c]))
        if len(nodes) - len(main) >= min_branch:
            main = _add_detours(tree, nodes, main, min_branch)
        paths.append(pixels[np.array(main)].astype(np.float64))
        ids.append(int(owner[nodes[0]]))
    return paths, ids


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
        p = _skeleton_pixels(np.pad(pieces[sl] == pid, 1), sl[0].start - 1, sl[1].start - 1)
        pix.append(p)
        owner.append(np.full(len(p), pid))
    if not pix:
        return [], []
    return _forest_paths(np.concatenate(pix), np.concatenate(owner), min_branch)


def _instance_pieces(flat: np.ndarray, cluster: np.ndarray, shape: tuple[int, int], min_pixels: int):
    """The 8-connected pieces of each cluster of the pixels ``flat`` (raster indices, ascending) with at least
    ``min_pixels`` pixels, in the raster order of their first pixel (skimage's ``label`` order): a list of
    (cluster, padded crop of the piece's bounding box, row0, col0). One OpenCV labelling per cluster, on the
    cluster's bounding box; clusters smaller than ``min_pixels`` are skipped."""
    w = shape[1]
    order = np.argsort(cluster, kind='stable')
    bounds = np.flatnonzero(np.diff(cluster[order])) + 1
    found = []  # (first raster index, cluster, crop, row0, col0)
    for sel in np.split(order, bounds):
        if len(sel) < min_pixels:
            continue
        f = flat[sel]  # ascending: sel is sorted within a cluster (stable sort)
        r, c = np.divmod(f, w)
        r0, c0 = int(r[0]), int(c.min())
        box = np.zeros((int(r[-1]) - r0 + 1, int(c.max()) - c0 + 1), np.uint8)
        box[r - r0, c - c0] = 1
        n, lab, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8, ltype=cv2.CV_32S)
        big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_pixels) + 1
        if len(big) == 0:
            continue
        ids, at_first = np.unique(lab[r - r0, c - c0], return_index=True)
        first = np.zeros(n, np.int64)
        first[ids] = f[at_first]  # each piece's first pixel (f is in raster order)
        k = int(cluster[sel[0]])
        for j in big:
            x, y, bw, bh = stats[j, :4]
            crop = np.zeros((bh + 2, bw + 2), bool)
            crop[1:-1, 1:-1] = lab[y:y + bh, x:x + bw] == j
            found.append((int(first[j]), k, crop, r0 + int(y) - 1, c0 + int(x) - 1))
    found.sort(key=lambda t: t[0])
    return [t[1:] for t in found]


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


def _orient(pts: np.ndarray, bins: np.ndarray | None, angle_classes: int) -> np.ndarray:
    """Reverse the polyline (row, col) if its headings disagree with the predicted direction bins along it
    (``bins``: the argmax direction bin at each of its points but the last)."""
    if bins is None or len(pts) < 2:
        return pts
    ok = bins > 0
    if not ok.any():
        return pts
    d = np.diff(pts, axis=0)[ok]
    heading = np.arctan2(d[:, 0], d[:, 1])  # pixel space: atan2(d row, d col), as the direction ground truth
    predicted = (bins[ok] - 1) * (2 * np.pi / angle_classes)
    return pts[::-1] if np.cos(heading - predicted).sum() < 0 else pts


def _direction_bins(chains: list[np.ndarray], direction: np.ndarray | None) -> list[np.ndarray | None]:
    """The argmax bin of the direction logits (K, H, W) at every point but the last of each polyline (row, col):
    one gather for all polylines (the full argmax over the K planes would cost more than the whole vectorizer)."""
    if direction is None or not chains:
        return [None] * len(chains)
    k, h, w = direction.shape
    pts = np.concatenate([chain[:-1] for chain in chains])
    r = np.clip(np.round(pts[:, 0]).astype(int), 0, h - 1)
    c = np.clip(np.round(pts[:, 1]).astype(int), 0, w - 1)
    bins = argmax0(direction[:, r, c])  # (K, M) gather: any strides, no copy of the whole array
    return np.split(bins, np.cumsum([len(chain) - 1 for chain in chains])[:-1])


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
    labels = argmax0(probs)
    h, w = labels.shape
    max_gap_px = cfg.max_gap / grid.xbound[2]
    # every class's instance pieces, skeletonised; one skeleton forest for the whole frame
    classes, pix, owner, piece_cluster = [], [], [], []
    for c in range(1, len(CLASS_NAMES)):
        mask = labels == c
        if cfg.close_kernel > 1:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_kernel, cfg.close_kernel))
            mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool)
        flat = np.flatnonzero(mask)
        if len(flat) < cfg.min_pixels:
            continue
        rows, cols = np.divmod(flat, w)
        if embedding is not None:
            cluster = cluster_embeddings(embedding[:, rows, cols].T.astype(np.float32), cfg.cluster_radius)
        else:
            cluster = np.zeros(len(rows), np.int64)
        classes.append((c, rows, cols, cluster))
        for k, crop, r0, c0 in _instance_pieces(flat, cluster, (h, w), cfg.min_pixels):
            p = _skeleton_pixels(crop, r0, c0)
            owner.append(np.full(len(p), len(piece_cluster)))
            pix.append(p)
            piece_cluster.append((c, k))
    paths, owners = _forest_paths(np.concatenate(pix), np.concatenate(owner), cfg.min_branch) if pix else ([], [])
    by_cluster: dict[tuple[int, int], list[np.ndarray]] = {}
    for path, pid in zip(paths, owners):
        by_cluster.setdefault(piece_cluster[pid], []).append(path)
    found = []  # (class, pixel polyline (row, col), score)
    for c, rows, cols, cluster in classes:
        score_px = probs[c, rows, cols]
        for k in sorted(k for cc, k in by_cluster if cc == c):
            score = float(score_px[cluster == k].mean())
            if score < cfg.min_score:
                continue
            for chain in _chain(by_cluster[c, k], max_gap_px):
                if _closes(chain) and np.abs(chain[0] - chain[-1]).max() > 0:
                    chain = np.vstack([chain, chain[:1]])
                found.append((c, chain, score))
    if not found:
        return []
    angle_classes = direction.shape[0] - 1 if direction is not None else 36
    bins = _direction_bins([chain for _, chain, _ in found], direction)
    found = [(c, _simplify(_orient(chain, b, angle_classes), cfg.simplify), score)
             for (c, chain, score), b in zip(found, bins)]
    pix = np.concatenate([chain for _, chain, _ in found])
    x, y = pixel_to_metres(grid, pix[:, 1], pix[:, 0])  # one call for all polylines
    xy = np.split(np.stack([x, y], 1), np.cumsum([len(chain) for _, chain, _ in found])[:-1])
    return [MapVector(c, pts, score) for (c, _, score), pts in zip(found, xy)]
