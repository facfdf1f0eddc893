"""The vectorizer's fast building blocks give exactly what their plain numpy / scikit-image forms give (the speed-up
of the vectorizer kept its polylines bit for bit; these pin the pieces that could drift)."""
import numpy as np
import pytest
from skimage.measure import label

from mapkd_core.eval.vectorize import _instance_pieces, _sq_dist, argmax0, cluster_embeddings


def test_argmax0_equals_numpy_including_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (37, 20, 30)).astype(np.float32)  # many ties: the first maximum must win
    assert np.array_equal(argmax0(a), a.argmax(0))
    b = rng.normal(size=(4, 200, 400)).astype(np.float32)
    assert np.array_equal(argmax0(b), b.argmax(0))


@pytest.mark.parametrize('d', [3, 8, 16, 20, 40])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_sq_dist_has_the_bits_of_the_row_wise_sum(d, dtype):
    rng = np.random.default_rng(d)
    x = (rng.normal(size=(500, d)) * 4).astype(dtype)
    got = _sq_dist(np.ascontiguousarray(x.T), x[7], np.empty((d, 500), dtype))
    assert np.array_equal(got, ((x - x[7]) ** 2).sum(1))


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


def test_instance_pieces_are_skimage_label_pieces_in_its_order():
    rng = np.random.default_rng(2)
    shape = (60, 90)
    cl = np.zeros(shape, np.int64)
    for j in range(15):  # blobs and bands of five clusters that touch and overlap
        r, c = rng.integers(0, 50), rng.integers(0, 80)
        cl[r:r + rng.integers(3, 15), c:c + rng.integers(3, 40)] = j % 5 + 1
    cl[rng.random(shape) < 0.05] = 0
    flat = np.flatnonzero(cl)
    cluster = cl.ravel()[flat] - 1
    pieces = _instance_pieces(flat, cluster, shape, min_pixels=5)
    ref = label(cl, background=0, connectivity=2)
    sizes = np.bincount(ref.ravel())
    expected = [i for i in range(1, ref.max() + 1) if sizes[i] >= 5]
    assert len(pieces) == len(expected) > 5
    for (k, crop, r0, c0), i in zip(pieces, expected):
        mask = np.zeros((shape[0] + 2, shape[1] + 2), bool)  # crops are padded by one pixel
        mask[r0 + 1:r0 + 1 + crop.shape[0], c0 + 1:c0 + 1 + crop.shape[1]] = crop
        assert np.array_equal(mask[1:-1, 1:-1], ref == i)
        assert k == cl[ref == i][0] - 1
