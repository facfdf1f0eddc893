"""HDMapNet's neural view transformer and IPM placement (method doc section 1.0), generalised to any grid.

1. :class:`MLPViewTransformer`: per camera, an MLP over the flattened feature map (shared across channels) maps the
   fh x fw image feature to a bv_h x bv_w "camera-frame top-down" plane, bv = grid / ``bv_downsample`` (40 x 80 on
   the paper grid). Six separate MLPs, ~10.8 M parameters each at paper size.
2. :class:`IPM`: each camera's plane is warped into the ego BEV by a fixed geometric sampler, exactly as HDMapNet's
   ``IPM`` (extrinsic mode, checked against the authors' code on the reference fixtures). The sampling grid has
   H/2 x W/2 points in IPM units, one unit being half a metre on the paper grid (``units_per_metre = 0.3 / dx``):
   HDMapNet spreads them with ``linspace`` from edge to edge, x in [-60, 60] (200 points) and y in [-30, 30]
   (100 points) on the 60 x 30 m grid, i.e. from ``xmin * units_per_metre`` to ``xmax * units_per_metre``.
   Every grid point p (z = 0) goes to camera coordinates c = R^T (p - t) with the camera-to-ego rotation R and the
   translation t in metres (unscaled, as in HDMapNet; the MLP learns around this "virtual metre"), and is read from
   the plane at column c_z - bv_w / 8 and row c_x + bv_h / 2, bilinearly. HDMapNet's sampler gives 0 unless
   0 <= column < bv_w - 1 and 0 <= row < bv_h - 1 (its clipped corner weights cancel outside), so a point outside
   a camera's plane contributes 0, not the border value. The warped planes are fused with a max over cameras and
   upsampled x2 (bilinear, align_corners) to the grid.

The extrinsics are a model input: the sampling grid is computed in forward with plain tensor ops (ONNX-exportable;
``grid_sample`` needs opset >= 16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GridConfig
from .blocks import resize


class MLPViewTransformer(nn.Module):
    """(B, N, C, fh, fw) -> (B, N, C, bv_h, bv_w), one two-layer MLP per camera over the flattened positions."""

    def __init__(self, n_cams: int, feature_hw: tuple[int, int], bv_hw: tuple[int, int]):
        super().__init__()
        fin = feature_hw[0] * feature_hw[1]
        fout = bv_hw[0] * bv_hw[1]
        self.bv_hw = tuple(bv_hw)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(fin, fout), nn.ReLU(True), nn.Linear(fout, fout),
                                                nn.ReLU(True)) for _ in range(n_cams))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, c = feats.shape[:3]
        flat = feats.flatten(3)
        out = torch.stack([mlp(flat[:, i]) for i, mlp in enumerate(self.mlps)], dim=1)
        return out.view(b, n, c, *self.bv_hw)


class IPM(nn.Module):
    """Warp N camera-frame planes (B, N, C, bv_h, bv_w) into the BEV (B, C, H, W) given cam_to_ego (B, N, 4, 4)."""

    def __init__(self, grid: GridConfig, bv_hw: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.bv_h, self.bv_w = bv_hw
        self.units_per_metre = 0.3 / grid.xbound[2]
        hh, hw = grid.H // 2, grid.W // 2
        u = self.units_per_metre
        # HDMapNet's plane grid: linspace from edge to edge (float32, as torch.linspace makes it there)
        xs = torch.linspace(grid.xbound[0] * u, grid.xbound[1] * u, hw)
        ys = torch.linspace(grid.ybound[0] * u, grid.ybound[1] * u, hh)
        yy, xx = torch.meshgrid(ys, xs, indexing='ij')  # rows along y, columns along x
        pts = torch.stack([xx, yy, torch.zeros_like(xx)], dim=-1)
        self.register_buffer('points', pts.reshape(-1, 3), persistent=False)
        self.half_hw = (hh, hw)

    def sample_coords(self, cam_to_ego: torch.Tensor) -> torch.Tensor:
        """(B, N, P, 2) plane coordinates (column, row) of every half-resolution BEV point, per camera."""
        rot = cam_to_ego[..., :3, :3]
        trans = cam_to_ego[..., :3, 3]
        rel = self.points[None, None] - trans[:, :, None, :]  # (B, N, P, 3)
        cam = torch.einsum('bnji,bnpj->bnpi', rot, rel)  # R^T (p - t)
        col = cam[..., 2] - self.bv_w / 8.0
        row = cam[..., 0] + self.bv_h / 2.0
        return torch.stack([col, row], dim=-1)

    def forward(self, planes: torch.Tensor, cam_to_ego: torch.Tensor) -> torch.Tensor:
        b, n, c = planes.shape[:3]
        coords = self.sample_coords(cam_to_ego)
        col, row = coords[..., 0], coords[..., 1]
        norm = torch.stack([col / (self.bv_w - 1) * 2 - 1, row / (self.bv_h - 1) * 2 - 1], -1)
        warped = F.grid_sample(planes.flatten(0, 1), norm.flatten(0, 1)[:, :, None, :], mode='bilinear',
                               padding_mode='zeros', align_corners=True)  # (B*N, C, P, 1)
        # HDMapNet's sampler: nothing outside 0 <= col < bv_w - 1, 0 <= row < bv_h - 1
        inside = (col >= 0) & (col < self.bv_w - 1) & (row >= 0) & (row < self.bv_h - 1)
        warped = warped * inside.flatten(0, 1)[:, None, :, None].to(warped.dtype)
        warped = warped.view(b, n, c, *self.half_hw)
        return resize(warped.max(dim=1).values, self.grid.shape)
