"""PointPillars LiDAR encoder of the teacher: points -> a BEV feature map on the project's BEV grid.

The pillars are the cells of the BEV grid (one z cell spanning ``zbound``), so the output is aligned with every other
BEV tensor of the project: index ``[b, c, row, col]`` with rows along y and columns along x, as defined by
:func:`mapkd_core.geometry.bev_affine`.

Pipeline (method doc, PointPillars as used by HDMapNet / P-MapNet; written from that description):

1. Each point is assigned to the cell that contains it. Points that are masked out or lie outside the grid
   (x, y outside the grid bounds, z outside ``[zmin, zmax)``) are ignored everywhere.
2. Per-point features (``point_features + 10`` values, 15 for the dataset's 5):
   the raw values, the number of points in the pillar, x/y/z minus the pillar's point centroid, the centroid itself,
   and x/y/z minus the pillar's geometric centre (cell centre in x and y, middle of ``zbound`` in z).
3. A shared PointNet layer (1x1 Conv1d + BatchNorm1d + ReLU) per point, then the mean of the point features of each
   pillar is written to a ``(B, point_channels, H, W)`` canvas (empty pillars are 0). Only valid points are fed to
   the PointNet, so padding rows never touch the BatchNorm statistics.
4. A 2D backbone of three blocks (strides 1, 2, 4); the coarser two block outputs are upsampled to H x W (bilinear,
   align_corners, as HDMapNet's ``up2`` / ``up3``), then each of the three gets a 3x3 conv-BN-ReLU; concatenation and
   a head ``3x3 conv -> 3x3 conv -> 1x1 conv``. With ``lateral: native`` (CPU teacher, not in the method) the two
   coarser lateral convolutions run before the upsampling, at 1/2 and 1/4 of the grid. (HDMapNet runs this backbone on the transposed (x, y) layout; the
   importer transposes its kernels, which gives the same numbers on our (y, x) layout.)

The head's two hidden widths are ``backbone_channels[2]`` and ``backbone_channels[1]`` (256 and 128 at the paper
config: ``448 -> 256 -> 128 -> out_channels``), so small test configs stay small.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import GridConfig
from ..errors import ConfigError
from ..geometry import bev_affine, index_to_metres
from .config import PillarsConfig

#: per-point values added to the raw ones: count, offset to centroid (3), centroid (3), offset to pillar centre (3)
EXTRA_FEATURES = 10


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """``kernel x kernel`` convolution (no bias, 'same' padding), BatchNorm2d and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _block(cin: int, cout: int, layers: int, stride: int) -> nn.Sequential:
    """``layers`` 3x3 conv+BN+ReLU layers; the first one has the given stride and changes the channel count."""
    if layers < 1:
        raise ValueError(f'a backbone block needs at least one layer, got {layers}')
    mods = [_conv_bn_relu(cin, cout, 3, stride)]
    mods += [_conv_bn_relu(cout, cout, 3, 1) for _ in range(layers - 1)]
    return nn.Sequential(*mods)


class PointPillarsEncoder(nn.Module):
    """PointPillars on the BEV grid: ``(B, P, F)`` points + ``(B, P)`` mask -> ``(B, out_channels, H, W)``.

    Args:
        grid: the BEV grid; one pillar per cell, ``zbound`` gives the accepted z range ``[zmin, zmax)``.
        cfg: PointNet width, backbone widths and depths.
        out_channels: channels of the output BEV feature (128 for the teacher).
        point_features: raw values per point; the first three must be x, y, z in the ego frame (metres).
    """

    def __init__(self, grid: GridConfig, cfg: PillarsConfig, out_channels: int = 128, point_features: int = 5):
        super().__init__()
        if point_features < 3:
            raise ConfigError(f'points need at least x, y, z; got point_features={point_features}')
        if len(cfg.backbone_channels) != 3 or len(cfg.backbone_layers) != 3:
            raise ConfigError('PillarsConfig.backbone_channels and backbone_layers must have three entries each')
        self.grid = grid
        self.H, self.W = grid.H, grid.W
        self.raw_features = point_features
        self.in_features = point_features + EXTRA_FEATURES
        self.point_channels = cfg.point_channels
        self.out_channels = out_channels
        if cfg.lateral not in ('full', 'native'):
            raise ConfigError(f"pillars.lateral must be 'full' or 'native', got {cfg.lateral!r}")
        self.lateral = cfg.lateral

        # metres -> continuous pixel (u = column, v = row) from THE mapping; cell index = floor(pixel + 0.5)
        a = bev_affine(grid)
        self._ax, self._bx = float(a[0, 0]), float(a[0, 2])
        self._ay, self._by = float(a[1, 1]), float(a[1, 2])
        self._zmin, self._zmax = float(grid.zbound[0]), float(grid.zbound[1])
        self._zcentre = 0.5 * (self._zmin + self._zmax)
        # cell centres in metres: x of every column, y of every row
        cx, _ = index_to_metres(grid, np.zeros(self.W), np.arange(self.W))
        _, cy = index_to_metres(grid, np.arange(self.H), np.zeros(self.H))
        self.register_buffer('centre_x', torch.as_tensor(cx, dtype=torch.float32), persistent=False)
        self.register_buffer('centre_y', torch.as_tensor(cy, dtype=torch.float32), persistent=False)

        # PointNet: one shared linear layer per point
        self.pointnet = nn.Sequential(
            nn.Conv1d(self.in_features, cfg.point_channels, 1, bias=False),
            nn.BatchNorm1d(cfg.point_channels),
            nn.ReLU(inplace=True),
        )

        c0, c1, c2 = cfg.backbone_channels
        n0, n1, n2 = cfg.backbone_layers
        self.block1 = _block(cfg.point_channels, c0, n0, 1)
        self.block2 = _block(c0, c1, n1, 2)
        self.block3 = _block(c1, c2, n2, 2)
        self.lateral1 = _conv_bn_relu(c0, c0)
        self.lateral2 = _conv_bn_relu(c1, c1)
        self.lateral3 = _conv_bn_relu(c2, c2)
        self.head = nn.Sequential(
            _conv_bn_relu(c0 + c1 + c2, c2),
            _conv_bn_relu(c2, c1),
            nn.Conv2d(c1, out_channels, 1),
        )

    # ----------------------------------------------------------------------------------------------------------
    # points -> pillars

    def pillar_index(self, points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cell of every point.

        Returns ``(row, col, flat, valid)``, all ``(B, P)``: row/col of the containing cell, the flat pillar index
        ``b * H * W + row * W + col`` and whether the point is used (mask True, inside the grid in x, y and z).
        Invalid points get row = col = 0 and the flat index of their sample's cell (0, 0); use ``valid``.
        The index is computed in float64 with the numbers of :func:`bev_affine`, exactly as
        :func:`mapkd_core.geometry.metres_to_index` does.
        """
        b = points.shape[0]
        xyz = points[..., :3].double()
        u = xyz[..., 0] * self._ax + self._bx + 0.5
        v = xyz[..., 1] * self._ay + self._by + 0.5
        z = xyz[..., 2]
        valid = (mask.bool() & (u >= 0) & (u < self.W) & (v >= 0) & (v < self.H)
                 & (z >= self._zmin) & (z < self._zmax))
        col = torch.where(valid, torch.floor(u), torch.zeros_like(u)).long()
        row = torch.where(valid, torch.floor(v), torch.zeros_like(v)).long()
        batch = torch.arange(b, device=points.device).unsqueeze(1)
        flat = batch * (self.H * self.W) + row * self.W + col
        return row, col, flat, valid

    def _features(self, points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(features (B, P, F + 10), flat pillar index (B, P), valid (B, P)); invalid points have zero features."""
        if points.dim() != 3 or points.shape[-1] != self.raw_features:
            raise ValueError(f'points must be (B, P, {self.raw_features}), got {tuple(points.shape)}')
        if mask.shape != points.shape[:2]:
            raise ValueError(f'mask must be {tuple(points.shape[:2])}, got {tuple(mask.shape)}')
        b, p, _ = points.shape
        row, col, flat, valid = self.pillar_index(points, mask)
        w = valid.to(points.dtype)
        xyz = points[..., :3] * w.unsqueeze(-1)

        n_cells = b * self.H * self.W
        flat1 = flat.reshape(-1)
        count = points.new_zeros(n_cells).index_add_(0, flat1, w.reshape(-1))
        xyz_sum = points.new_zeros(n_cells, 3).index_add_(0, flat1, xyz.reshape(-1, 3))
        centroid_cells = xyz_sum / count.clamp(min=1.0).unsqueeze(-1)
        n_pts = count[flat1].view(b, p, 1)
        centroid = centroid_cells[flat1].view(b, p, 3)

        centre = torch.stack([
            self.centre_x.to(points.dtype)[col],
            self.centre_y.to(points.dtype)[row],
            torch.full_like(points[..., 2], self._zcentre),
        ], dim=-1)
        feats = torch.cat([points, n_pts, points[..., :3] - centroid, centroid, points[..., :3] - centre], dim=-1)
        return feats * w.unsqueeze(-1), flat, valid

    def point_features(self, points: Tensor, mask: Tensor) -> Tensor:
        """``(B, P, F + 10)`` per-point features (zero for masked or out-of-grid points).

        Order: the F raw values; the number of points in the pillar; x, y, z minus the pillar's point centroid;
        the centroid (x, y, z); x, y, z minus the pillar's geometric centre (cell centre, middle of zbound).
        """
        return self._features(points, mask)[0]

    def scatter(self, points: Tensor, mask: Tensor) -> Tensor:
        """``(B, P, F)`` points, ``(B, P)`` mask -> ``(B, point_channels, H, W)`` pillar canvas (mean over points)."""
        feats, flat, valid = self._features(points, mask)
        b = points.shape[0]
        n_cells = b * self.H * self.W
        sel = valid.reshape(-1)
        x = feats.reshape(-1, self.in_features)[sel]          # (N, F + 10) valid points only
        idx = flat.reshape(-1)[sel]
        canvas = feats.new_zeros(n_cells, self.point_channels)
        if x.shape[0] > 0:
            y = self.pointnet(x.t().unsqueeze(0)).squeeze(0).t()   # (N, point_channels)
            count = feats.new_zeros(n_cells).index_add_(0, idx, torch.ones_like(idx, dtype=feats.dtype))
            canvas = canvas.index_add(0, idx, y) / count.clamp(min=1.0).unsqueeze(-1)
        return canvas.view(b, self.H, self.W, self.point_channels).permute(0, 3, 1, 2).contiguous()

    # ----------------------------------------------------------------------------------------------------------

    def forward(self, points: Tensor, mask: Tensor) -> Tensor:
        """``(B, P, F)`` points, ``(B, P)`` bool mask -> ``(B, out_channels, H, W)`` BEV feature."""
        canvas = self.scatter(points, mask)
        f1 = self.block1(canvas)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        size = f1.shape[-2:]
        m1 = self.lateral1(f1)
        if self.lateral == 'full':
            # HDMapNet's up2 / up3: upsample (bilinear, align_corners) to full resolution first, then the 3x3 conv
            m2 = self.lateral2(_up(f2, size))
            m3 = self.lateral3(_up(f3, size))
        else:
            # 'native': the same layers at the blocks' own resolution, then upsampled (4x / 16x cheaper)
            m2 = _up(self.lateral2(f2), size)
            m3 = _up(self.lateral3(f3), size)
        return self.head(torch.cat([m1, m2, m3], dim=1))


def _up(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)
