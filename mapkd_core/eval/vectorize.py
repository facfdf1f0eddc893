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

Speed (``benchmarks/bench_vectorize.py``; the polylines are bit for bit those of the first, slowest version, and
``test/test_vectorize_fast.py`` pins every fast building block to its plain form). First round (2.5x): the argmax
over classes is taken plane by plane and the direction argmax only at the polylines' pixels (numpy's axis-0 argmax
of the 37 direction planes alone took a third of the time); the clustering computes distances on a column-major
copy, vectorised along the pixels; the pieces are found per cluster on the cluster's bounding box, not on the whole
grid; the skeletons of all classes form one graph, so the spanning forest and the two Dijkstra sweeps run once per
frame (Kruskal's stable sort keeps each tree as it was); large temporaries are avoided (fresh megabyte arrays cost
page faults). Second round (1.7x in wall time): the clustering computes the exact distances only for the rows that
pass a one-coordinate pre-filter (the same float term; a sum of non-negative terms is never below one of them),
gathers them row-wise and transposes them with OpenCV, takes the mean with einsum (numpy's row-by-row sum without
its per-row overhead) and writes partial sums to fresh arrays (numpy buffers an operation between two views of one
array, 4x slower); a flood fill from a cluster's first pixel tells whether the cluster is one piece, so OpenCV's
labelling (the whole box, in two threads whose spinning doubled its CPU time) runs only for the others; the pixel
graph and the symmetric tree are built as CSR arrays directly, the sweeps are multi-source Dijkstra runs
(``min_only``) without scipy's transposes, the side branches of all trees are found at once and the paths are
traced on lists; the class argmax updates its uint8 index arithmetically (a masked assignment costs 10x on noisy
masks); the softmax works plane by plane; the direction argmax is a row-wise argmax of the point-major gather and
all polylines are oriented at once; :func:`~mapkd_core.geometry.pixel_to_metres` caches the inverse grid affine.
Measured (40 frames at 200 x 400, 2-core machine): idle, 6.2 ms/frame wall and 6.3 ms CPU against the reference's
261 ms wall and 418 ms CPU, i.e. 42x in wall time and 67x in CPU time (the first round, same conditions: 10.5 ms
wall, 20.1 ms CPU: 24x and 22x); with two busy processes on the cores, 51x and 69x (first round: 33x and 48x). The
reference runs partly on two threads (its CPU time exceeds its wall time), ours on one, so the wall ratio is lowest
on an idle machine. Third round (2026-12-01, 4.5 % in wall time, polylines bit for bit on finite logits): the class
argmax is taken on the logits and the softmax only at the classes' pixels, for the scores. Idle, with a rest before
each timed call: 8.0 ms wall / 8.2 ms CPU against 319 ms / 512 ms, 40x wall and 63x CPU (with the reference on one
thread too, ``OMP_NUM_THREADS=1``: 56x). A worker thread for one class's clustering and skeletons was tried and
measured no faster (the GIL: most of the work is many small numpy calls).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree
from skimage.morphology import skeletonize

from ..config import GridConfig
from ..constants import CLASS_NAMES
from ..data.vectors import MapVector
from ..geometry import pixel_to_metres

_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))  # half of the 8-neighbourhood: each edge once
_OFFSET_WEIGHTS = np.array([np.hypot(dr, dc) for dr, dc in _OFFSETS])


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
    """Softmax along ``axis``. Along axis 0 of a C-contiguous float array, the maximum and the sum are taken plane by
    plane (numpy reduces a leading axis plane after plane too, so the bits are the same, but its keepdims reductions
    and the temporaries cost 4x the time)."""
    if axis == 0 and logits.ndim > 1 and logits.dtype.kind == 'f' and logits.flags.c_contiguous:
        top = logits[0].copy()
        for plane in logits[1:]:
            np.maximum(top, plane, out=top)
        e = np.subtract(logits, top)
        np.exp(e, out=e)
        total = e[0].copy()
        for plane in e[1:]:
            total += plane
        e /= total
        return e
    e = logits - logits.max(axis=axis, keepdims=True)  # in place from here: no large temporaries
    if e.dtype.kind != 'f':
        e = e.astype(np.float64)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _softmax_at(planes: np.ndarray, c: int, flat: np.ndarray) -> np.ndarray:
    """``softmax(planes)[c]`` at the raster indices ``flat`` of the (C, H * W) logits, with the bits of
    :func:`softmax` (the same maximum, exponentials and plane-by-plane sum, on the gathered pixels only)."""
    return softmax(np.ascontiguousarray(planes[:, flat]), 0)[c]


def argmax0(a: np.ndarray, dtype=np.intp) -> np.ndarray:
    """``a.argmax(0)`` of a (C, H, W) array, computed plane by plane (numpy's axis-0 argmax transposes the array and
    reduces C-element rows, about 20x slower); the first maximum wins, as in numpy. The index is updated by
    arithmetic, not by a masked assignment, whose cost grows 10x when the mask is noisy; ``dtype``: the index type
    (uint8 is faster than intp where C <= 256)."""
    best = a[0].copy()
    idx = np.zeros(a.shape[1:], dtype)
    greater = np.empty(a.shape[1:], bool)
    for k in range(1, len(a)):
        np.greater(a[k], best, out=greater)
        idx += (k - idx) * greater  # k where greater (idx < k: no wrap-around in unsigned types)
        np.maximum(best, a[k], out=best)
    return idx


def _sq_dist(cols: np.ndarray, point: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Squared distances of the columns of ``cols`` (d, n) to ``point`` (d,), vectorised along n, summed in the
    order of numpy's pairwise row sum (8 interleaved partial sums, then a tree), so that the bits equal
    ``((rows - point) ** 2).sum(1)`` on the rows. ``out``: where the differences go ((d, n), may be ``cols``).

    The partial sums go to fresh arrays: numpy buffers an operation whose output shares its base array with an
    input that is not the output itself (``sq[:8] += sq[8:16]``), which makes it about 4x slower."""
    d, n = cols.shape
    sq = np.subtract(cols, point[:, None], out=out)
    sq *= sq
    if d < 8:
        total = sq[0].copy()
        for j in range(1, d):
            total += sq[j]
        return total
    full = d - d % 8
    part = sq[:8] + sq[8:16] if full > 8 else sq[:8]
    for b in range(16, full, 8):
        part += sq[b:b + 8]
    quad = part[0:8:2] + part[1:8:2]  # (r0 + r1), (r2 + r3), (r4 + r5), (r6 + r7)
    pair = quad[0:4:2] + quad[1:4:2]
    total = pair[0] + pair[1]
    for j in range(full, d):
        total += sq[j]
    return total


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    """``rows.mean(0)`` with the same bits, about 4x faster. numpy sums the rows of a C-contiguous (m, d > 1) array
    one after the other, with a ufunc call per row; einsum adds them in the same order without that overhead."""
    if rows.ndim == 2 and len(rows) and rows.shape[1] > 1 and rows.dtype in (np.float32, np.float64) \
            and rows.flags.c_contiguous:
        total = np.einsum('ij->j', rows)
        total /= len(rows)
        return total
    return rows.mean(0)


def _columns(rows: np.ndarray) -> np.ndarray:
    """A column-major copy (d, m) of the rows (m, d); OpenCV's transpose is about 5x faster than numpy's copy."""
    if len(rows) and rows.dtype in (np.float32, np.float64):
        return cv2.transpose(rows)
    return np.ascontiguousarray(rows.T)


def cluster_embeddings(emb: np.ndarray, radius: float) -> np.ndarray:
    """Greedy seeded clustering of (n, d) embeddings: labels 0..k-1. The seed is the first unassigned row.

    Each cluster is the unassigned rows within ``radius`` of the mean of the unassigned rows within ``radius`` of
    the seed (one mean-shift step). The squared distances are computed for candidates only: the unassigned rows
    whose squared difference to the point in one coordinate (one of wide spread) is below ``radius**2``. That term is
    computed with the floats of :func:`_sq_dist` and the full sum of non-negative terms is never below one of them
    (rounding is monotonic), so a row that fails the pre-filter fails the exact test too: the labels are those of the
    plain form. The candidates' distances are computed on a column-major copy, vectorised along the rows (numpy's
    row-wise sum over 16 values is about 5x slower).
    """
    emb = np.ascontiguousarray(emb)  # (rows gathered from any layout are C-contiguous: the means keep their bits)
    n, d = emb.shape
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    r2 = radius * radius
    with np.errstate(invalid='ignore'):
        j = int(np.argmax(np.ptp(emb[::max(1, n // 256)], axis=0)))  # any coordinate is exact; a wide one is fast
    free = np.arange(n)  # the unassigned rows, in order
    key = emb[:, j].copy()  # their coordinate j

    def within(point: np.ndarray) -> np.ndarray:
        """Positions in ``free`` of the rows within ``radius`` of ``point``, ascending."""
        t = key - point[j:j + 1]  # term j of _sq_dist, bit for bit
        t *= t
        near = np.flatnonzero(t < r2)
        cols = _columns(emb.take(free[near], axis=0))
        return near[_sq_dist(cols, point, cols) < r2]

    k = 0
    while len(free):
        inside = within(emb[free[0]].copy())
        centre = _mean_rows(emb.take(free[inside], axis=0))  # one mean-shift step (the seed itself is always in)
        inside = within(centre)
        if not len(inside):
            inside = np.zeros(1, np.intp)
        labels[free[inside]] = k
        keep = np.ones(len(free), bool)
        keep[inside] = False
        free, key = free[keep], key[keep]
        k += 1
    return labels


def _csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, k: int) -> csr_matrix:
    """The (k, k) CSR matrix of distinct entries (rows, cols, data) in canonical form (columns ascending in each row),
    as ``coo_matrix(...).tocsr()`` makes it, at a fifth of the cost."""
    order = np.argsort(rows.astype(np.int64) * k + cols, kind='stable')  # (distinct keys; timsort takes their runs)
    indptr = np.zeros(k + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=k), out=indptr[1:])
    return csr_matrix((data[order], cols[order].astype(np.int32), indptr), shape=(k, k))


def _skeleton_graph(pixels: np.ndarray, owner: np.ndarray):
    """Sparse 8-neighbour graph (weights 1 / sqrt 2) over skeleton pixel coordinates (k, 2) (row, col); pixels of
    different owners are never joined. The neighbours at the four offsets are looked up at once in a flat index
    grid over the pixels' bounding box (edges offset by offset, pixels ascending, as one lookup per offset)."""
    k = len(pixels)
    rc = pixels - pixels.min(0) + 1  # a margin of one: a neighbour's key never wraps to another row
    h, width = rc.max(0) + 2
    key = rc[:, 0] * width + rc[:, 1]
    index = np.full(h * width, -1, np.intp)
    index[key] = np.arange(k)
    nb = index[key + np.array([dr * width + dc for dr, dc in _OFFSETS])[:, None]]  # (4, k)
    ok = nb >= 0
    ok &= owner[nb] == owner  # (where nb is -1, ok is already False)
    which, src = np.nonzero(ok)
    return _csr(src, nb[ok], _OFFSET_WEIGHTS[which], k)


def _trace(pred: list[int], start: int, end: int) -> list[int]:
    """The tree path from ``start`` to ``end``, following the predecessors (a list: indexing numpy arrays one element
    at a time costs several times more) back from ``end``."""
    path = [end]
    while end != start:
        end = pred[end]
        path.append(end)
    return path[::-1]


def _branches(tree, mains: dict[int, list[int]], comp: np.ndarray, min_branch: int) -> dict[int, list]:
    """The side branches of at least ``min_branch`` nodes of all trees at once: per tree ``c`` (main path
    ``mains[c]``), a list of (position on the main path where the branch leaves it, the branch's path from the node
    next to the main path to its farthest node), branches in the order of their smallest node.

    Removing the main paths from the (symmetric) tree leaves the branches as components; each is attached to its main
    path by one edge. The distances within a branch are path sums from that first node, as in a Dijkstra sweep on the
    branch alone; of the nodes at the largest distance, the first one is the end."""
    k = tree.shape[0]
    position = np.full(k, -1)  # each main-path node's position on its path
    for main in mains.values():
        position[main] = np.arange(len(main))
    off = position < 0
    if off.sum() < min_branch:
        return {}
    edges = tree.tocoo()
    inner = off[edges.row] & off[edges.col]
    sub = _csr(edges.row[inner], edges.col[inner], edges.data[inner], k)  # symmetric, as the tree
    _, lab = connected_components(sub, directed=False)
    size = np.bincount(lab[off], minlength=lab.max() + 1)
    attach = off[edges.row] & ~off[edges.col]  # (branch node, main node): one edge per branch
    first, at = edges.row[attach], edges.col[attach]
    big = size[lab[first]] >= min_branch
    first, at = first[big], at[big]
    if not len(first):
        return {}
    order = np.argsort(lab[first])  # the branches in the order of their smallest node (component label order)
    first, at = first[order], at[order]
    dist, pred, _ = dijkstra(sub, indices=first, return_predecessors=True, min_only=True)
    pred = pred.tolist()
    found: dict[int, list] = {}
    for start, m in zip(first.tolist(), at.tolist()):
        nodes = np.flatnonzero(lab == lab[start])
        end = int(nodes[np.argmax(dist[nodes])])
        found.setdefault(int(comp[start]), []).append((int(position[m]), _trace(pred, start, end)))
    return found


def _add_detours(main: list[int], detours: list) -> list[int]:
    """Insert the side branches (position on ``main``, path out) into the main path as out-and-back detours."""
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
    half = minimum_spanning_tree(_skeleton_graph(pixels, owner)).tocoo()
    tree = _csr(np.r_[half.row, half.col], np.r_[half.col, half.row], np.r_[half.data, half.data], len(pixels))
    n_comp, comp = connected_components(tree, directed=False)
    by_comp = np.argsort(comp, kind='stable')  # the nodes of each tree, ascending
    bounds = np.searchsorted(comp[by_comp], np.arange(n_comp + 1))
    starts = by_comp[bounds[:-1]]  # each tree's first node

    def farthest(dist):
        """Per tree, the first node at the largest distance from the tree's source."""
        own = dist[by_comp]  # the distances of each tree's nodes (ascending) from its own source
        top = np.repeat(np.maximum.reduceat(own, bounds[:-1]), np.diff(bounds))
        at = np.flatnonzero(own == top)
        return by_comp[at[np.searchsorted(at, bounds[:-1])]]
    # multi-source sweeps (min_only: each tree from its own source); the tree is symmetric, so the default directed
    # traversal is the undirected one without the transpose scipy would make
    ends_a = farthest(dijkstra(tree, indices=starts, min_only=True))
    d, pred, _ = dijkstra(tree, indices=ends_a, return_predecessors=True, min_only=True)
    ends_b = farthest(d)
    pred = pred.tolist()
    mains = {c: _trace(pred, a, b) for c, (a, b) in enumerate(zip(ends_a.tolist(), ends_b.tolist()))
             if bounds[c + 1] - bounds[c] > 1}
    detours = _branches(tree, mains, comp, min_branch)
    pixels = pixels.astype(np.float64)
    paths = [pixels[_add_detours(main, detours[c]) if c in detours else main] for c, main in mains.items()]
    return paths, [int(owner[by_comp[bounds[c]]]) for c in mains]


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


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    """The indices of each label's elements (labels >= 0), ascending, labels in increasing order (a stable sort;
    numpy radix-sorts 8 and 16 bit integers, about 3x faster than int64)."""
    if not len(labels):
        return []
    order = np.argsort(labels.astype(np.min_scalar_type(labels.max())), kind='stable')
    return np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)


def _instance_pieces(flat: np.ndarray, cluster: np.ndarray, shape: tuple[int, int], min_pixels: int,
                     groups: list[np.ndarray] | None = None):
    """The 8-connected pieces of each cluster of the pixels ``flat`` (raster indices, ascending) with at least
    ``min_pixels`` pixels, in the raster order of their first pixel (skimage's ``label`` order): a list of
    (cluster, padded crop of the piece's bounding box, row0, col0). Per cluster, on its bounding box padded by one
    pixel: a flood fill (8-connected) from its first pixel tells whether the cluster is one piece (the common case;
    the fill visits the piece's pixels only, while a labelling scans the whole box, in two threads); if not, one
    OpenCV labelling. Clusters smaller than ``min_pixels`` are skipped. A piece's first pixel in raster order is the
    first of its pixels in the top row of its bounding box. ``groups``: ``_groups(cluster)`` if the caller has it."""
    w = shape[1]
    found = []  # (first raster index, cluster, crop, row0, col0)
    for sel in _groups(cluster) if groups is None else groups:
        if len(sel) < min_pixels:
            continue
        f = flat[sel]  # ascending: sel is sorted within a cluster (stable sort)
        r, c = np.divmod(f, w)
        r0, c0 = int(r[0]) - 1, int(c.min()) - 1  # the box is padded by one pixel, as the crops
        box = np.zeros((int(r[-1]) - r0 + 2, int(c.max()) - c0 + 2), np.uint8)
        box[r - r0, c - c0] = 2
        k = int(cluster[sel[0]])
        seed = (int(c[0]) - c0, int(r[0]) - r0)  # (x, y) of the first pixel: its piece becomes 1
        if cv2.floodFill(box, None, seed, 1, 0, 0, 8 | cv2.FLOODFILL_FIXED_RANGE)[0] == len(sel):
            found.append((int(f[0]), k, box.view(bool), r0, c0))  # one piece (the cluster): its crop is the box
            continue
        _, lab, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8, ltype=cv2.CV_32S)
        for j in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_pixels) + 1:
            x, y, bw, bh = stats[j, :4].tolist()
            piece = lab[y:y + bh, x:x + bw] == j
            crop = np.zeros((bh + 2, bw + 2), bool)
            crop[1:-1, 1:-1] = piece
            first = (r0 + y) * w + c0 + x + int(np.argmax(piece[0]))  # the piece's first pixel is in its top row
            found.append((first, k, crop, r0 + y - 1, c0 + x - 1))
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


def _direction_bins(chains: list[np.ndarray], direction: np.ndarray) -> np.ndarray:
    """The argmax bin of the direction logits (K, H, W) at every point but the last of each polyline (row, col),
    concatenated: one gather for all polylines (the full argmax over the K planes would cost more than the whole
    vectorizer)."""
    k, h, w = direction.shape
    pts = np.concatenate([chain[:-1] for chain in chains])
    r = np.clip(np.round(pts[:, 0]).astype(int), 0, h - 1)
    c = np.clip(np.round(pts[:, 1]).astype(int), 0, w - 1)
    logits = direction[:, r, c]  # (K, M) gather: any strides, no copy of the whole array
    if logits.T.flags.c_contiguous and not (logits.dtype.kind == 'f' and np.isnan(logits).any()):
        return logits.T.argmax(1)  # numpy lays the gather out point-major: a row-wise argmax, the first maximum wins
    return argmax0(logits)  # (also where a NaN is: argmax0 skips it, numpy's argmax returns it)


def _orient(chains: list[np.ndarray], direction: np.ndarray | None, angle_classes: int) -> list[np.ndarray]:
    """Each polyline (row, col) reversed if its headings disagree with the predicted direction bins along it: the
    sum over its segments (from points whose bin is not 0, "no direction") of cos(heading - predicted) is negative.
    The headings and cosines of all polylines are computed at once; only the sums are taken per polyline."""
    if direction is None or not chains:
        return chains
    bins = _direction_bins(chains, direction)
    steps = np.concatenate([chain[1:] for chain in chains]) - np.concatenate([chain[:-1] for chain in chains])
    ok = bins > 0
    d = steps[ok]  # (np.diff of each polyline)
    heading = np.arctan2(d[:, 0], d[:, 1])  # pixel space: atan2(d row, d col), as the direction ground truth
    agree = np.cos(heading - (bins[ok] - 1) * (2 * np.pi / angle_classes))
    ends = np.r_[0, np.cumsum(ok)][np.cumsum([len(chain) - 1 for chain in chains])].tolist()  # each one's terms
    out, start = [], 0
    for chain, end in zip(chains, ends):
        out.append(chain[::-1] if end > start and agree[start:end].sum() < 0 else chain)
        start = end
    return out


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
    semantic = semantic if semantic.dtype == np.float32 else semantic.astype(np.float32)
    n_classes = len(semantic)
    if np.isfinite(semantic.sum()):
        # the class argmax of the logits is that of the softmax (exp and the division by one total are monotonic;
        # the two differ only where two logits are so close that their float32 exponentials are equal: the softmax's
        # argmax then takes the first class, this one the larger logit); the softmax itself (a tenth of the time) is
        # needed only at the classes' pixels, for the scores
        labels = argmax0(semantic, np.min_scalar_type(n_classes - 1))
        planes = semantic.reshape(n_classes, -1)
        class_prob = lambda c, flat: _softmax_at(planes, c, flat)  # noqa: E731
    else:  # a NaN or an infinite logit: the softmax of the whole grid, NaN pixels and all, as the plain form
        probs = softmax(semantic, 0)
        labels = argmax0(probs, np.min_scalar_type(n_classes - 1))
        class_prob = lambda c, flat: probs[c].ravel()[flat]  # noqa: E731
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
        if embedding is not None:
            if embedding.flags.c_contiguous:  # (n, D): a gather along the flat grid and OpenCV's transpose (1.2x)
                emb = _columns(embedding.reshape(len(embedding), -1).take(flat, axis=1).astype(np.float32,
                                                                                               copy=False))
            else:  # any layout, without a copy of the whole grid
                rows, cols = np.divmod(flat, w)
                emb = np.ascontiguousarray(embedding[:, rows, cols].T, dtype=np.float32)
            cluster = cluster_embeddings(emb, cfg.cluster_radius)
        else:
            cluster = np.zeros(len(flat), np.int64)
        members = _groups(cluster)  # (cluster k's pixels are members[k]: the labels are 0..K-1)
        classes.append((c, flat, members))
        for k, crop, r0, c0 in _instance_pieces(flat, cluster, (h, w), cfg.min_pixels, members):
            p = _skeleton_pixels(crop, r0, c0)
            owner.append(np.full(len(p), len(piece_cluster)))
            pix.append(p)
            piece_cluster.append((c, k))
    paths, owners = _forest_paths(np.concatenate(pix), np.concatenate(owner), cfg.min_branch) if pix else ([], [])
    by_cluster: dict[tuple[int, int], list[np.ndarray]] = {}
    for path, pid in zip(paths, owners):
        by_cluster.setdefault(piece_cluster[pid], []).append(path)
    found = []  # (class, pixel polyline (row, col), score)
    for c, flat, members in classes:
        score_px = class_prob(c, flat)
        for k in sorted(k for cc, k in by_cluster if cc == c):
            score = float(score_px[members[k]].mean())
            if score < cfg.min_score:
                continue
            for chain in _chain(by_cluster[c, k], max_gap_px):
                if _closes(chain) and np.abs(chain[0] - chain[-1]).max() > 0:
                    chain = np.vstack([chain, chain[:1]])
                found.append((c, chain, score))
    if not found:
        return []
    angle_classes = direction.shape[0] - 1 if direction is not None else 36
    chains = _orient([chain for _, chain, _ in found], direction, angle_classes)
    found = [(c, _simplify(chain, cfg.simplify), score) for (c, _, score), chain in zip(found, chains)]
    pix = np.concatenate([chain for _, chain, _ in found])
    x, y = pixel_to_metres(grid, pix[:, 1], pix[:, 0])  # one call for all polylines
    xy = np.split(np.stack([x, y], 1), np.cumsum([len(chain) for _, chain, _ in found])[:-1])
    return [MapVector(c, pts, score) for (c, _, score), pts in zip(found, xy)]
