"""HDMapNet's neural view transformer and IPM placement (method doc section 1.0), generalised to any grid.

1. :class:`MLPViewTransformer`: per camera, an MLP over the flattened feature map (shared across channels) maps the
   fh x fw image feature to a bv_h x bv_w "camera-frame top-down" plane, bv = grid / ``bv_downsample`` (40 x 80 on
   the paper grid). Six separate MLPs, ~10.8 M parameters each at paper size.
2. :class:`IPM`: each camera's plane is warped into the ego BEV by a fixed geometric sampler. The sampling grid is the
   BEV at half resolution (H/2 x W/2 cell centres) in IPM units: HDMapNet's IPM grid spans x in [-60, 60] and
   y in [-30, 30] at 0.6 for the 60 x 30 m grid, i.e. one unit is half a metre. We keep that scale, written as
   ``units_per_metre = 0.3 / dx`` (2 on the paper grid). Every grid point p (z = 0) goes to camera coordinates
   c = R^T (p - t) with the camera-to-ego rotation R and the translation t in metres (unscaled, as in HDMapNet; the
   MLP learns around this "virtual metre"), and is read from the plane at column c_z - bv_w / 8 and row
   c_x + bv_h / 2, bilinearly, clamped at the border. The warped planes are fused with a max over cameras and
   upsampled x2 to the grid.

The extrinsics are a model input: the sampling grid is computed in forward with plain tensor ops (ONNX-exportable;
``grid_sample`` needs opset >= 16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GridConfig
from ..geometry import cell_centres
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
        half = GridConfig(xbound=(grid.xbound[0], grid.xbound[1], grid.xbound[2] * 2),
                          ybound=(grid.ybound[0], grid.ybound[1], grid.ybound[2] * 2), zbound=grid.zbound)
        xy = torch.as_tensor(cell_centres(half), dtype=torch.float32) * self.units_per_metre  # (H/2, W/2, 2)
        pts = torch.cat([xy, torch.zeros_like(xy[..., :1])], dim=-1)
        self.register_buffer('points', pts.reshape(-1, 3), persistent=False)
        self.half_hw = (half.H, half.W)

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
        norm = torch.stack([coords[..., 0] / (self.bv_w - 1) * 2 - 1, coords[..., 1] / (self.bv_h - 1) * 2 - 1], -1)
        warped = F.grid_sample(planes.flatten(0, 1), norm.flatten(0, 1)[:, :, None, :], mode='bilinear',
                               padding_mode='border', align_corners=True)  # (B*N, C, P, 1)
        warped = warped.view(b, n, c, *self.half_hw)
        return resize(warped.max(dim=1).values, self.grid.shape)
