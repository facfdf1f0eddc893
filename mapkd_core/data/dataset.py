"""The torch Dataset over a nuScenes split, and its collate function.

Each item is a dict of tensors (shapes for N cameras, an h x w network image and an H x W BEV grid):

=================  ======================  =====================================================================
key                shape / dtype           meaning
=================  ======================  =====================================================================
images             (N, 3, h, w) float32    RGB, resized without crop, ImageNet-normalised
intrinsics         (N, 3, 3) float32       at the network image size (the resize is folded in)
cam_to_ego         (N, 4, 4) float32       camera -> ego extrinsics
lidar              (P, 5) float32          x, y, z, intensity, time lag [s] in the ego frame (zero padded)
lidar_mask         (P,) bool               which rows of ``lidar`` are real points
semantic           (C, H, W) uint8         one-hot map classes (channel 0 background), see CLASS_NAMES
instance           (H, W) int32            instance ids (0 = none)
direction          (2, H, W) uint8         forward / backward heading bins; ``direction_onehot`` gives the
                                           (37, H, W) two-hot target on the training device
sd_prior           (1, H, W) float32       OSM roads, +1 road / -1 elsewhere
ego_to_global      (4, 4) float64          the sample's ego pose
token, city,       str                     sample token, city, scene name
scene
=================  ======================  =====================================================================

``images``/``intrinsics``, ``lidar``/``lidar_mask``, the map ground truth and ``sd_prior`` are present only when the
dataset config loads them.
The direction target is kept as two bins per pixel instead of 37 float channels (11.8 MB per sample at 200x400).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..config import DataConfig
from .images import load_camera, normalize_images
from .index import Frame, NuScenesIndex, check_dataroot
from .lidar import load_lidar, pad_or_trim
from .map_gt import MapGroundTruth

#: keys that are collated as plain Python lists rather than stacked
STRING_KEYS = ('token', 'city', 'scene')


class MapDataset(Dataset):
    """Samples of one split; ``frames`` may be given directly (e.g. a subset of an index)."""

    def __init__(self, cfg: DataConfig, split: str | None = None, index: NuScenesIndex | None = None,
                 frames: Sequence[Frame] | None = None):
        self.cfg = cfg
        if index is None and frames is None:
            index = NuScenesIndex.from_config(cfg, split=split)
        if frames is None:
            frames = index.frames
        self.dataroot = index.dataroot if index is not None else check_dataroot(cfg.dataset.dataroot,
                                                                                  cfg.dataset.version)
        # keep only the light Frame records: DataLoader workers must not pickle the devkit tables
        self.frames = list(frames)
        self._map_gt = MapGroundTruth(self.dataroot, cfg.grid, cfg.map_gt) if cfg.dataset.load_map_gt else None
        self._sd = None
        if cfg.dataset.load_sd_prior:
            from .sd_prior import SdPrior
            self._sd = SdPrior(cfg.sd_prior, cfg.grid)

    def __len__(self) -> int:
        return len(self.frames)

    def images(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(N, h, w, 3) uint8 RGB images at the network size and their (N, 3, 3) intrinsics."""
        hw = (self.cfg.image.height, self.cfg.image.width)
        imgs, ks = [], []
        for cam in frame.cameras:
            original = (cam.height, cam.width) if cam.height and cam.width else None
            img, k = load_camera(cam.path, cam.intrinsic, original, hw)
            imgs.append(img)
            ks.append(k)
        return np.stack(imgs), np.stack(ks)

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """What does not change between epochs, as compact numpy arrays: ``images`` (N, h, w, 3) uint8 at the
        network size, ``intrinsics``, ``lidar`` (P, 5) real points only, the map rasters, ``sd_prior`` (int8 +-1).
        :class:`mapkd_core.train.cache.CachedMapDataset` stores exactly this per sample."""
        frame = self.frames[i]
        cfg = self.cfg
        out: dict[str, np.ndarray] = {}
        if cfg.dataset.load_images:
            out['images'], out['intrinsics'] = self.images(frame)
        if cfg.dataset.load_lidar:
            out['lidar'] = load_lidar(frame, cfg.dataset.lidar_min_distance, cfg.dataset.lidar_sweeps)
        if self._map_gt is not None:
            r = self._map_gt.raster(frame.city, frame.ego_to_global)
            out['semantic'], out['instance'], out['direction'] = r.semantic, r.instance, r.direction
        if self._sd is not None:
            sd = self._sd.raster(frame.city, frame.ego_to_global)
            out['sd_prior'] = sd.astype(np.int8) if np.array_equal(np.abs(sd), np.ones_like(sd)) else sd
        return out

    def assemble(self, i: int, raw: dict[str, np.ndarray]) -> dict:
        """The item (see the module docstring) from :meth:`raw`'s arrays: normalisation, padding, tensors."""
        frame = self.frames[i]
        cfg = self.cfg
        item = {
            'cam_to_ego': torch.from_numpy(frame.cam_to_ego.astype(np.float32)),
            'ego_to_global': torch.from_numpy(frame.ego_to_global.copy()),
            'token': frame.token, 'city': frame.city, 'scene': frame.scene_name,
        }
        if 'images' in raw:
            item['images'] = torch.from_numpy(normalize_images(raw['images'], cfg.image.mean, cfg.image.std))
            item['intrinsics'] = torch.from_numpy(np.asarray(raw['intrinsics']).astype(np.float32))
        if 'lidar' in raw:
            pts, mask = pad_or_trim(np.asarray(raw['lidar'], np.float32), cfg.dataset.max_lidar_points)
            item['lidar'] = torch.from_numpy(pts)
            item['lidar_mask'] = torch.from_numpy(mask)
        for key in ('semantic', 'instance', 'direction'):
            if key in raw:
                item[key] = torch.from_numpy(np.ascontiguousarray(raw[key]))
        if 'sd_prior' in raw:
            item['sd_prior'] = torch.from_numpy(np.asarray(raw['sd_prior']).astype(np.float32))
        return item

    def __getitem__(self, i: int) -> dict:
        return self.assemble(i, self.raw(i))


def spread(frames: list, limit: int) -> list:
    """``limit`` frames evenly spaced over the split (the first one included), not its first ``limit``: frames are
    sorted by scene, so a prefix would be a few scenes in one place (e.g. the first drives of geo_train). The
    trainer (train_limit, val_limit) and ``evaluate`` (limit) both pick frames with it."""
    if not limit or limit >= len(frames):
        return frames
    step = len(frames) / limit
    return [frames[int(i * step)] for i in range(limit)]


def collate(batch: list[dict]) -> dict:
    """Stack tensors along a new batch dimension; strings become lists."""
    out = {k: [b[k] for b in batch] for k in STRING_KEYS if k in batch[0]}
    out.update(default_collate([{k: v for k, v in b.items() if k not in STRING_KEYS} for b in batch]))
    return out
