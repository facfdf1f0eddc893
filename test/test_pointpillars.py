"""PointPillars LiDAR encoder: pillar geometry on the BEV grid, per-point features, masking, shapes, gradients."""
import numpy as np
import pytest
import torch

from mapkd_core.config import GridConfig
from mapkd_core.geometry import index_to_metres, metres_to_index
from mapkd_core.models.config import PillarsConfig
from mapkd_core.models.pointpillars import PointPillarsEncoder

SMALL_GRID = GridConfig(xbound=(-15.0, 15.0, 0.5), ybound=(-7.5, 7.5, 0.5))   # H=30, W=60
SMALL_CFG = PillarsConfig(point_channels=8, backbone_channels=(8, 16, 32), backbone_layers=(1, 2, 2))


def _encoder(grid=SMALL_GRID, cfg=SMALL_CFG, out_channels=128, seed=0) -> PointPillarsEncoder:
    torch.manual_seed(seed)
    return PointPillarsEncoder(grid, cfg, out_channels=out_channels)


def _random_points(grid: GridConfig, b: int, p: int, seed: int = 0, margin: float = 0.0):
    """(b, p, 5) points inside the grid (plus ``margin`` metres around it) and an all-True mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, p, generator=g) * (grid.x_extent + 2 * margin) + grid.xbound[0] - margin
    y = torch.rand(b, p, generator=g) * (grid.y_extent + 2 * margin) + grid.ybound[0] - margin
    z = torch.rand(b, p, generator=g) * 4.0 - 2.0
    rest = torch.rand(b, p, 2, generator=g)
    return torch.cat([x[..., None], y[..., None], z[..., None], rest], -1), torch.ones(b, p, dtype=torch.bool)


def _single_point_cloud(x, y, z=0.5, p=6):
    """One valid point at (x, y, z) in row 2 of a (1, p, 5) cloud; the other rows are masked garbage."""
    pts = torch.randn(1, p, 5) * 3.0
    pts[0, 2] = torch.tensor([x, y, z, 0.7, 0.1])
    mask = torch.zeros(1, p, dtype=torch.bool)
    mask[0, 2] = True
    return pts, mask


# ---------------------------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize('x, y', [
    (0.0, 0.0), (10.2, 5.3), (-10.2, -5.3), (-14.99, -7.49), (14.99, 7.49), (3.0, -2.0),   # 3.0 / -2.0: borders
    (0.4999, 0.5001), (-0.0001, 0.0001), (-15.0, -7.5),
])
def test_single_point_lands_in_the_metres_to_index_cell(x, y):
    enc = _encoder().eval()
    pts, mask = _single_point_cloud(x, y)
    with torch.no_grad():
        canvas = enc.scatter(pts, mask)
    assert canvas.shape == (1, SMALL_CFG.point_channels, SMALL_GRID.H, SMALL_GRID.W)
    nz = canvas.abs().sum(1)[0].nonzero().tolist()
    row, col = metres_to_index(SMALL_GRID, np.float32(x), np.float32(y))
    assert nz == [[int(row), int(col)]]


def test_orientation_forward_is_larger_column_left_is_larger_row():
    enc = _encoder().eval()

    def cell(x, y):
        pts, mask = _single_point_cloud(x, y)
        with torch.no_grad():
            return tuple(enc.scatter(pts, mask).abs().sum(1)[0].nonzero()[0].tolist())

    r0, c0 = cell(0.1, 0.1)
    r_fwd, c_fwd = cell(5.1, 0.1)
    r_left, c_left = cell(0.1, 5.1)
    assert c_fwd == c0 + 10 and r_fwd == r0      # +x forward -> larger column (0.5 m cells)
    assert r_left == r0 + 10 and c_left == c0    # +y left -> larger row
    assert (r0, c0) == (15, 30)


def test_pillar_index_matches_numpy_mapping_on_many_points():
    enc = _encoder()
    pts, mask = _random_points(SMALL_GRID, 2, 4000, seed=3)
    # snap half the points exactly onto cell borders
    pts[:, ::2, 0] = torch.round(pts[:, ::2, 0] * 2) / 2
    pts[:, ::2, 1] = torch.round(pts[:, ::2, 1] * 2) / 2
    row, col, flat, valid = enc.pillar_index(pts, mask)
    r_np, c_np = metres_to_index(SMALL_GRID, pts[..., 0].numpy(), pts[..., 1].numpy())
    inside = (r_np >= 0) & (r_np < SMALL_GRID.H) & (c_np >= 0) & (c_np < SMALL_GRID.W)
    assert np.array_equal(valid.numpy(), inside)
    assert np.array_equal(row.numpy()[inside], r_np[inside]) and np.array_equal(col.numpy()[inside], c_np[inside])
    hw = SMALL_GRID.H * SMALL_GRID.W
    assert torch.equal(flat[valid], (torch.arange(2)[:, None].expand(2, 4000) * hw + row * SMALL_GRID.W + col)[valid])


# ---------------------------------------------------------------------------------------------------------------
# per-point features


def test_point_features_by_hand():
    enc = _encoder()
    # three points in the cell around x in [2.0, 2.5), y in [-1.0, -0.5) -> centre (2.25, -0.75); one elsewhere
    pts = torch.tensor([[[2.1, -0.9, 1.0, 10.0, 0.0],
                         [2.4, -0.6, -1.0, 20.0, 0.05],
                         [2.2, -0.8, 3.0, 30.0, 0.1],
                         [-5.2, 4.1, 0.5, 5.0, 0.0],
                         [2.3, -0.7, 9.0, 99.0, 0.0]]])            # last row masked out
    mask = torch.tensor([[True, True, True, True, False]])
    f = enc.point_features(pts, mask)
    assert f.shape == (1, 5, 15)
    torch.testing.assert_close(f[0, :, :5], pts[0] * mask[0, :, None])
    assert f[0, :4, 5].tolist() == [3.0, 3.0, 3.0, 1.0]
    centroid = torch.tensor([2.1 + 2.4 + 2.2, -0.9 - 0.6 - 0.8, 1.0 - 1.0 + 3.0]) / 3
    centre = torch.tensor([2.25, -0.75, 0.0])                        # z centre: middle of (-10, 10)
    for i in range(3):
        torch.testing.assert_close(f[0, i, 6:9], pts[0, i, :3] - centroid)
        torch.testing.assert_close(f[0, i, 9:12], centroid)
        torch.testing.assert_close(f[0, i, 12:15], pts[0, i, :3] - centre)
    # a lone point: zero centroid offset, centroid = itself, centre offset from its own cell centre
    cx, cy = index_to_metres(SMALL_GRID, *metres_to_index(SMALL_GRID, -5.2, 4.1))
    torch.testing.assert_close(f[0, 3, 6:9], torch.zeros(3))
    torch.testing.assert_close(f[0, 3, 9:12], pts[0, 3, :3])
    torch.testing.assert_close(f[0, 3, 12:15], pts[0, 3, :3] - torch.tensor([cx, cy, 0.0], dtype=torch.float32))
    assert (cx, cy) == pytest.approx((-5.25, 4.25))
    assert torch.count_nonzero(f[0, 4]) == 0                          # masked point: all zero


def test_z_centre_follows_zbound():
    grid = GridConfig(xbound=(-15.0, 15.0, 0.5), ybound=(-7.5, 7.5, 0.5), zbound=(-2.0, 4.0, 6.0))
    enc = PointPillarsEncoder(grid, SMALL_CFG)
    pts = torch.tensor([[[0.1, 0.1, 3.5, 0.0, 0.0]]])
    f = enc.point_features(pts, torch.ones(1, 1, dtype=torch.bool))
    assert f[0, 0, 14].item() == pytest.approx(2.5)                    # 3.5 - 1.0


# ---------------------------------------------------------------------------------------------------------------
# masking, outside points, batch independence


def test_masked_and_out_of_grid_points_change_nothing():
    enc = _encoder().eval()
    pts, mask = _random_points(SMALL_GRID, 1, 300, seed=1)
    extra = torch.tensor([[[15.0, 0.0, 0.0, 1.0, 0.0],       # x == xmax: outside (half-open)
                           [-15.01, 0.0, 0.0, 1.0, 0.0],
                           [0.0, 7.5, 0.0, 1.0, 0.0],        # y == ymax
                           [0.0, -7.6, 0.0, 1.0, 0.0],
                           [0.0, 0.0, 10.0, 1.0, 0.0],       # z == zmax
                           [0.0, 0.0, -10.5, 1.0, 0.0],
                           [40.0, 30.0, 50.0, 1.0, 0.0],
                           [float('nan'), 0.0, 0.0, 1.0, 0.0],
                           [1.0, 1.0, 0.0, 5.0, 0.0]]])       # inside but masked out
    extra_mask = torch.tensor([[True] * 8 + [False]])
    pts2 = torch.cat([pts[:, :150], extra, pts[:, 150:]], 1)
    mask2 = torch.cat([mask[:, :150], extra_mask, mask[:, 150:]], 1)
    with torch.no_grad():
        torch.testing.assert_close(enc.scatter(pts2, mask2), enc.scatter(pts, mask))
        torch.testing.assert_close(enc(pts2, mask2), enc(pts, mask))
    # train mode too: the PointNet BatchNorm only sees valid points
    enc.train()
    with torch.no_grad():
        torch.testing.assert_close(enc.scatter(pts2, mask2), enc.scatter(pts, mask))


def test_no_valid_points_gives_an_empty_canvas():
    enc = _encoder().eval()
    pts, _ = _random_points(SMALL_GRID, 2, 50)
    canvas = enc.scatter(pts, torch.zeros(2, 50, dtype=torch.bool))
    assert canvas.shape == (2, SMALL_CFG.point_channels, SMALL_GRID.H, SMALL_GRID.W)
    assert torch.count_nonzero(canvas) == 0
    assert enc(pts, torch.zeros(2, 50, dtype=torch.bool)).shape == (2, 128, SMALL_GRID.H, SMALL_GRID.W)


def test_batch_independence():
    enc = _encoder().eval()
    pts, mask = _random_points(SMALL_GRID, 2, 500, seed=2, margin=1.0)
    other, other_mask = _random_points(SMALL_GRID, 1, 500, seed=7, margin=1.0)
    other_mask[0, 100:] = False
    pts_b = torch.cat([pts[:1], other], 0)
    mask_b = torch.cat([mask[:1], other_mask], 0)
    with torch.no_grad():
        out_a = enc(pts, mask)
        out_b = enc(pts_b, mask_b)
        single = enc(pts[:1], mask[:1])
    torch.testing.assert_close(out_a[0], out_b[0])
    torch.testing.assert_close(out_a[:1], single, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out_a[1], out_b[1])


# ---------------------------------------------------------------------------------------------------------------
# shapes, gradients, determinism


@pytest.mark.parametrize('grid', [
    SMALL_GRID,
    GridConfig(xbound=(-12.5, 12.5, 0.5), ybound=(-6.25, 6.25, 0.5)),   # odd: H=25, W=50
    GridConfig(xbound=(-10.5, 10.5, 1.0), ybound=(-4.5, 4.5, 1.0)),     # odd both ways: H=9, W=21
])
def test_output_shape_and_gradients(grid):
    enc = _encoder(grid).train()
    pts, mask = _random_points(grid, 2, 800, seed=4, margin=2.0)
    mask[1, 600:] = False
    out = enc(pts, mask)
    assert out.shape == (2, 128, grid.H, grid.W)
    assert torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for p in enc.parameters())


def test_output_shape_at_the_paper_grid():
    grid = GridConfig()
    assert (grid.H, grid.W) == (200, 400)
    enc = _encoder(grid).eval()
    pts, mask = _random_points(grid, 2, 3000, seed=5, margin=3.0)
    mask[0, 2500:] = False
    with torch.no_grad():
        out = enc(pts, mask)
    assert out.shape == (2, 128, 200, 400)
    assert torch.isfinite(out).all()


def test_paper_config_defaults_build():
    enc = PointPillarsEncoder(GridConfig(), PillarsConfig())
    assert enc.pointnet[0].in_channels == 15 and enc.pointnet[0].out_channels == 64
    assert enc.head[0][0].in_channels == 64 + 128 + 256
    assert enc.head[0][0].out_channels == 256 and enc.head[1][0].out_channels == 128
    assert enc.head[2].out_channels == 128
    assert len(enc.block1) == 2 and len(enc.block2) == 3 and len(enc.block3) == 3
    assert enc.block2[0][0].stride == (2, 2) and enc.block3[0][0].stride == (2, 2)
    assert not any(k.startswith('centre_') for k in enc.state_dict())


def test_determinism():
    pts, mask = _random_points(SMALL_GRID, 2, 400, seed=6)
    outs = []
    for _ in range(2):
        enc = _encoder(seed=0).eval()
        with torch.no_grad():
            outs.append(enc(pts, mask))
    assert torch.equal(outs[0], outs[1])


def test_input_validation():
    enc = _encoder()
    with pytest.raises(ValueError, match='points must be'):
        enc(torch.zeros(1, 10, 4), torch.ones(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match='mask must be'):
        enc(torch.zeros(1, 10, 5), torch.ones(1, 9, dtype=torch.bool))


def test_native_lateral_convolves_the_coarse_blocks_before_upsampling():
    """``lateral: native`` (CPU teacher) uses the same weights as ``full`` (HDMapNet's order): the lateral layers
    of blocks 2 and 3 run at their own resolution and are upsampled afterwards; block 1's lateral is unchanged."""
    import dataclasses

    import torch.nn.functional as F
    full = _encoder(seed=3).eval()
    native = PointPillarsEncoder(SMALL_GRID, dataclasses.replace(SMALL_CFG, lateral='native'), out_channels=128).eval()
    native.load_state_dict(full.state_dict(), strict=True)   # the same parameters and buffers
    pts, mask = _random_points(SMALL_GRID, 2, 600, seed=7)
    with torch.no_grad():
        f1 = full.block1(full.scatter(pts, mask))
        f2 = full.block2(f1)
        f3 = full.block3(f2)
        size = f1.shape[-2:]

        def up(x):
            return F.interpolate(x, size=size, mode='bilinear', align_corners=True)
        by_hand = full.head(torch.cat([full.lateral1(f1), up(full.lateral2(f2)), up(full.lateral3(f3))], 1))
        hdmapnet = full.head(torch.cat([full.lateral1(f1), full.lateral2(up(f2)), full.lateral3(up(f3))], 1))
        out_native, out_full = native(pts, mask), full(pts, mask)
    assert out_native.shape == out_full.shape == (2, 128, SMALL_GRID.H, SMALL_GRID.W)
    torch.testing.assert_close(out_native, by_hand)
    torch.testing.assert_close(out_full, hdmapnet)
    assert not torch.allclose(out_native, out_full, atol=1e-4)


def test_lateral_setting_is_checked():
    from mapkd_core.config import from_dict
    from mapkd_core.errors import ConfigError
    assert PillarsConfig().lateral == 'full'            # the method's order, the imported checkpoints'
    with pytest.raises(ConfigError, match='lateral'):
        from_dict(PillarsConfig, {'lateral': 'coarse'}, source='test')
