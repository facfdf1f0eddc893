"""The nuScenes sample index: one :class:`Frame` per keyframe of a split, built with nuscenes-devkit.

A Frame holds everything needed to load a sample without the devkit object (so DataLoader workers stay light):
the six camera image paths in the fixed order with intrinsics, sensor-to-ego extrinsics and their own ego poses,
the LiDAR keyframe and its previous sweeps, the keyframe ego pose (LIDAR_TOP's, as HDMapNet) and the city.

Splits: the official scene splits of ``nuscenes.utils.splits.create_splits_scenes`` (train, val, test, mini_train,
mini_val, ...), ``all`` (every scene of the dataroot), a split named in the dataroot's own ``splits.yaml`` (the
synthetic drives' ``geo_train`` / ``geo_val``), or a split file (YAML ``{name: [scene, ...]}`` or a text file
with one scene name per line). Frames are sorted by (scene name, timestamp).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from ..config import DataConfig
from ..constants import CAMERAS
from ..errors import DatasetNotFoundError, IncompleteSampleError, SplitError
from ..geometry import make_transform
from .dataroot import resolve_data_path

log = logging.getLogger(__name__)

LIDAR_CHANNEL = 'LIDAR_TOP'
SPLITS_FILE = 'splits.yaml'  # a dataroot's own named splits, used when the split is not an official one


@dataclass(frozen=True)
class CameraRecord:
    """One camera image of a keyframe."""

    channel: str
    token: str
    path: Path
    timestamp: int  # microseconds
    width: int
    height: int
    intrinsic: np.ndarray  # (3, 3) for the original image size
    cam_to_ego: np.ndarray  # (4, 4) sensor -> ego (calibrated_sensor)
    ego_to_global: np.ndarray  # (4, 4) the ego pose at this image's timestamp


@dataclass(frozen=True)
class SweepRecord:
    """One LiDAR sweep (the keyframe's own or a previous one)."""

    token: str
    path: Path
    timestamp: int
    sensor_to_ego: np.ndarray
    ego_to_global: np.ndarray


@dataclass(frozen=True)
class Frame:
    """One keyframe (nuScenes "sample")."""

    token: str
    scene_name: str
    scene_token: str
    timestamp: int
    city: str
    ego_to_global: np.ndarray  # (4, 4) the LIDAR_TOP keyframe's ego pose; the BEV ego frame of this sample
    cameras: tuple[CameraRecord, ...]  # in the configured camera order
    lidar: tuple[SweepRecord, ...]  # keyframe first, then previous sweeps (newest first)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.channel for c in self.cameras)

    @property
    def intrinsics(self) -> np.ndarray:
        """(N, 3, 3) intrinsics at the original image size."""
        return np.stack([c.intrinsic for c in self.cameras])

    @property
    def cam_to_ego(self) -> np.ndarray:
        """(N, 4, 4) camera -> ego extrinsics."""
        return np.stack([c.cam_to_ego for c in self.cameras])


def check_dataroot(dataroot: str | os.PathLike, version: str) -> Path:
    """Return the dataroot as a Path; raise DatasetNotFoundError naming what is missing."""
    root = resolve_data_path(dataroot)
    if not root.is_dir():
        raise DatasetNotFoundError(f'nuScenes dataroot not found: {root} (set dataset.dataroot in the config)')
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith('v1.0'))
        raise DatasetNotFoundError(f'nuScenes version {version!r} not found in {root}: no folder {root / version}; '
                                   f'versions present: {found or "none"}')
    return root


def official_splits() -> dict[str, list[str]]:
    from nuscenes.utils.splits import create_splits_scenes
    return create_splits_scenes(verbose=False)


def read_split_file(path: str | os.PathLike, split: str) -> list[str]:
    """Scene names of ``split`` from a YAML mapping file, or all names of a plain text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f'split file not found: {path}')
    text = path.read_text(encoding='utf-8')
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        if split not in data:
            raise SplitError(f'split {split!r} is not in split file {path}; it has: {sorted(data)}')
        names = data[split]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SplitError(f'split file {path}: {split!r} must be a list of scene names')
        return names
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]
    if not names:
        raise SplitError(f'split file {path} lists no scene')
    return names


def resolve_split(split: str, split_file: str | None, available: Iterable[str]) -> list[str]:
    """The scene names a split selects (before filtering to the scenes present)."""
    available = list(available)
    if split_file:
        return read_split_file(resolve_data_path(split_file), split)
    if split == 'all':
        return available
    splits = official_splits()
    if split not in splits:
        raise SplitError(f'unknown split {split!r}: use one of {sorted(splits)}, "all", or give a split_file')
    return list(splits[split])


class NuScenesIndex(Sequence):
    """The ordered keyframes of one split of a nuScenes dataroot.

    ``nusc`` may be passed to reuse an already loaded ``nuscenes.NuScenes`` object.
    """

    def __init__(self, dataroot: str | os.PathLike, version: str, split: str = 'train', split_file: str | None = None,
                 cameras: Sequence[str] = CAMERAS, lidar_sweeps: int = 1, nusc=None):
        self.dataroot = check_dataroot(dataroot, version)
        self.version = version
        self.split = split
        self.cameras = tuple(cameras)
        self.lidar_sweeps = int(lidar_sweeps)
        if nusc is None:
            from nuscenes.nuscenes import NuScenes
            nusc = NuScenes(version=version, dataroot=str(self.dataroot), verbose=False)
        self.nusc = nusc
        scenes = {s['name']: s for s in nusc.scene}
        own = self.dataroot / SPLITS_FILE
        if not split_file and split != 'all' and own.is_file() and split not in official_splits():
            split_file = str(own)  # a dataroot's own splits (e.g. geo_train / geo_val of the synthetic drives)
        wanted = resolve_split(split, split_file, scenes)
        present = [n for n in wanted if n in scenes]
        if not present:
            raise SplitError(f'split {split!r} selects {len(wanted)} scene(s), none of which is in '
                             f'{self.dataroot / version} (it has {len(scenes)}: {sorted(scenes)[:5]}...)')
        if len(present) < len(wanted):
            log.info('split %r: %d of %d scenes are present in %s', split, len(present), len(wanted), self.dataroot)
        self.scene_names = sorted(present)
        frames = []
        for name in self.scene_names:
            frames.extend(self._scene_frames(scenes[name]))
        self.frames: list[Frame] = frames

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str | None = None, nusc=None) -> 'NuScenesIndex':
        ds = cfg.dataset
        return cls(ds.dataroot, ds.version, split or ds.split, ds.split_file, cfg.image.cameras,
                   ds.lidar_sweeps if ds.load_lidar else 1, nusc=nusc)

    # -- Sequence protocol ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        return self.frames[i]

    # -- building -------------------------------------------------------------------------------------------------
    def _pose(self, sd: dict) -> np.ndarray:
        ep = self.nusc.get('ego_pose', sd['ego_pose_token'])
        return make_transform(ep['rotation'], ep['translation'])

    def _scene_frames(self, scene: dict) -> list[Frame]:
        nusc = self.nusc
        log_rec = nusc.get('log', scene['log_token'])
        city = log_rec['location']
        out = []
        token = scene['first_sample_token']
        while token:
            sample = nusc.get('sample', token)
            out.append(self._frame(sample, scene, city))
            token = sample['next']
        out.sort(key=lambda f: f.timestamp)
        return out

    def _frame(self, sample: dict, scene: dict, city: str) -> Frame:
        nusc = self.nusc
        data = sample['data']
        missing = [c for c in self.cameras if c not in data]
        if missing:
            raise IncompleteSampleError(
                f'sample {sample["token"]} (scene {scene["name"]}) has no {", ".join(missing)}; '
                f'it has: {", ".join(sorted(data))}')
        cams = []
        for ch in self.cameras:
            sd = nusc.get('sample_data', data[ch])
            cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
            cams.append(CameraRecord(
                channel=ch, token=sd['token'], path=self.dataroot / sd['filename'], timestamp=int(sd['timestamp']),
                width=int(sd.get('width') or 0), height=int(sd.get('height') or 0),
                intrinsic=np.asarray(cs['camera_intrinsic'], dtype=np.float64),
                cam_to_ego=make_transform(cs['rotation'], cs['translation']), ego_to_global=self._pose(sd)))
        if LIDAR_CHANNEL not in data:
            raise IncompleteSampleError(f'sample {sample["token"]} (scene {scene["name"]}) has no {LIDAR_CHANNEL}')
        sweeps = []
        sd = nusc.get('sample_data', data[LIDAR_CHANNEL])
        ego_to_global = self._pose(sd)
        while sd is not None and len(sweeps) < self.lidar_sweeps:
            cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
            sweeps.append(SweepRecord(token=sd['token'], path=self.dataroot / sd['filename'],
                                      timestamp=int(sd['timestamp']),
                                      sensor_to_ego=make_transform(cs['rotation'], cs['translation']),
                                      ego_to_global=self._pose(sd)))
            sd = nusc.get('sample_data', sd['prev']) if sd['prev'] else None
        return Frame(token=sample['token'], scene_name=scene['name'], scene_token=scene['token'],
                     timestamp=int(sample['timestamp']), city=city, ego_to_global=ego_to_global,
                     cameras=tuple(cams), lidar=tuple(sweeps))
