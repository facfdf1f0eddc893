"""SD-map cross-attention fusion and HD-map prior refiner (mapkd_core.models.sd_fusion / hd_prior):
shapes on several grids, gradients, dependence on the inputs, positional encodings, MAE block masks, ONNX export."""
from __future__ import annotations

import math

import pytest
import torch

from mapkd_core.config import GridConfig
from mapkd_core.models.config import HdConfig, SdConfig
from mapkd_core.models.hd_prior import HdPriorRefiner, block_mask, mask_map, sincos_position_table
from mapkd_core.models.sd_fusion import SdCrossAttention, sine_position_encoding

SMALL_GRID = GridConfig(xbound=(-30.0, 30.0, 0.75), ybound=(-15.0, 15.0, 0.75))  # 40 x 80
ODD_GRID = GridConfig(xbound=(-30.0, 30.0, 0.3), ybound=(-15.0, 15.0, 0.3))  # 100 x 200, H / 8 = 12.5
PAPER_GRID = GridConfig()  # 200 x 400
SMALL_SD = SdConfig(d_model=32, heads=4, layers=1, ffn=64)
SMALL_HD = HdConfig(dim=64, depth=2, heads=4, patch=8)
BEV_CH = 24


def sd_inputs(grid: GridConfig, batch: int = 2, channels: int = BEV_CH, small: tuple[int, int] | None = None,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = small if small is not None else (grid.H // 8, grid.W // 8)
    bev = torch.randn(batch, channels, h, w, generator=g)
    sd = torch.where(torch.rand(batch, 1, grid.H, grid.W, generator=g) < 0.1, 1.0, -1.0)
    return bev, sd


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def check_gradients(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """Train mode: the output sum gives every parameter a (finite) gradient; a random weighting makes all non-zero.

    (The plain sum is almost flat for a module ending in a normalisation layer, hence the second check.)
    """
    model.train()
    model.zero_grad(set_to_none=True)
    model(*inputs).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f'no / non-finite gradient for {missing}'
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    zero = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not zero, f'zero gradient for {zero}'


# ----------------------------------------------------------------------------------------------------------------
# SD fusion


@pytest.mark.parametrize('grid, small', [(SMALL_GRID, None), (ODD_GRID, (12, 25)), (ODD_GRID, (13, 25))],
                         ids=['small-40x80', 'odd-100x200-bev12x25', 'odd-100x200-bev13x25'])
def test_sd_shapes_small_and_odd(grid, small):
    torch.manual_seed(0)
    model = SdCrossAttention(SMALL_SD, bev_channels=BEV_CH).eval()
    bev, sd = sd_inputs(grid, small=small)
    with torch.no_grad():
        out = model(bev, sd)
    assert out.shape == (2, SMALL_SD.d_model, *bev.shape[-2:])
    assert torch.isfinite(out).all()


def test_sd_odd_grid_natural_size_is_floor():
    """conv_osm maps 100 x 200 to floor(floor(floor(n/2)/2)/2) = 12 x 25: the size that needs no resize."""
    model = SdCrossAttention(SMALL_SD, bev_channels=BEV_CH).eval()
    _, sd = sd_inputs(ODD_GRID)
    with torch.no_grad():
        assert model.conv_osm(sd).shape[-2:] == (12, 25)


def test_sd_shapes_paper_grid_default_config():
    torch.manual_seed(0)
    model = SdCrossAttention(SdConfig(), bev_channels=192).eval()
    bev, sd = sd_inputs(PAPER_GRID, channels=192)
    assert bev.shape[-2:] == (25, 50)
    with torch.no_grad():
        out = model(bev, sd)
    assert out.shape == (2, 64, 25, 50)
    # conv_osm 99,040 + input_proj 12,352 + 2 layers x 58,496 + final norm 128
    assert n_params(model) == 228_512


def test_sd_every_parameter_gets_gradient():
    torch.manual_seed(0)
    model = SdCrossAttention(SMALL_SD, bev_channels=BEV_CH)
    check_gradients(model, *sd_inputs(SMALL_GRID))


def test_sd_output_depends_on_sd_prior_and_bev():
    torch.manual_seed(0)
    model = SdCrossAttention(SMALL_SD, bev_channels=BEV_CH).eval()
    bev, sd = sd_inputs(SMALL_GRID, seed=0)
    _, sd2 = sd_inputs(SMALL_GRID, seed=1)
    with torch.no_grad():
        out = model(bev, sd)
        assert torch.equal(out, model(bev, sd))  # deterministic in eval mode
        assert (out - model(bev, sd2)).abs().max() > 1e-3
        assert (out - model(bev + 1.0, sd)).abs().max() > 1e-3


def test_sine_position_encoding():
    h, w, d = 5, 7, 32
    pos = sine_position_encoding(h, w, d)
    assert pos.shape == (d, h, w)
    assert pos.min() >= -1.0 and pos.max() <= 1.0
    # first half encodes the row, second half the column
    assert torch.allclose(pos[: d // 2], pos[: d // 2, :, :1].expand(-1, -1, w))
    assert torch.allclose(pos[d // 2:], pos[d // 2:, :1, :].expand(-1, h, -1))
    # normalised positions (1..h)/h * 2 pi; channel pair 0 has period 2 pi: sin, cos
    rows = torch.arange(1, h + 1, dtype=torch.float32) / h * 2 * math.pi
    assert torch.allclose(pos[0, :, 0], torch.sin(rows), atol=1e-5)
    assert torch.allclose(pos[1, :, 0], torch.cos(rows), atol=1e-5)
    cols = torch.arange(1, w + 1, dtype=torch.float32) / w * 2 * math.pi
    assert torch.allclose(pos[d // 2, 0, :], torch.sin(cols), atol=1e-5)
    # every position has its own code
    codes = pos.flatten(1).T
    assert torch.cdist(codes, codes).add(torch.eye(h * w) * 10).min() > 1e-2
    # paper size: 32 + 32 channels on 25 x 50
    assert sine_position_encoding(25, 50, 64).shape == (64, 25, 50)
    with pytest.raises(ValueError):
        sine_position_encoding(4, 4, 30)


# ----------------------------------------------------------------------------------------------------------------
# HD refiner


@pytest.mark.parametrize('grid, tokens', [(SMALL_GRID, (5, 10)), (ODD_GRID, (13, 25))], ids=['small', 'odd'])
def test_hd_shapes_and_tokens(grid, tokens):
    torch.manual_seed(0)
    model = HdPriorRefiner(grid, SMALL_HD).eval()
    assert (model.token_rows, model.token_cols) == tokens
    assert model.num_tokens == tokens[0] * tokens[1]
    assert model.pos_embed.shape == (1, model.num_tokens, SMALL_HD.dim)
    x = torch.randn(2, 4, grid.H, grid.W)
    with torch.no_grad():
        assert model.patch_embed(x[..., :tokens[0] * 8 - model.pad_bottom, :]).shape[1] == SMALL_HD.dim
        out = model(x)
    assert out.shape == (2, SMALL_HD.dim, grid.H, grid.W)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError):
        model(torch.randn(1, 4, grid.H + 8, grid.W))


def test_hd_paper_grid_small_model():
    """Paper grid, small width: 25 x 50 = 1250 tokens and an exactly 200 x 400 output."""
    model = HdPriorRefiner(PAPER_GRID, HdConfig(dim=32, depth=1, heads=4, patch=8)).eval()
    assert model.num_tokens == 25 * 50
    with torch.no_grad():
        out = model(torch.randn(1, 4, 200, 400))
    assert out.shape == (1, 32, 200, 400)


@pytest.fixture(scope='module')
def paper_hd():
    """The default (paper-size) refiner on the paper grid, built once (~106 M parameters)."""
    torch.manual_seed(0)
    return HdPriorRefiner(PAPER_GRID, HdConfig()).eval()


def test_hd_paper_size_parameters(paper_hd):
    """Default HdConfig is ViT-B/8: ~85 M in the 12 blocks, ~19 M in the two 768 x 768 4x4 deconvolutions."""
    model = paper_hd
    assert model.num_tokens == 1250 and (model.pad_bottom, model.pad_right) == (0, 0)
    assert n_params(model.blocks) == 12 * 7_087_872
    assert n_params(model.deconv1) + n_params(model.deconv2) == 2 * (768 * 768 * 16 + 768)
    assert 100e6 < n_params(model) < 110e6
    # the position embedding starts as the fixed sin-cos table but is learnable
    assert model.pos_embed.requires_grad
    assert torch.allclose(model.pos_embed[0], sincos_position_table(25, 50, 768))


@pytest.mark.slow
def test_hd_paper_size_forward(paper_hd):
    """Full ViT-B/8 at 200 x 400, batch 1, no grad (~2-6 s on 2 CPU cores)."""
    with torch.no_grad():
        x = torch.randn(1, 4, PAPER_GRID.H, PAPER_GRID.W)
        assert paper_hd.patch_embed(x).shape == (1, 768, 25, 50)
        out = paper_hd(x)
    assert out.shape == (1, 768, 200, 400)
    assert torch.isfinite(out).all()


def test_sincos_table():
    t = sincos_position_table(3, 4, 16)
    assert t.shape == (12, 16)
    assert t.abs().max() <= 1.0
    assert torch.cdist(t, t).add(torch.eye(12) * 10).min() > 1e-2
    # row-major token order: tokens 0..3 share row 0, so the row half (first 8 channels) is equal
    assert torch.allclose(t[0, :8], t[3, :8]) and not torch.allclose(t[0, :8], t[4, :8])


def test_hd_every_parameter_gets_gradient():
    torch.manual_seed(0)
    model = HdPriorRefiner(SMALL_GRID, SMALL_HD)
    check_gradients(model, torch.randn(2, 4, SMALL_GRID.H, SMALL_GRID.W))


def test_hd_output_depends_on_input():
    torch.manual_seed(0)
    model = HdPriorRefiner(SMALL_GRID, SMALL_HD).eval()
    x = torch.randn(1, 4, SMALL_GRID.H, SMALL_GRID.W)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(x))
        assert (out - model(torch.randn_like(x))).abs().max() > 1e-3
        # a change in one patch reaches far-away cells through the attention
        x2 = x.clone()
        x2[..., :8, :8] += 5.0
        diff = (out - model(x2)).abs()
        assert diff[..., -8:, -8:].max() > 1e-4


# ----------------------------------------------------------------------------------------------------------------
# MAE block masks


def block_values(mask: torch.Tensor, g: int) -> torch.Tensor:
    """(B, 1, H, W) mask -> (B, g, g) block values, asserting the mask is constant inside every block."""
    b, _, h, w = mask.shape
    rb = torch.arange(h) * g // h
    cb = torch.arange(w) * g // w
    first_r = torch.searchsorted(rb, torch.arange(g))
    first_c = torch.searchsorted(cb, torch.arange(g))
    vals = mask[:, 0][:, first_r][:, :, first_c]
    assert torch.equal(vals[:, rb][:, :, cb], mask[:, 0]), 'mask not constant inside blocks'
    return vals


@pytest.mark.parametrize('shape, g, ratio', [((2, 4, 200, 400), 25, 0.5), ((3, 4, 40, 80), 25, 0.3),
                                             ((2, 4, 100, 200), 8, 0.7), ((1, 4, 40, 80), 10, 0.0),
                                             ((1, 4, 40, 80), 10, 1.0)])
def test_block_mask_ratio_and_blocks(shape, g, ratio):
    mask = block_mask(shape, g, ratio, torch.Generator().manual_seed(3))
    assert mask.shape == (shape[0], 1, shape[2], shape[3]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    vals = block_values(mask, g)
    masked = (vals == 0).flatten(1).sum(1).double()
    assert torch.all((masked - ratio * g * g).abs() <= 0.5 + 1e-6)  # to the nearest block


def test_block_mask_per_sample_ratio_and_determinism():
    ratios = torch.tensor([0.1, 0.6])
    m1 = block_mask((2, 4, 40, 80), 20, ratios, torch.Generator().manual_seed(7))
    m2 = block_mask((2, 4, 40, 80), 20, ratios, torch.Generator().manual_seed(7))
    m3 = block_mask((2, 4, 40, 80), 20, ratios, torch.Generator().manual_seed(8))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    masked = (block_values(m1, 20) == 0).flatten(1).sum(1)
    assert masked.tolist() == [40, 240]
    with pytest.raises(ValueError):
        block_mask((1, 4, 40, 80), 20, 1.5)
    with pytest.raises(ValueError):
        block_mask((1, 4, 40, 80), 50, 0.5)


def all_classes_map(b: int, h: int, w: int) -> torch.Tensor:
    """Every class channel 1 everywhere (not one-hot): mask_map's output then shows its masks directly."""
    x = torch.ones(b, 4, h, w)
    x[:, 0] = 0
    return x


def test_mask_map_channels_share_and_differ():
    b, h, w = 4, 200, 400
    out = mask_map(all_classes_map(b, h, w), torch.Generator().manual_seed(0), ratio=0.5)
    assert out.shape == (b, 4, h, w)
    line, ped, bound = out[:, 1:2], out[:, 2:3], out[:, 3:4]
    assert torch.equal(line, ped)
    for i in range(b):
        assert not torch.equal(line[i], bound[i])
        # each mask is a block mask on one of the allowed grids with half of its blocks masked
        found = False
        for g in (25, 20, 10, 8):
            try:
                v_line, v_bound = block_values(line[i:i + 1], g), block_values(bound[i:i + 1], g)
            except AssertionError:
                continue
            found = True
            for v in (v_line, v_bound):
                assert abs(int((v == 0).sum()) - 0.5 * g * g) <= 0.5 + 1e-6
            break
        assert found
    # background recomputed: 1 exactly where no class remains
    assert torch.equal(out[:, 0], (out[:, 1:].sum(1) == 0).float())


def test_mask_map_onehot_background_and_determinism():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (3, 40, 80), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    out = mask_map(onehot, torch.Generator().manual_seed(5), ratio=0.5, grid_choices=(10, 8))
    assert out.dtype == onehot.dtype and out.shape == onehot.shape
    assert torch.equal(out.sum(1), torch.ones(3, 40, 80))  # still one-hot
    assert torch.all(out[:, 1:] <= onehot[:, 1:])  # masking only removes classes
    assert torch.all(out[:, 0] >= onehot[:, 0])  # ... which become background
    assert (out[:, 0] > onehot[:, 0]).any()
    again = mask_map(onehot, torch.Generator().manual_seed(5), ratio=0.5, grid_choices=(10, 8))
    other = mask_map(onehot, torch.Generator().manual_seed(6), ratio=0.5, grid_choices=(10, 8))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_mask_map_random_ratios():
    b = 16
    out = mask_map(all_classes_map(b, 40, 80), torch.Generator().manual_seed(2), ratio=-1.0, grid_choices=(10,))
    frac_line = (block_values(out[:, 1:2], 10) == 0).flatten(1).float().mean(1)
    frac_bound = (block_values(out[:, 3:4], 10) == 0).flatten(1).float().mean(1)
    assert frac_line.max() <= 0.7 + 0.005 and frac_bound.max() <= 0.5 + 0.005
    assert len(set(frac_line.tolist())) > 3 and len(set(frac_bound.tolist())) > 3  # drawn per sample
    assert not torch.equal(frac_line, frac_bound)


# ----------------------------------------------------------------------------------------------------------------
# ONNX


def export_and_check(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path) -> None:
    onnx = pytest.importorskip('onnx')
    model.eval()
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17)
    onnx.checker.check_model(onnx.load(str(path)))
    try:
        import onnxruntime
    except ImportError:
        return
    sess = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    got = torch.from_numpy(sess.run(None, feeds)[0])
    with torch.no_grad():
        ref = model(*inputs)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-5


def test_onnx_sd_cross_attention(tmp_path):
    torch.manual_seed(0)
    export_and_check(SdCrossAttention(SMALL_SD, bev_channels=BEV_CH), sd_inputs(SMALL_GRID), tmp_path / 'sd.onnx')


def test_onnx_sd_cross_attention_resized(tmp_path):
    torch.manual_seed(0)
    export_and_check(SdCrossAttention(SMALL_SD, bev_channels=BEV_CH), sd_inputs(ODD_GRID, small=(13, 25)),
                     tmp_path / 'sd_odd.onnx')


@pytest.mark.parametrize('grid', [SMALL_GRID, ODD_GRID], ids=['small', 'odd'])
def test_onnx_hd_refiner(tmp_path, grid):
    torch.manual_seed(0)
    export_and_check(HdPriorRefiner(grid, SMALL_HD), (torch.randn(1, 4, grid.H, grid.W),), tmp_path / 'hd.onnx')
