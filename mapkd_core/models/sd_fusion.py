"""SD-map prior fusion (P-MapNet "SDMapCrossAttn", method doc section 1.0), for any BEV grid.

The OpenStreetMap raster (1 x H x W, values in {-1, +1}) is encoded to 1/8 of the grid by three stride-2 convolutions
(``conv_osm``) and fused into the 1/8-resolution BEV feature ``bev_small`` by a DETR-style transformer decoder: the
BEV cells are the queries, the SD cells the keys and values. A 2-D sine positional encoding, computed from the feature
size at every call, is added to queries and keys, so the block works on any grid and exports to ONNX.

Sizes on the paper grid (200 x 400): ``bev_small`` 192 x 25 x 50 -> ``bev_out`` 64 x 25 x 50.

Accepted sizes of ``bev_small`` (h x w): any. Three ``k4 s2 p1`` convolutions map n cells to ``floor(n / 2)``
three times, so the natural size is ``floor(floor(floor(H / 2) / 2) / 2)`` rows (and the same for columns): 25 x 50 on
200 x 400, 12 x 25 on 100 x 200 (where H / 8 = 12.5). That is what ``conv_osm`` produces from the SD raster and what
the models' own ``conv_bev`` produces from the fused BEV. If ``bev_small`` has another size (e.g. 13 x 25 from a
ceil-mode encoder), the SD features are bilinearly resized to it before the attention.

ONNX: ``torch.onnx.export(..., dynamo=False, opset_version=17)`` works; the graph is specialised to the export
sizes (whether the SD features are resized is decided while tracing, hence a benign TracerWarning).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .config import SdConfig

__all__ = ['SdCrossAttention', 'sine_position_encoding']


def sine_position_encoding(h: int, w: int, channels: int, temperature: float = 10000.0,
                           device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """DETR-style normalised 2-D sine positional encoding of an h x w feature map.

    Row positions 1..h are scaled to (0, 2*pi] (position / (h + 1e-6) * 2*pi), likewise columns. The first
    ``channels / 2`` channels encode the row (y), the last ``channels / 2`` the column (x). Within each half, channel
    pair (2k, 2k+1) holds ``sin(p / t_k), cos(p / t_k)`` with ``t_k = temperature ** (2k / (channels / 2))``.

    Args:
        h, w: feature size (plain ints or traced sizes; only tensor ops are used, so ONNX tracing works).
        channels: output channels, a multiple of 4 (d_model).
        temperature: frequency base (10000 as in DETR).

    Returns:
        (channels, h, w) tensor with values in [-1, 1].
    """
    if channels % 4:
        raise ValueError(f'sine_position_encoding: channels must be a multiple of 4, got {channels}')
    feats = channels // 2
    eps = 1e-6
    scale = 2.0 * math.pi
    rows = torch.arange(1, h + 1, device=device, dtype=dtype)
    cols = torch.arange(1, w + 1, device=device, dtype=dtype)
    rows = rows / (rows[-1] + eps) * scale
    cols = cols / (cols[-1] + eps) * scale
    k = torch.arange(feats, device=device, dtype=dtype)
    inv_t = temperature ** (-2.0 * torch.div(k, 2, rounding_mode='floor') / feats)  # (feats,)
    even = (torch.remainder(k, 2) == 0).to(dtype)  # 1 -> sin, 0 -> cos

    def encode(p: Tensor) -> Tensor:  # (n,) -> (feats, n)
        arg = p[None, :] * inv_t[:, None]
        return even[:, None] * torch.sin(arg) + (1.0 - even[:, None]) * torch.cos(arg)

    enc_y = encode(rows)[:, :, None].expand(feats, h, w)
    enc_x = encode(cols)[:, None, :].expand(feats, h, w)
    return torch.cat([enc_y, enc_x], dim=0)


class _DecoderLayer(nn.Module):
    """One post-norm DETR decoder layer: self-attention, cross-attention to the SD tokens, FFN.

    Every sub-layer is ``x = norm(x + dropout(sublayer(x)))``; the positional encoding is added to queries and keys,
    never to values.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn)
        self.linear2 = nn.Linear(ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mem: Tensor, pos: Tensor) -> Tensor:
        """x: (B, N, d) BEV tokens; mem: (B, M, d) SD tokens; pos: (1, N, d) (N == M) positional encoding."""
        q = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0]))
        x = self.norm2(x + self.dropout2(self.cross_attn(x + pos, mem + pos, mem, need_weights=False)[0]))
        ffn = self.linear2(self.ffn_dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout3(ffn))


class SdCrossAttention(nn.Module):
    """Fuse the SD-map raster into the 1/8-resolution BEV feature with a DETR-style cross-attention decoder.

    Args:
        cfg: decoder sizes (d_model, heads, layers, ffn, dropout) and ``conv_osm`` channels.
        bev_channels: channels of ``bev_small`` (192 in P-MapNet: camera 64 + LiDAR 128).

    Forward:
        bev_small (B, bev_channels, h, w): the fused BEV after three stride-2 convolutions (see the module docstring
        for the accepted h x w); sd_prior (B, 1, H, W): the OSM raster in {-1, +1}.
        Returns bev_out (B, d_model, h, w).

    Submodules: ``conv_osm`` (SD encoder), ``input_proj`` (1x1 conv bev_channels -> d_model), ``layers``
    (decoder layers) and ``norm`` (final LayerNorm).
    """

    def __init__(self, cfg: SdConfig, bev_channels: int = 192):
        super().__init__()
        d = cfg.d_model
        if d % cfg.heads:
            raise ConfigError(f'SdCrossAttention: d_model {d} must be divisible by heads {cfg.heads}')
        if d % 4:
            raise ConfigError(f'SdCrossAttention: d_model {d} must be a multiple of 4 (2-D sine encoding)')
        c0, c1 = cfg.osm_channels
        self.d_model = d
        self.conv_osm = nn.Sequential(
            nn.Conv2d(1, c0, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c0, c1, kernel_size=4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, d, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(d),
            nn.ReLU(inplace=True),
        )
        self.input_proj = nn.Conv2d(bev_channels, d, kernel_size=1)
        self.layers = nn.ModuleList(_DecoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, bev_small: Tensor, sd_prior: Tensor) -> Tensor:
        b, _, h, w = bev_small.shape
        sd = self.conv_osm(sd_prior)
        if sd.shape[-2:] != bev_small.shape[-2:]:
            sd = F.interpolate(sd, size=(h, w), mode='bilinear', align_corners=False)
        bev = self.input_proj(bev_small)
        pos = sine_position_encoding(h, w, self.d_model, device=bev.device, dtype=bev.dtype)
        pos = pos.flatten(1).transpose(0, 1).unsqueeze(0)  # (1, h*w, d)
        x = bev.flatten(2).transpose(1, 2)  # (B, h*w, d)
        mem = sd.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, mem, pos)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, self.d_model, h, w)
