"""Lift-Splat-Shoot: the coach's simulated-LiDAR branch (method doc section 2).

Its own EfficientNet-B0 encoder fuses the stride-16/32 endpoints to ``mid_channels`` (512); a 1x1 conv gives D depth
logits and C context channels per feature pixel; the depth distribution (softmax over D bins) times the context is
lifted onto a frustum of D x fh x fw points per camera, placed in the ego frame with the intrinsics (at the network
image size) and the camera-to-ego extrinsics, and sum-pooled into the BEV grid cells (plain ``index_add_``, no
torch-scatter). A 1x1 conv maps C to ``out_channels`` (128: the place of the LiDAR BEV in the teacher).

Frustum (as LSS / MapKD): depth bin k sits at dmin + k * step (4, 5, ..., 44 m for [4, 45, 1]); feature pixel
(i, j) looks through the image point u = j (w - 1) / (fw - 1), v = i (h - 1) / (fh - 1), i.e. the points are spread
linearly over 0 .. w-1 and 0 .. h-1 (``linspace``). A point goes to the cell ``trunc((p - lower edge) / cell)`` per
axis, computed in float32 from the grid's float32 cell size and centre as MapKD's ``voxel_pooling`` does; the
truncation towards zero keeps points up to one cell below the lower edges (x, y and z) in the first cell, as theirs
does. There is no depth supervision: the branch learns through the task and distillation losses only, as in MapKD.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import GridConfig, ImageConfig
from .blocks import CamEncoder
from .config import LssConfig


class LiftSplat(nn.Module):
    def __init__(self, grid: GridConfig, image: ImageConfig, cfg: LssConfig, out_channels: int = 128):
        super().__init__()
        self.grid = grid
        self.depth_bins = cfg.depth_bins
        self.context_channels = cfg.context_channels
        self.encoder = CamEncoder(cfg.encoder, (image.height, image.width))
        self.depthnet = nn.Conv2d(cfg.encoder.out_channels, self.depth_bins + self.context_channels, 1)
        self.expand = nn.Conv2d(self.context_channels, out_channels, 1)
        fh, fw = self.encoder.feature_hw
        depths = torch.arange(*cfg.dbound, dtype=torch.float32)[:self.depth_bins]
        us = torch.linspace(0, image.width - 1, fw)
        vs = torch.linspace(0, image.height - 1, fh)
        d, v, u = torch.meshgrid(depths, vs, us, indexing='ij')
        # homogeneous image points scaled by depth: K^-1 (u d, v d, d) is the camera-frame point
        self.register_buffer('frustum', torch.stack([u * d, v * d, d], dim=-1), persistent=False)  # (D, fh, fw, 3)
        # cell of a point: trunc((p - (centre0 - cell / 2)) / cell), in float32 (MapKD's gen_dx_bx numbers)
        cell = torch.tensor([grid.xbound[2], grid.ybound[2], grid.zbound[2]], dtype=torch.float32)
        centre0 = torch.tensor([b[0] + b[2] / 2.0 for b in (grid.xbound, grid.ybound, grid.zbound)],
                               dtype=torch.float32)
        self.register_buffer('cell', cell, persistent=False)
        self.register_buffer('lower', centre0 - cell / 2.0, persistent=False)
        self.n_z = int(round((grid.zbound[1] - grid.zbound[0]) / grid.zbound[2]))

    def geometry(self, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor) -> torch.Tensor:
        """(B, N, D, fh, fw, 3) ego-frame points of the frustum."""
        k_inv = torch.linalg.inv(intrinsics)
        rays = torch.einsum('bnij,dhwj->bndhwi', k_inv, self.frustum)
        pts = torch.einsum('bnij,bndhwj->bndhwi', cam_to_ego[..., :3, :3], rays)
        return pts + cam_to_ego[:, :, None, None, None, :3, 3]

    def lift(self, images: torch.Tensor, prefix=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth distribution (B, N, D, fh, fw) and context (B, N, C, fh, fw) from (B, N, 3, h, w) images
        (``prefix``: the encoder's cached frozen prefix, see ``CamEncoder.cameras``)."""
        b, n = images.shape[:2]
        x = self.depthnet(self.encoder.cameras(images, prefix).flatten(0, 1))
        depth = x[:, :self.depth_bins].softmax(dim=1)
        context = x[:, self.depth_bins:]
        return depth.view(b, n, *depth.shape[1:]), context.view(b, n, *context.shape[1:])

    def splat(self, depth: torch.Tensor, context: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Sum-pool depth x context features at ``points`` into (B, C, H, W) BEV cells."""
        b = depth.shape[0]
        h, w = self.grid.shape
        feats = depth[:, :, :, None] * context[:, :, None]  # (B, N, D, C, fh, fw)
        feats = feats.permute(0, 1, 2, 4, 5, 3).reshape(b, -1, context.shape[2])  # (B, M, C)
        pts = points.reshape(b, -1, 3)
        idx = ((pts - self.lower) / self.cell).long()  # truncation towards zero, as MapKD's .long()
        col, row, zi = idx[..., 0], idx[..., 1], idx[..., 2]
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (zi >= 0) & (zi < self.n_z)
        batch = torch.arange(b, device=pts.device)[:, None].expand_as(col)
        # points outside the grid go to one extra "dump" row that is dropped: no data-dependent indexing
        flat = torch.where(ok, batch * h * w + row * w + col, torch.full_like(col, b * h * w))
        canvas = feats.new_zeros(b * h * w + 1, feats.shape[-1])
        canvas.index_add_(0, flat.reshape(-1), feats.reshape(-1, feats.shape[-1]))
        canvas = canvas[:-1]
        return canvas.view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor,
                prefix=None) -> torch.Tensor:
        depth, context = self.lift(images, prefix)
        bev = self.splat(depth, context, self.geometry(intrinsics, cam_to_ego))
        return self.expand(bev)
