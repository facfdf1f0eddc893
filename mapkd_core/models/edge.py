"""Blocks of our edge student, built for a Jetson: same inputs and outputs as the paper student, a fraction of its
compute (measured in benchmarks/bench_models.py).

Where the paper student spends its compute:
* six per-camera MLP view transformers (~65 M parameters, ~4 GMACs) that must be re-learned for every camera rig;
* HDMapNet's BevEncode: three full-resolution decoder heads (~170 GMACs at 200 x 400).

What the edge student does instead:
* :class:`GroundSampler`, a geometric view transform with no parameters: every BEV cell centre (at half the grid
  resolution) on the ground plane z = 0 is projected into every camera with the intrinsics and extrinsics given as
  inputs, the stride-8 image feature is read there bilinearly (``grid_sample``), and the cameras that see the point
  are averaged. Map elements lie on the ground, so the ground-plane assumption is exact for them; and a new vehicle
  needs no retraining of the view transform, only its calibration.
* :class:`EdgeNeck`: depthwise-separable residual stages at 1/2, 1/4 and 1/8 of the grid (the 1/8 stage has the
  teacher's ``bev_small`` shape, 192 x H/8 x W/8, and is the TGPD feature), a top-down path back to 1/2, then an
  upsampling to the full grid, a depthwise 3x3 refinement and 1x1 heads.
* The image features are sampled at stride 8 (the encoder fuses once more onto EfficientNet's stride-8 endpoint)
  and two BEV coordinate channels (x, y scaled to [-1, 1]) are appended, so that the neck knows where each cell is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GridConfig
from ..geometry import cell_centres
from .blocks import bilinear_corners, conv_bn_relu, resize
from .config import EdgeConfig


class GroundSampler(nn.Module):
    """Image features (B, N, C, fh, fw) -> BEV (B, C, H/2, W/2) by projecting ground points into each camera."""

    def __init__(self, grid: GridConfig, image_hw: tuple[int, int], min_depth: float = 0.5):
        super().__init__()
        half = GridConfig(xbound=(grid.xbound[0], grid.xbound[1], grid.xbound[2] * 2),
                          ybound=(grid.ybound[0], grid.ybound[1], grid.ybound[2] * 2), zbound=grid.zbound)
        xy = torch.as_tensor(cell_centres(half), dtype=torch.float32).reshape(-1, 2)
        self.register_buffer('points', torch.cat([xy, torch.zeros_like(xy[:, :1])], 1), persistent=False)
        self.half_hw = (half.H, half.W)
        self.image_hw = tuple(image_hw)
        self.min_depth = min_depth

    def project(self, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor):
        """Normalised sampling coordinates (B, N, P, 2) in [-1, 1] and a validity mask (B, N, P)."""
        rot = cam_to_ego[..., :3, :3]
        rel = self.points[None, None] - cam_to_ego[:, :, None, :3, 3]
        cam = torch.einsum('bnji,bnpj->bnpi', rot, rel)
        z = cam[..., 2]
        zs = z.clamp(min=1e-3)
        uvw = torch.einsum('bnij,bnpj->bnpi', intrinsics, cam)
        u = uvw[..., 0] / zs
        v = uvw[..., 1] / zs
        h, w = self.image_hw
        # pixel u (centre convention) -> grid_sample coordinate with align_corners=False: (u + 0.5) / w * 2 - 1
        gx = (u + 0.5) / w * 2 - 1
        gy = (v + 0.5) / h * 2 - 1
        valid = (z > self.min_depth) & (gx > -1) & (gx < 1) & (gy > -1) & (gy < 1)
        return torch.stack([gx, gy], -1), valid

    def forward(self, feats: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor) -> torch.Tensor:
        b, n, c = feats.shape[:3]
        coords, valid = self.project(intrinsics, cam_to_ego)
        coords = torch.where(valid[..., None], coords, torch.full_like(coords, 2.0))  # outside: zero padding
        sampled = F.grid_sample(feats.flatten(0, 1), coords.flatten(0, 1)[:, :, None, :], mode='bilinear',
                                padding_mode='zeros', align_corners=False)  # (B*N, C, P, 1)
        sampled = sampled.view(b, n, c, -1)
        weight = valid.to(feats.dtype)[:, :, None, :]
        bev = (sampled * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        return bev.view(b, c, *self.half_hw)

    def forward_gathered(self, feats: torch.Tensor, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for export: the same bilinear sampling (torch's unnormalisation and corner weights,
        ``align_corners=False``, zero padding) and camera average, written as one gather of the four corners in
        every camera per BEV cell and one batched matrix product with their weights (corner weight x validity / number
        of cameras that see the cell). ONNX Runtime runs ``GridSample`` slowly on the CPU, and the gather per corner
        that replaced it (:func:`mapkd_core.runtime.export.gather_grid_sample`) made four passes of multiplies and
        adds over (cameras x cells x channels) before the average; this reads the gathered rows once (30 % less
        inference time for the paper-grid edge student under ONNX Runtime on one thread, measured 2026-12-01). Equal
        to :meth:`forward` within float rounding."""
        b, n, c, h, w = feats.shape
        coords, valid = self.project(intrinsics, cam_to_ego)
        x = ((coords[..., 0] + 1) * w - 1) / 2  # (B, N, P) pixel coordinates
        y = ((coords[..., 1] + 1) * h - 1) / 2
        seen = valid.to(feats.dtype)
        scale = seen / seen.sum(1, keepdim=True).clamp(min=1.0)  # validity / number of cameras that see the cell
        base = torch.arange(b * n, dtype=torch.int64, device=feats.device).view(b, n, 1) * (h * w)
        corners = bilinear_corners(x, y, h, w)
        rows = [base + idx for idx, _ in corners]
        weights = [wt * scale for _, wt in corners]
        p = x.shape[-1]
        rows = torch.stack(rows, -1).permute(0, 2, 1, 3).reshape(b, p, n * 4)  # per cell: 4 corners x N cameras
        weights = torch.stack(weights, -1).permute(0, 2, 1, 3).reshape(b, p, 1, n * 4)
        table = feats.permute(0, 1, 3, 4, 2).reshape(b * n * h * w, c)  # one row of channels per feature pixel
        bev = torch.matmul(weights, table[rows.reshape(-1)].view(b, p, n * 4, c)).squeeze(-2)  # (B, P, C)
        return bev.permute(0, 2, 1).reshape(b, c, *self.half_hw)


class DSBlock(nn.Module):
    """Depthwise-separable residual block: 3x3 depthwise conv, BN, ReLU, 1x1 conv, BN, + input, ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.dw(x)), inplace=True)
        return F.relu(x + self.bn2(self.pw(y)), inplace=True)


def _down(cin: int, cout: int) -> nn.Sequential:
    """Stride-2 depthwise-separable downsampling: 3x3 depthwise s2, BN, ReLU, 1x1 to cout, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class EdgeNeck(nn.Module):
    """BEV (B, cin, H/2, W/2) -> heads at ``size`` (the full grid) and the 1/8 TGPD feature; see the module
    docstring."""

    def __init__(self, cin: int, cfg: EdgeConfig, heads: dict[str, int]):
        super().__init__()
        c1, c2, c3 = cfg.neck_channels
        n1, n2, n3 = cfg.blocks
        self.stem = conv_bn_relu(cin, c1, 1)
        self.stage1 = nn.Sequential(*[DSBlock(c1) for _ in range(n1)])
        self.stage2 = nn.Sequential(_down(c1, c2), *[DSBlock(c2) for _ in range(n2)])
        self.stage3 = nn.Sequential(_down(c2, c3), *[DSBlock(c3) for _ in range(n3)])
        self.lat3 = nn.Conv2d(c3, c2, 1, bias=False)
        self.lat2 = nn.Conv2d(c2, c1, 1, bias=False)
        self.fuse = nn.Sequential(nn.BatchNorm2d(c1), nn.ReLU(True), DSBlock(c1),
                                  conv_bn_relu(c1, cfg.head_channels, 1))
        hc = cfg.head_channels
        # at the grid's full resolution: a depthwise 3x3 refines the upsampled feature before the 1x1 heads, so that
        # lines one or two cells wide can be drawn
        self.refine = nn.Sequential(nn.Conv2d(hc, hc, 3, 1, 1, groups=hc, bias=False), nn.BatchNorm2d(hc),
                                    nn.ReLU(True))
        self.heads = nn.ModuleDict({name: nn.Conv2d(hc, n, 1) for name, n in heads.items()})

    def forward(self, x: torch.Tensor, size) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x1 = self.stage1(self.stem(x))
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        t2 = x2 + resize(self.lat3(x3), x2.shape[-2:])
        t1 = x1 + resize(self.lat2(t2), x1.shape[-2:])
        y = self.refine(resize(self.fuse(t1), size))
        return {name: head(y) for name, head in self.heads.items()}, x3
