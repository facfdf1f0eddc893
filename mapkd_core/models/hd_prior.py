"""HD-map prior (P-MapNet "HDMap Prior Refinement", method doc sections 1.0 and 5.1).

The HD prior is not an input map: it is a masked-autoencoder refinement head, a ViT pre-trained to reconstruct
rasterised ground-truth HD maps from block-masked copies, so the prior lives in its weights. At inference it refines
the first-stage 4-channel semantic logits.

* :class:`HdPriorRefiner`: patch embedding -> position embedding -> ViT blocks -> two transposed convolutions ->
  bilinear resize to the grid -> 1x1 conv + BN. (B, 4, H, W) -> (B, dim, H, W); a BevEncode (not here) follows.
* :func:`block_mask` and :func:`mask_map`: the random block masking used for the MAE pre-training (section 5.1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import GridConfig
from ..errors import ConfigError
from .config import HdConfig

__all__ = ['HdPriorRefiner', 'sincos_position_table', 'block_mask', 'mask_map']


def sincos_position_table(rows: int, cols: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos table (MAE style) for a rows x cols token grid, row-major token order.

    The first ``dim / 2`` channels encode the token row, the last ``dim / 2`` the column; each half is
    ``[sin(p * w_0..w_{n-1}), cos(p * w_0..w_{n-1})]`` with integer positions p and ``w_k = 10000 ** (-k / n)``,
    ``n = dim / 4``.

    Returns:
        (rows * cols, dim) float32 tensor.
    """
    if dim % 4:
        raise ValueError(f'sincos_position_table: dim must be a multiple of 4, got {dim}')
    n = dim // 4
    omega = 10000.0 ** (-torch.arange(n, dtype=torch.float64) / n)

    def encode(p: Tensor) -> Tensor:  # (m,) -> (m, 2n)
        arg = p[:, None] * omega[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)
    return torch.cat([encode(r), encode(c)], dim=1).float()


class _Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias) and an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (b, heads, n, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm ViT block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HdPriorRefiner(nn.Module):
    """MAE-style ViT refinement head over a (B, in_channels, H, W) semantic map; returns (B, cfg.dim, H, W).

    Pipeline:
        1. ``patch_embed``: Conv(in_channels -> dim, kernel = stride = patch). The input is zero-padded on the
           bottom/right to a multiple of the patch, so there are ``ceil(H / p) x ceil(W / p)`` tokens
           (25 x 50 = 1250 on the paper grid with p = 8).
        2. ``pos_embed`` (1, N, dim): learnable, one row per token, initialised with the fixed 2-D sin-cos table
           (:func:`sincos_position_table`). P-MapNet instead adds the first 1250 rows of timm's 1251-row table
           (CLS slot used, last row dropped); that offset only matters when loading timm/MAE checkpoints, which this
           implementation does not do.
        3. ``blocks``: cfg.depth pre-norm ViT blocks (qkv bias, GELU MLP of dim * mlp_ratio), then ``norm``.
        4. Tokens back to (B, dim, ceil(H/p), ceil(W/p)); ``deconv1``, ``deconv2``: two successive
           ConvTranspose2d(dim -> dim, k4 s2 p1) with nothing in between (x4).
        5. Bilinear resize to the padded extent (ceil(H/p)*p, ceil(W/p)*p) and crop to (H, W); for grids that are a
           multiple of the patch (the paper grid) this is exactly a bilinear resize to (H, W).
        6. ``out_conv`` (1x1, no bias: a BN follows) + ``out_bn``, no ReLU.

    The paper size (dim 768, depth 12, heads 12, patch 8) is ViT-B/8: ~85.1 M parameters in the blocks, ~18.9 M in
    the two deconvolutions, ~105.7 M in all on the 200 x 400 grid.

    The input size must be the grid's (H, W): the position embedding is fixed by the grid and the patch.
    """

    def __init__(self, grid: GridConfig, cfg: HdConfig, in_channels: int = 4):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ConfigError(f'HdPriorRefiner: dim {cfg.dim} must be divisible by heads {cfg.heads}')
        if cfg.patch < 1:
            raise ConfigError(f'HdPriorRefiner: patch must be >= 1, got {cfg.patch}')
        p = cfg.patch
        self.H, self.W = grid.H, grid.W
        self.patch = p
        self.dim = cfg.dim
        self.token_rows = -(-self.H // p)
        self.token_cols = -(-self.W // p)
        self.pad_bottom = self.token_rows * p - self.H
        self.pad_right = self.token_cols * p - self.W
        self.patch_embed = nn.Conv2d(in_channels, cfg.dim, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(sincos_position_table(self.token_rows, self.token_cols, cfg.dim).unsqueeze(0))
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.deconv1 = nn.ConvTranspose2d(cfg.dim, cfg.dim, kernel_size=4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(cfg.dim, cfg.dim, kernel_size=4, stride=2, padding=1)
        self.out_conv = nn.Conv2d(cfg.dim, cfg.dim, kernel_size=1, bias=False)
        self.out_bn = nn.BatchNorm2d(cfg.dim)
        self._init_weights()

    @property
    def num_tokens(self) -> int:
        """Number of patch tokens N = ceil(H / p) * ceil(W / p)."""
        return self.token_rows * self.token_cols

    def _init_weights(self) -> None:
        """MAE-style: xavier-uniform linear layers (and the patch embedding seen as one), zero biases."""
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (self.H, self.W):
            raise ValueError(f'HdPriorRefiner: expected a {self.H} x {self.W} map (the grid), got '
                             f'{tuple(x.shape[-2:])}')
        b = x.shape[0]
        if self.pad_bottom or self.pad_right:
            x = F.pad(x, (0, self.pad_right, 0, self.pad_bottom))
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, dim)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        y = tokens.transpose(1, 2).reshape(b, self.dim, self.token_rows, self.token_cols)
        y = self.deconv2(self.deconv1(y))
        ph, pw = self.token_rows * self.patch, self.token_cols * self.patch
        y = F.interpolate(y, size=(ph, pw), mode='bilinear', align_corners=False)
        if ph != self.H or pw != self.W:
            y = y[:, :, :self.H, :self.W]
        return self.out_bn(self.out_conv(y))


# --------------------------------------------------------------------------------------------------------------
# MAE pre-training masks (method doc 5.1)


def block_mask(shape: Sequence[int], grid_cells: int, ratio: float | Tensor,
               generator: torch.Generator | None = None) -> Tensor:
    """Random block mask for a (B, C, H, W) map split into grid_cells x grid_cells blocks.

    Row r belongs to block row ``floor(r * grid_cells / H)`` (columns likewise), so blocks are H/g x W/g cells
    (8 x 16 for g = 25 on 200 x 400) and uneven by at most one cell when g does not divide the size. In every sample
    exactly ``round(ratio * g * g)`` blocks, chosen uniformly at random, are masked.

    Args:
        shape: (B, C, H, W) (only B, H, W are used).
        grid_cells: blocks per side g (P-MapNet draws it from {25, 20, 10, 8}); 1 <= g <= min(H, W).
        ratio: fraction of masked blocks in [0, 1], a float or a (B,) tensor (one ratio per sample).
        generator: the random source (its device is where the random numbers are drawn); None = global RNG.

    Returns:
        float32 mask (B, 1, H, W), 1 = kept, 0 = masked, on the generator's device (CPU without one).
    """
    b, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
    g = int(grid_cells)
    if not 1 <= g <= min(h, w):
        raise ValueError(f'block_mask: grid_cells must be in [1, {min(h, w)}] for a {h} x {w} map, got {g}')
    device = generator.device if generator is not None else torch.device('cpu')
    ratio_t = torch.as_tensor(ratio, dtype=torch.float64, device=device).reshape(-1).expand(b)
    if bool(((ratio_t < 0) | (ratio_t > 1)).any()):
        raise ValueError(f'block_mask: ratio must be in [0, 1], got {ratio}')
    n_masked = torch.round(ratio_t * g * g).long()  # (B,)
    noise = torch.rand(b, g * g, generator=generator, device=device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # a random permutation of 0..g*g-1 per sample
    keep = (ranks >= n_masked[:, None]).float().reshape(b, g, g)
    row_block = torch.div(torch.arange(h, device=device) * g, h, rounding_mode='floor')
    col_block = torch.div(torch.arange(w, device=device) * g, w, rounding_mode='floor')
    return keep[:, row_block][:, :, col_block].unsqueeze(1)


def mask_map(onehot: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5,
             grid_choices: Sequence[int] = (25, 20, 10, 8)) -> Tensor:
    """P-MapNet's MAE input: block-mask a (B, 4, H, W) one-hot semantic map (background, divider, ped, boundary).

    * Each sample draws one block grid g from ``grid_choices`` (used by both of its masks).
    * Divider and ped-crossing channels (1, 2) share one block mask; the boundary channel (3) gets its own.
    * ``ratio >= 0``: that fraction of blocks is masked in both masks. ``ratio < 0``: per-sample ratios are drawn from
      U(0, 0.7) for the divider/ped mask and U(0, 0.5) for the boundary mask.
    * Channel 0 (background) is recomputed: 1 where no class remains after masking, else 0.

    Random draws, in order: grid choices (B), then the ratios if ratio < 0 (B for dividers/peds, B for boundaries),
    then per distinct grid size (ascending) the divider/ped noise and the boundary noise of the samples using it.
    The result is deterministic for a given generator state.

    Returns:
        the masked map, same shape, dtype and device as ``onehot``.
    """
    if onehot.dim() != 4 or onehot.shape[1] != 4:
        raise ValueError(f'mask_map: expected a (B, 4, H, W) one-hot map, got {tuple(onehot.shape)}')
    if not grid_choices:
        raise ValueError('mask_map: grid_choices must not be empty')
    b, _, h, w = onehot.shape
    device = generator.device if generator is not None else torch.device('cpu')
    choices = torch.as_tensor(list(grid_choices), device=device)
    grid_idx = torch.randint(len(grid_choices), (b,), generator=generator, device=device)
    grids = choices[grid_idx]
    if ratio < 0:
        ratio_line = torch.rand(b, generator=generator, device=device, dtype=torch.float64) * 0.7
        ratio_bound = torch.rand(b, generator=generator, device=device, dtype=torch.float64) * 0.5
    else:
        ratio_line = torch.full((b,), float(ratio), device=device, dtype=torch.float64)
        ratio_bound = ratio_line
    mask_line = torch.ones(b, 1, h, w, device=device)
    mask_bound = torch.ones(b, 1, h, w, device=device)
    for g in sorted({int(v) for v in grids.tolist()}):
        sel = (grids == g).nonzero().flatten()
        n = int(sel.numel())
        mask_line[sel] = block_mask((n, 4, h, w), g, ratio_line[sel], generator)
        mask_bound[sel] = block_mask((n, 4, h, w), g, ratio_bound[sel], generator)
    mask_line = mask_line.to(device=onehot.device, dtype=onehot.dtype)
    mask_bound = mask_bound.to(device=onehot.device, dtype=onehot.dtype)
    classes = torch.cat([onehot[:, 1:3] * mask_line, onehot[:, 3:4] * mask_bound], dim=1)
    background = (classes.sum(dim=1, keepdim=True) == 0).to(onehot.dtype)
    return torch.cat([background, classes], dim=1)
