"""Compiled loops of the vectorizer (numba): the greedy embedding clustering, the skeleton thinning and the sweeps
over the skeleton trees.

Why compiled code of our own: each of these is a loop whose step depends on the one before (a cluster removes rows
from the next seed's candidates; a thinning pass works on the last pass's image; a tree walk follows its edges), so
numpy can only run it as many small calls, and at the paper grid those calls' overhead was most of the vectorizer's
time (``mapkd_core/eval/vectorize.py``, third round). No library fits: scikit-learn's clusterers are not this
greedy seeded clustering, scikit-image thins one image per call (a Python call and a full scan of the bounding box per
pass for each instance), scipy's graph routines build a matrix per call. numba compiles the plain loops; every
kernel computes exactly what its plain form defines, with the same floating-point operations in the same order
(``test/test_vectorize_fast.py`` holds each one against that form, bit for bit), and ``cache=True`` keeps the
machine code on disk beside this file (or in numba's user cache when that folder is read-only), so only the first
use on a machine compiles (a few seconds).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, error_model='numpy')  # numpy's float semantics: 0 / 0 is NaN, not an exception


@njit(**_JIT)
def _row_sq_dist(emb, i, point, sq):
    """``((emb[i] - point) ** 2).sum()`` with numpy's bits: its pairwise summation of a contiguous row (below 8
    values one after the other; else 8 interleaved partial sums, a tree over them, then the rest), in the input's
    float type. ``sq``: scratch of the row's length."""
    d = emb.shape[1]
    for j in range(d):
        t = emb[i, j] - point[j]
        sq[j] = t * t
    if d < 8:
        total = sq[0]
        for j in range(1, d):
            total += sq[j]
        return total
    full = d - d % 8
    r0, r1, r2, r3, r4, r5, r6, r7 = sq[0], sq[1], sq[2], sq[3], sq[4], sq[5], sq[6], sq[7]
    for b in range(8, full, 8):
        r0 += sq[b]
        r1 += sq[b + 1]
        r2 += sq[b + 2]
        r3 += sq[b + 3]
        r4 += sq[b + 4]
        r5 += sq[b + 5]
        r6 += sq[b + 6]
        r7 += sq[b + 7]
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for j in range(full, d):
        total += sq[j]
    return total


@njit(**_JIT)
def _members_mean(emb, rows, m, out):
    """The mean of the rows ``emb[rows[:m]]``: added one after the other, then divided by ``m`` in the rows' type;
    these are the bits of ``emb[rows].mean(0)`` for more than one column (numpy adds the rows in order; a single
    column it sums pairwise, which this does not copy). No rows: NaN, as numpy's mean."""
    d = emb.shape[1]
    for j in range(d):
        out[j] = 0
    for i in range(m):
        r = rows[i]
        for j in range(d):
            out[j] += emb[r, j]
    mm = emb.dtype.type(m)
    for j in range(d):
        out[j] = out[j] / mm
    return out


@njit(**_JIT)
def _within(emb, free, n_free, point, key_j, r2, sq, hits):
    """Into ``hits``: the rows of ``free[:n_free]`` (ascending) within the radius of ``point``: squared distance
    below ``r2``; their count is returned. A row is first tested on coordinate ``key_j`` alone: the full sum of
    non-negative terms is never below one of them (rounding is monotonic), so a row that fails that test fails the
    exact one too."""
    m = 0
    pj = point[key_j]
    for p in range(n_free):
        i = free[p]
        t = emb[i, key_j] - pj
        if not t * t < r2:
            continue
        if _row_sq_dist(emb, i, point, sq) < r2:
            hits[m] = i
            m += 1
    return m


@njit(**_JIT)
def cluster_rows(emb, r2, key_j):
    """The greedy seeded clustering of :func:`mapkd_core.eval.vectorize.cluster_embeddings` on C-contiguous (n, d)
    float32 / float64 rows; ``r2``: the squared radius in the rows' type; ``key_j``: the pre-filter coordinate."""
    n, d = emb.shape
    labels = np.full(n, -1, np.int64)
    free = np.arange(n)
    hits = np.empty(n, np.int64)
    sq = np.empty(max(d, 1), emb.dtype)
    seed = np.empty(d, emb.dtype)
    centre = np.empty(d, emb.dtype)
    n_free = n
    k = 0
    while n_free:
        for j in range(d):
            seed[j] = emb[free[0], j]
        m = _within(emb, free, n_free, seed, key_j, r2, sq, hits)
        _members_mean(emb, hits, m, centre)  # one mean-shift step (the seed itself is in, unless NaN)
        m = _within(emb, free, n_free, centre, key_j, r2, sq, hits)
        if m == 0:
            hits[0] = free[0]
            m = 1
        for q in range(m):
            labels[hits[q]] = k
        kept = 0
        for p in range(n_free):  # both ascending: drop the hits from the free rows
            if labels[free[p]] < 0:
                free[kept] = free[p]
                kept += 1
        n_free = kept
        k += 1
    return labels



@njit(**_JIT)
def _find(parent, i):
    """The root of ``i`` in a union-find forest, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(**_JIT)
def _sweep(adj_ptr, adj, adj_w, source, nodes_of_tree, dist, pred, stack, allowed):
    """Path sums from ``source`` over its tree (a depth-first walk: in a tree each node's distance is its parent's
    plus the edge, the sum Dijkstra forms too), into ``dist`` and ``pred``; only nodes with ``allowed`` are entered.
    The visited nodes go to ``nodes_of_tree``; their count is returned."""
    dist[source] = 0.0
    pred[source] = -1
    stack[0] = source
    top, count = 1, 0
    while top:
        top -= 1
        u = stack[top]
        nodes_of_tree[count] = u
        count += 1
        for e in range(adj_ptr[u], adj_ptr[u + 1]):
            v = adj[e]
            if v != pred[u] and allowed[v]:
                dist[v] = dist[u] + adj_w[e]
                pred[v] = u
                stack[top] = v
                top += 1
    return count


@njit(**_JIT)
def _farthest(nodes, count, dist):
    """Of ``nodes[:count]``, the smallest node at the largest distance."""
    best = nodes[0]
    for q in range(1, count):
        v = nodes[q]
        if dist[v] > dist[best] or (dist[v] == dist[best] and v < best):
            best = v
    return best


@njit(**_JIT)
def forest_paths(rc, owner, min_branch):
    """The polylines of skeleton pixels ``rc`` (k, 2) (row, col; each owner's pixels in raster order) as node index
    sequences: see :func:`mapkd_core.eval.vectorize._forest_paths` for their definition. Returns (nodes of all paths
    concatenated, the start of each path in it plus the end, each path's owner), paths in the order of their trees'
    smallest node.

    The pixel graph joins 8-neighbours of one owner (weights 1 and sqrt 2); its minimum spanning forest is Kruskal's
    with the edges sorted stably by weight, as scipy's ``minimum_spanning_tree`` (edges in CSR order: by pixel, then
    by neighbour): an edge is kept when its two ends are not yet joined. The longest path of a tree runs between the
    smallest farthest node from the tree's smallest node and the smallest farthest node from that one; the side
    branches of at least ``min_branch`` nodes hang off it as out-and-back detours."""
    k = rc.shape[0]
    # the pixels' neighbours at the four forward offsets (0, 1), (1, -1), (1, 0), (1, 1): a flat index over the
    # bounding box with a margin of one, so that a neighbour's key never wraps to another row
    r_min, c_min, r_max, c_max = rc[0, 0], rc[0, 1], rc[0, 0], rc[0, 1]
    for i in range(k):
        r_min, r_max = min(r_min, rc[i, 0]), max(r_max, rc[i, 0])
        c_min, c_max = min(c_min, rc[i, 1]), max(c_max, rc[i, 1])
    width = c_max - c_min + 3
    index = np.full((r_max - r_min + 3) * width, -1, np.int64)
    key = np.empty(k, np.int64)
    for i in range(k):
        key[i] = (rc[i, 0] - r_min + 1) * width + rc[i, 1] - c_min + 1
        index[key[i]] = i
    steps = np.array([1, width - 1, width, width + 1])
    nb = np.full((k, 4), -1, np.int64)
    for i in range(k):
        for o in range(4):
            j = index[key[i] + steps[o]]
            if j >= 0 and owner[j] == owner[i]:
                nb[i, o] = j
    # Kruskal: the weight-1 edges (offsets 0 and 2) in CSR order, then the sqrt-2 ones (offsets 1 and 3)
    parent = np.arange(k)
    deg = np.zeros(k + 1, np.int64)
    kept = np.zeros((k, 4), np.bool_)
    for diagonal in (False, True):
        for i in range(k):
            for o in range(4):
                if (o % 2 == 1) != diagonal or nb[i, o] < 0:
                    continue
                a, b = _find(parent, i), _find(parent, nb[i, o])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                    kept[i, o] = True
                    deg[i + 1] += 1
                    deg[nb[i, o] + 1] += 1
    # the forest's adjacency (both directions)
    adj_ptr = np.cumsum(deg)
    fill = adj_ptr[:-1].copy()
    adj = np.empty(adj_ptr[k], np.int64)
    adj_w = np.empty(adj_ptr[k], np.float64)
    root2 = np.sqrt(2.0)
    for i in range(k):
        for o in range(4):
            if kept[i, o]:
                j = nb[i, o]
                w = root2 if o % 2 == 1 else 1.0
                adj[fill[i]], adj_w[fill[i]] = j, w
                fill[i] += 1
                adj[fill[j]], adj_w[fill[j]] = i, w
                fill[j] += 1
    # per tree (in the order of its smallest node): the main path, then its branches
    dist = np.zeros(k, np.float64)
    pred = np.full(k, -1, np.int64)
    bdist = np.zeros(k, np.float64)
    bpred = np.full(k, -1, np.int64)
    stack = np.empty(k, np.int64)
    nodes = np.empty(k, np.int64)
    bnodes = np.empty(k, np.int64)
    seen = np.zeros(k, np.bool_)
    everywhere = np.ones(k, np.bool_)
    off = np.ones(k, np.bool_)  # not on a main path
    position = np.full(k, -1, np.int64)
    done = np.zeros(k, np.bool_)  # off-path nodes whose branch has been walked
    out = np.empty(4 * k + 8, np.int64)  # (a detour adds at most twice its nodes, plus one per branch)
    starts = [0]
    owners = [owner[0]]
    owners.pop()  # (a typed empty list)
    n_out = 0
    for s in range(k):
        if seen[s]:
            continue
        count = _sweep(adj_ptr, adj, adj_w, s, nodes, dist, pred, stack, everywhere)
        for q in range(count):
            seen[nodes[q]] = True
        if count < 2:
            continue
        a = _farthest(nodes, count, dist)
        _sweep(adj_ptr, adj, adj_w, a, nodes, dist, pred, stack, everywhere)
        b = _farthest(nodes, count, dist)
        main = [b]
        while main[-1] != a:
            main.append(pred[main[-1]])
        main = main[::-1]
        for p, v in enumerate(main):
            off[v] = False
            position[v] = p
        # the branches: the components of the tree without its main path, each attached by one edge; in the order
        # of their smallest node; each is walked from its node next to the path to its smallest farthest node
        branches = []  # (position on the main path, path out)
        order = np.sort(nodes[:count])
        for v in order:
            if not off[v] or done[v]:
                continue
            # the component of v among the off-path nodes: mark it, find its attachment
            bcount = _sweep(adj_ptr, adj, adj_w, v, bnodes, bdist, bpred, stack, off)
            first, at = -1, -1
            for q in range(bcount):
                u = bnodes[q]
                for e in range(adj_ptr[u], adj_ptr[u + 1]):
                    if not off[adj[e]]:
                        first, at = u, adj[e]
            for q in range(bcount):
                done[bnodes[q]] = True
            if bcount < min_branch or first < 0:
                continue
            bcount = _sweep(adj_ptr, adj, adj_w, first, bnodes, bdist, bpred, stack, off)
            end = _farthest(bnodes, bcount, bdist)
            path = [end]
            while path[-1] != first:
                path.append(bpred[path[-1]])
            branches.append((position[at], path[::-1]))
        # the sequence: at each main node, its detours (the later branch first), each returning to the node
        for p in range(len(main)):
            out[n_out] = main[p]
            n_out += 1
            for q in range(len(branches) - 1, -1, -1):
                if branches[q][0] != p:
                    continue
                path = branches[q][1]
                for v in path:
                    out[n_out] = v
                    n_out += 1
                for t in range(len(path) - 2, -1, -1):
                    out[n_out] = path[t]
                    n_out += 1
                out[n_out] = main[p]
                n_out += 1
        starts.append(n_out)
        owners.append(owner[s])
    return out[:n_out].copy(), np.array(starts, np.int64), np.array(owners, np.int64)


@njit(**_JIT)
def gather_rows(planes, flat):
    """The (n, D) float32 rows ``planes[:, flat]`` of (D, H, W) planes (any strides) at the raster indices
    ``flat``: each pixel's D values side by side, as the clustering reads them."""
    d, _, w = planes.shape
    n = flat.shape[0]
    out = np.empty((n, d), np.float32)
    for i in range(n):
        r, c = flat[i] // w, flat[i] % w
        for j in range(d):
            out[i, j] = planes[j, r, c]
    return out


@njit(**_JIT)
def argmax_at(planes, rows, cols):
    """The index of the largest of the K values ``planes[:, rows[i], cols[i]]`` at each point (planes (K, H, W), any
    strides), the first of equal ones, plane by plane as :func:`mapkd_core.eval.vectorize.argmax0`: a NaN is never
    the maximum and no later plane wins after it (``np.maximum`` carries the NaN on)."""
    k = planes.shape[0]
    m = rows.shape[0]
    idx = np.zeros(m, np.int64)
    for i in range(m):
        r, c = rows[i], cols[i]
        best = planes[0, r, c]
        for p in range(1, k):
            v = planes[p, r, c]
            if v > best:
                best = v
                idx[i] = p
            elif v != v:
                best = v
    return idx


def _guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """The deletion tables of Guo and Hall's two-subiteration thinning (Comm. ACM 32(3), 1989, algorithm A1), indexed
    by the 8-neighbourhood x1..x8 as bits 0..7, counter-clockwise from the east: x1 = E, x2 = NE, x3 = N, x4 = NW,
    x5 = W, x6 = SW, x7 = S, x8 = SE. A pixel is deleted in a subiteration when

    - G1: its crossing number is one: exactly one i in 1..4 with x(2i-1) off and x(2i) or x(2i+1) on (x9 = x1);
    - G2: 2 <= min(N1, N2) <= 3, N1 counting the pairs x(2k-1) | x(2k), N2 the pairs x(2k) | x(2k+1), k = 1..4;
    - G3 in the first subiteration: not ((x2 | x3 | ~x8) & x1); G3' in the second: not ((x6 | x7 | ~x4) & x5).
    """
    first, second = np.zeros(256, np.bool_), np.zeros(256, np.bool_)
    for n in range(256):
        x = [bool(n >> i & 1) for i in range(8)]  # x[0] is x1
        crossings = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[(i + 2) % 8]))
        n1 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[k - 1])
        n2 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[(k + 1) % 8])
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[n] = g12 and not ((x[1] or x[2] or not x[7]) and x[0])
        second[n] = g12 and not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


GUO_HALL_FIRST, GUO_HALL_SECOND = _guo_hall_tables()


@njit(**_JIT)
def _neighbourhood(img, r, c):
    """The 8-neighbourhood of (r, c) as bits 0..7: E, NE, N, NW, W, SW, S, SE."""
    return (img[r, c + 1] | img[r - 1, c + 1] << 1 | img[r - 1, c] << 2 | img[r - 1, c - 1] << 3
            | img[r, c - 1] << 4 | img[r + 1, c - 1] << 5 | img[r + 1, c] << 6 | img[r + 1, c + 1] << 7)


@njit(**_JIT)
def thin(crop, first_table, second_table):
    """The (k, 2) (row, col) pixels, in raster order, left by Guo and Hall's thinning of the binary image ``crop``
    (nonzero: foreground; its border rows and columns must be background), as ``skimage.morphology.thin`` computes
    it: each subiteration deletes at once every pixel whose neighbourhood, as the image was at its start, its table
    marks; the two subiterations repeat until neither deletes a pixel. Only the pixels still in the foreground are
    visited (scikit-image correlates the whole image twice per iteration)."""
    h, w = crop.shape
    img = np.zeros((h, w), np.uint8)
    n = 0
    for r in range(h):
        for c in range(w):
            if crop[r, c]:
                img[r, c] = 1
                n += 1
    rows = np.empty(n, np.int64)
    cols = np.empty(n, np.int64)
    q = 0
    for r in range(h):
        for c in range(w):
            if img[r, c]:
                rows[q], cols[q] = r, c
                q += 1
    delete = np.zeros(n, np.bool_)
    changed = True
    while changed:
        changed = False
        for table in (first_table, second_table):
            hit = False
            for q in range(n):
                if table[_neighbourhood(img, rows[q], cols[q])]:
                    delete[q] = True
                    hit = True
            if not hit:
                continue
            changed = True
            kept = 0
            for q in range(n):
                if delete[q]:
                    img[rows[q], cols[q]] = 0
                    delete[q] = False
                else:
                    rows[kept], cols[kept] = rows[q], cols[q]
                    kept += 1
            n = kept
    out = np.empty((n, 2), np.int64)
    out[:, 0] = rows[:n]
    out[:, 1] = cols[:n]
    return out
