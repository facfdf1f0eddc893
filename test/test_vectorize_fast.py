"""The vectorizer's fast building blocks (numpy and the compiled kernels of ``mapkd_core/eval/kernels.py``) give exactly
what their plain numpy / scipy / scikit-image forms give, bit for bit; these pin the pieces that could drift."""
import cv2
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree, shortest_path
from skimage.measure import label
from skimage.morphology import skeletonize, thin

from mapkd_core.eval.kernels import GUO_HALL_FIRST, GUO_HALL_SECOND, _members_mean, _row_sq_dist, argmax_at, gather_rows
from mapkd_core.eval.vectorize import (_direction_bins, _forest_paths, _groups, _instance_pieces, _orient,
                                       _skeleton_pixels, _softmax_at, argmax0, cluster_embeddings, softmax, vectorize)


def test_argmax0_equals_numpy_including_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (37, 20, 30)).astype(np.float32)  # many ties: the first maximum must win
    assert np.array_equal(argmax0(a), a.argmax(0))
    b = rng.normal(size=(4, 200, 400)).astype(np.float32)
    assert np.array_equal(argmax0(b), b.argmax(0))


@pytest.mark.parametrize('d', [3, 8, 16, 20, 40])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_row_sq_dist_has_the_bits_of_the_row_wise_sum(d, dtype):
    rng = np.random.default_rng(d)
    x = (rng.normal(size=(500, d)) * 4).astype(dtype)
    expected = ((x - x[7]) ** 2).sum(1)
    sq = np.empty(d, dtype)
    got = np.array([_row_sq_dist(x, i, x[7], sq) for i in range(len(x))], dtype)
    assert np.array_equal(got, expected)


def reference_clustering(emb, radius):
    """The greedy seeded clustering in its plain form (the vectorizer's definition)."""
    labels = np.full(len(emb), -1, np.int64)
    k = 0
    while (labels < 0).any():
        free = np.nonzero(labels < 0)[0]
        members = free[((emb[free] - emb[free[0]]) ** 2).sum(1) < radius ** 2]
        centre = emb[members].mean(0)
        members = free[((emb[free] - centre) ** 2).sum(1) < radius ** 2]
        labels[members if len(members) else free[:1]] = k
        k += 1
    return labels


@pytest.mark.parametrize('noise', [0.05, 0.3, 0.6])
def test_cluster_embeddings_equals_the_plain_form(noise):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16)) * 3
    emb = (centres[rng.integers(0, 6, 3000)] + rng.normal(size=(3000, 16)) * noise).astype(np.float32)
    got = cluster_embeddings(emb, 1.5)
    assert np.array_equal(got, reference_clustering(emb, 1.5))
    assert got.max() >= 5  # the six instances (and, with more noise, stray points) are found


def _blobs(rng, shape):
    """Blobs and bands of five clusters that touch and overlap: clusters in several pieces."""
    cl = np.zeros(shape, np.int64)
    for j in range(15):
        r, c = rng.integers(0, 50), rng.integers(0, 80)
        cl[r:r + rng.integers(3, 15), c:c + rng.integers(3, 40)] = j % 5 + 1
    cl[rng.random(shape) < 0.05] = 0
    return cl


def _lines(rng, shape):
    """Thick lines, one cluster each (one piece: the flood-fill path), some on the border, and a cluster in one big
    and one small piece."""
    cl = np.zeros(shape, np.uint8)
    for j in range(4):
        p = rng.integers(0, [shape[1], shape[0]], (2, 2))
        cv2.line(cl, tuple(map(int, p[0])), tuple(map(int, p[1])), j + 1, 3)
    cl[0, 10:40] = 5
    cl[-2:, 50:80] = 6
    cl[30:33, 0:20] = 7
    cl[40:42, 85:87] = 7  # a small second piece of cluster 7 (dropped)
    return cl.astype(np.int64)


@pytest.mark.parametrize('scene', [_blobs, _lines])
def test_instance_pieces_are_skimage_label_pieces_in_its_order(scene):
    rng = np.random.default_rng(2)
    shape = (60, 90)
    cl = scene(rng, shape)
    flat = np.flatnonzero(cl)
    _, cluster = np.unique(cl.ravel()[flat], return_inverse=True)  # labels 0..K-1
    pieces = _instance_pieces(flat, cluster, shape, min_pixels=5)
    ref = label(cl, background=0, connectivity=2)
    sizes = np.bincount(ref.ravel())
    expected = [i for i in range(1, ref.max() + 1) if sizes[i] >= 5]
    assert len(pieces) == len(expected) > 5
    for (k, crop, r0, c0), i in zip(pieces, expected):
        mask = np.zeros((shape[0] + 2, shape[1] + 2), bool)  # crops are padded by one pixel
        mask[r0 + 1:r0 + 1 + crop.shape[0], c0 + 1:c0 + 1 + crop.shape[1]] = crop
        assert crop.dtype == bool and np.array_equal(mask[1:-1, 1:-1], ref == i)
        assert k == cluster[np.searchsorted(flat, np.flatnonzero(ref == i)[0])]


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('channels', [2, 4, 37])
def test_softmax_plane_by_plane_has_the_bits_of_the_reductions(dtype, channels):
    x = (np.random.default_rng(channels).normal(size=(channels, 20, 30)) * 5).astype(dtype)
    expected = np.exp(x - x.max(0, keepdims=True))
    expected /= expected.sum(0, keepdims=True)
    got = softmax(x, 0)
    assert got.dtype == dtype and np.array_equal(got, expected)


def test_class_argmax_of_the_logits_and_scores_at_the_pixels_equal_the_softmax_of_the_grid():
    """vectorize takes the class argmax of the logits and the softmax only at the polylines' pixels: the same labels
    as the argmax of the whole grid's softmax, the same probability bits."""
    x = (np.random.default_rng(3).normal(size=(4, 50, 60)) * 3).astype(np.float32)
    probs = softmax(x, 0)
    assert np.array_equal(argmax0(x, np.uint8), argmax0(probs, np.uint8))
    planes = x.reshape(4, -1)
    for c in range(4):
        flat = np.flatnonzero(argmax0(x, np.uint8) == c)
        assert len(flat) and np.array_equal(_softmax_at(planes, c, flat), probs[c].ravel()[flat])


def test_vectorize_with_a_nan_logit_treats_that_pixel_as_the_plain_form_does():
    """A NaN logit makes the pixel's softmax NaN (background for the argmax): vectorize falls back to the whole
    grid's softmax there, so a NaN inside a line does not turn that pixel into another class."""
    from mapkd_core.config import GridConfig
    grid = GridConfig()
    sem = np.zeros((4, *grid.shape), np.float32)
    sem[0] = 5.0
    sem[1, 100, 50:350], sem[0, 100, 50:350] = 10.0, 0.0  # one divider row
    clean = vectorize(sem, None, None, grid)
    assert len(clean) == 1 and clean[0].cls == 1
    nan = sem.copy()
    nan[3, 100, 50:200] = np.nan  # half the line: NaN in the boundary plane -> background in the plain form
    cut = vectorize(nan, None, None, grid)
    assert len(cut) == 1 and cut[0].cls == 1
    length = lambda v: np.linalg.norm(np.diff(v.points, axis=0), axis=1).sum()  # noqa: E731
    assert 0.4 < length(cut[0]) / length(clean[0]) < 0.6  # only the finite half is left


@pytest.mark.parametrize('dtype', [np.intp, np.uint8])
def test_argmax0_skips_nan_like_the_masked_form(dtype):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, (5, 20, 30)).astype(np.float32)
    a[rng.random(a.shape) < 0.05] = np.nan
    best, expected = a[0].copy(), np.zeros(a.shape[1:], np.intp)  # the plain plane-by-plane form
    for k in range(1, len(a)):
        greater = a[k] > best
        expected[greater] = k
        np.maximum(best, a[k], out=best)
    got = argmax0(a, dtype)
    assert got.dtype == dtype and np.array_equal(got, expected)


@pytest.mark.parametrize('d', [2, 3, 16, 33])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_members_mean_has_the_bits_of_numpy_mean(d, dtype):
    rng = np.random.default_rng(d)
    for m in (1, 2, 7, 100, 3000, 20000):
        rows = (rng.normal(size=(m, d)) * 10 + 3).astype(dtype)
        pick = np.sort(rng.choice(m, max(1, m // 2), replace=False))
        got = _members_mean(rows, pick, len(pick), np.empty(d, dtype))
        assert got.dtype == dtype and np.array_equal(got, rows[pick].mean(0))
    assert np.isnan(_members_mean(rows, pick, 0, np.empty(d, dtype))).all()  # no rows: NaN, as numpy's mean


@pytest.mark.filterwarnings('ignore:Mean of empty slice', 'ignore:invalid value encountered')  # (NaN seeds)
@pytest.mark.parametrize('noise', [0.05, 0.5])
def test_cluster_embeddings_equals_the_plain_form_in_other_types_and_with_nan(noise):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 3)) * 3
    emb = centres[rng.integers(0, 5, 1500)] + rng.normal(size=(1500, 3)) * noise  # float64, d < 8
    emb[rng.random(1500) < 0.01, 1] = np.nan
    assert np.array_equal(cluster_embeddings(emb, 1.5), reference_clustering(emb, 1.5))
    f32 = np.asfortranarray(emb.astype(np.float32))  # any layout
    assert np.array_equal(cluster_embeddings(f32, 1.5), reference_clustering(np.ascontiguousarray(f32), 1.5))


def test_groups_equal_their_plain_form():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 300, 5000)
    for k, group in zip(np.unique(labels), _groups(labels)):
        assert np.array_equal(group, np.flatnonzero(labels == k))


def _skeleton_graph_plain(pixels, owner):
    """The 8-neighbour pixel graph (weights 1 and sqrt 2) of pixels of one owner, each edge once, in CSR form."""
    where = {tuple(p): i for i, p in enumerate(pixels.tolist())}
    rows, cols, data = [], [], []
    for i, (r, c) in enumerate(pixels.tolist()):
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            j = where.get((r + dr, c + dc))
            if j is not None and owner[j] == owner[i]:
                rows.append(i)
                cols.append(j)
                data.append(np.hypot(dr, dc))
    return coo_matrix((data, (rows, cols)), shape=(len(pixels), len(pixels))).tocsr()


def _trace_plain(pred, start, end):
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return path[::-1]


def _forest_paths_plain(pixels, owner, min_branch):
    """One tree at a time: two Dijkstra sweeps each, the side branches of each tree by slicing the sparse tree."""
    tree = minimum_spanning_tree(_skeleton_graph_plain(pixels, owner))
    tree = (tree + tree.T).tocsr()
    n_comp, comp = connected_components(tree, directed=False)
    paths, ids = [], []
    for c in range(n_comp):
        nodes = np.flatnonzero(comp == c)
        if len(nodes) < 2:
            continue
        d = shortest_path(tree, directed=False, indices=nodes[0])
        a = int(nodes[np.argmax(d[nodes])])
        d, pred = shortest_path(tree, directed=False, indices=a, return_predecessors=True)
        main = _trace_plain(pred, a, int(nodes[np.argmax(d[nodes])]))
        left = np.setdiff1d(nodes, main)
        if len(left) >= min_branch:
            sub = tree[left][:, left]
            n_left, lab = connected_components(sub, directed=False)
            link = tree[left][:, main].tocoo()
            detours = []
            for k in range(n_left):
                piece = np.flatnonzero(lab == k)
                e = np.flatnonzero(np.isin(link.row, piece))
                if len(piece) < min_branch or len(e) == 0:
                    continue
                start, at = int(link.row[e[0]]), int(link.col[e[0]])
                d, pred = shortest_path(sub, directed=False, indices=start, return_predecessors=True)
                end = int(np.argmax(np.where(lab == k, d, -1)))
                detours.append((at, [int(left[n]) for n in _trace_plain(pred, start, end)]))
            for at, out in sorted(detours, key=lambda t: -t[0]):
                main = main[:at + 1] + out + out[-2::-1] + main[at:]
        paths.append(pixels[np.array(main)].astype(np.float64))
        ids.append(int(owner[nodes[0]]))
    return paths, ids


@pytest.mark.parametrize('min_branch', [1, 3, 10])
def test_forest_paths_equal_the_plain_tree_by_tree_form(min_branch):
    rng = np.random.default_rng(min_branch)
    for trial in range(30):
        h, w = rng.integers(5, 50, 2)
        if trial % 2:  # random pixels: bushy trees with many branches
            pixels = np.argwhere(rng.random((h, w)) < rng.uniform(0.2, 0.7))
        else:  # skeletons of thick lines
            img = np.zeros((h, w), np.uint8)
            for _ in range(3):
                p = rng.integers(0, [w, h], (2, 2))
                cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), 1, int(rng.integers(1, 5)))
            pixels = np.argwhere(skeletonize(img.astype(bool)))
        if len(pixels) < 2:
            continue
        owner = rng.integers(0, 3, len(pixels))
        got, expected = _forest_paths(pixels, owner, min_branch), _forest_paths_plain(pixels, owner, min_branch)
        assert got[1] == expected[1] and len(got[0]) == len(expected[0])
        for a, b in zip(got[0], expected[0]):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def _orient_plain(pts, bins, angle_classes):
    ok = bins > 0
    if len(pts) < 2 or not ok.any():
        return pts
    d = np.diff(pts, axis=0)[ok]
    predicted = (bins[ok] - 1) * (2 * np.pi / angle_classes)
    return pts[::-1] if np.cos(np.arctan2(d[:, 0], d[:, 1]) - predicted).sum() < 0 else pts


def test_orientation_of_all_polylines_at_once_equals_one_at_a_time():
    rng = np.random.default_rng(6)
    for trial in range(50):
        direction = rng.normal(size=(37, 30, 40)).astype(np.float32)
        if trial % 3 == 0:
            direction[rng.random(direction.shape) < 0.02] = np.nan  # argmax0's NaN rule, not numpy's
        chains = [np.cumsum(rng.integers(-1, 2, (int(rng.integers(1, 30)), 2)), 0).astype(np.float64)
                  + rng.integers(0, [30, 40]) for _ in range(int(rng.integers(1, 6)))]
        pts = np.concatenate([c[:-1] for c in chains])
        r, c = np.clip(np.round(pts[:, 0]).astype(int), 0, 29), np.clip(np.round(pts[:, 1]).astype(int), 0, 39)
        bins = argmax0(direction[:, r, c])
        assert np.array_equal(_direction_bins(chains, direction), bins)
        split = np.split(bins, np.cumsum([len(c) - 1 for c in chains])[:-1])
        for got, chain, b in zip(_orient(chains, direction, 36), chains, split):
            assert np.array_equal(got, _orient_plain(chain, b, 36))


def _random_shapes(rng, n):
    """Binary images: noise, thick lines and filled ellipses (blobs, bands, crossings, holes)."""
    for t in range(n):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        if t % 3 == 0:
            yield rng.random((h, w)) < rng.uniform(0.3, 0.9)
            continue
        img = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            if t % 3 == 1:
                p = rng.integers(0, [w, h], (2, 2))
                cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), 1, int(rng.integers(1, 6)))
            else:
                cv2.ellipse(img, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                            (int(rng.integers(1, 20)), int(rng.integers(1, 20))), float(rng.uniform(0, 180)), 0, 360,
                            1, -1)
        yield img.astype(bool)


def test_guo_hall_tables_are_scikit_images():
    from skimage.morphology._skeletonize import G123_LUT, G123P_LUT  # (private: our tables come from the paper)
    assert np.array_equal(GUO_HALL_FIRST, G123_LUT.astype(bool))
    assert np.array_equal(GUO_HALL_SECOND, G123P_LUT.astype(bool))


def test_compiled_thinning_equals_scikit_image_thin():
    rng = np.random.default_rng(11)
    for mask in _random_shapes(rng, 600):
        got = np.zeros(mask.shape, bool)
        pixels = _skeleton_pixels(np.pad(mask, 1), -1, -1)  # (row0 = col0 = -1: the pad's offset)
        got[pixels[:, 0], pixels[:, 1]] = True
        assert np.array_equal(got, thin(mask))
        assert np.array_equal(pixels, np.argwhere(got))  # raster order
    assert len(_skeleton_pixels(np.zeros((5, 5), bool), 0, 0)) == 0


def test_gather_rows_and_argmax_at_equal_numpy_in_any_layout():
    rng = np.random.default_rng(12)
    planes = rng.integers(0, 4, (37, 30, 50)).astype(np.float32)  # many ties: the first maximum wins
    planes[5, 3, 4] = np.nan  # a NaN: never the maximum, and no later plane wins after it (as argmax0)
    planes[0, 7, 9] = np.nan
    flat = np.sort(rng.choice(30 * 50, 400, replace=False))
    flat[:2] = [3 * 50 + 4, 7 * 50 + 9]
    rows, cols = np.divmod(flat, 50)
    for layout in (planes, np.asfortranarray(planes), planes.astype(np.float64), planes[:, ::-1, :]):
        expected = layout.reshape(37, -1)[:, flat] if layout.flags.c_contiguous else layout[:, rows, cols]
        assert np.array_equal(gather_rows(layout, flat), expected.T.astype(np.float32), equal_nan=True)
        assert np.array_equal(argmax_at(layout, rows, cols), argmax0(layout[:, rows, cols]))


def test_compile_kernels_reaches_every_kernel_for_float32_outputs():
    import subprocess
    import sys
    code = ('from mapkd_core.config import GridConfig\n'
            'from mapkd_core.eval import kernels\n'
            'from mapkd_core.eval.vectorize import compile_kernels\n'
            'compile_kernels(GridConfig())\n'
            'for name in ("cluster_rows", "thin", "forest_paths", "gather_rows", "argmax_at"):\n'
            '    sigs = [str(s) for s in getattr(kernels, name).signatures]\n'
            '    print(name, len(sigs), any("float32" in s or "uint8" in s or "int64" in s for s in sigs))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=True).stdout
    lines = dict((line.split()[0], line.split()[1:]) for line in out.splitlines())
    assert set(lines) == {'cluster_rows', 'thin', 'forest_paths', 'gather_rows', 'argmax_at'}
    assert all(int(n) >= 1 and ok == 'True' for n, ok in lines.values()), out
