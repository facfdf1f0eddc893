"""LiDAR sweeps of a keyframe, moved into the keyframe's ego frame (method doc section 1.0, PointPillars input).

Each sweep is read with the devkit's ``LidarPointCloud`` (x, y, z, intensity), points close to the sensor are removed
with its ``remove_close`` (|x| < d and |y| < d in the sensor frame: the car's own returns), and the points are moved
sensor -> sweep ego -> global -> keyframe ego. A fifth channel holds the time lag in seconds (keyframe time minus
sweep time, 0 for the keyframe). Then the cloud is padded with a validity mask or trimmed to a fixed count; trimming
keeps the first points (the keyframe's, then the newest sweeps), as HDMapNet does.
"""
from __future__ import annotations

import numpy as np

from ..errors import CorruptSensorFileError, MissingSensorFileError
from ..geometry import invert_transform
from .index import Frame, SweepRecord

POINT_FEATURES = ('x', 'y', 'z', 'intensity', 'time_lag')


def read_sweep(sweep: SweepRecord, min_distance: float) -> np.ndarray:
    """(4, N) points of one sweep in its sensor frame, close points removed."""
    from nuscenes.utils.data_classes import LidarPointCloud
    if not sweep.path.is_file():
        raise MissingSensorFileError(f'LiDAR file missing: {sweep.path} (sample_data {sweep.token})')
    size = sweep.path.stat().st_size
    if size == 0 or size % (5 * 4) != 0:
        raise CorruptSensorFileError(f'LiDAR file is not a nuScenes .pcd.bin (5 float32 per point): {sweep.path} '
                                     f'has {size} bytes')
    pc = LidarPointCloud.from_file(str(sweep.path))
    if min_distance > 0:
        pc.remove_close(min_distance)
    return pc.points


def load_lidar(frame: Frame, min_distance: float = 2.2, max_sweeps: int | None = None) -> np.ndarray:
    """(N, 5) float32 points [x, y, z, intensity, time_lag] of the frame's sweeps in its ego frame."""
    global_to_ego = invert_transform(frame.ego_to_global)
    key_time = frame.lidar[0].timestamp if frame.lidar else frame.timestamp
    clouds = []
    for sweep in frame.lidar[:max_sweeps]:
        pts = read_sweep(sweep, min_distance)
        t = global_to_ego @ sweep.ego_to_global @ sweep.sensor_to_ego
        xyz = pts[:3].T.astype(np.float64) @ t[:3, :3].T + t[:3, 3]
        lag = np.full((xyz.shape[0], 1), (key_time - sweep.timestamp) * 1e-6)
        clouds.append(np.hstack([xyz, pts[3:4].T, lag]).astype(np.float32))
    if not clouds:
        return np.zeros((0, len(POINT_FEATURES)), np.float32)
    return np.concatenate(clouds, axis=0)


def pad_or_trim(points: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size (max_points, F) array and a (max_points,) bool validity mask."""
    n = min(len(points), max_points)
    out = np.zeros((max_points, points.shape[1]), np.float32)
    out[:n] = points[:n]
    mask = np.zeros(max_points, bool)
    mask[:n] = True
    return out, mask
