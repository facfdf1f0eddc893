"""Geometry: poses, quaternions, camera projection and THE mapping between BEV indices and metres.

Frames (ROS REP-103): the ego frame ``base_link`` is the nuScenes ego frame, x forward, y left, z up.
Quaternions are (w, x, y, z) as in nuScenes. A "transform" is a 4x4 homogeneous matrix ``T_a_b`` that maps
points of frame b into frame a (``cam_to_ego`` maps camera points into the ego frame).

BEV grid (HDMapNet layout): row r runs along y, column c along x. Cell (r, c) covers
``x in [xmin + c*dx, xmin + (c+1)*dx)`` and ``y in [ymin + r*dy, ymin + (r+1)*dy)``. Continuous pixel
coordinates (u = column, v = row, used for drawing) put the centre of cell (r, c) at (u, v) = (c, r).
Every module converts between BEV cells and metres with :func:`bev_affine` and the helpers built on it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import GridConfig
from .errors import CalibrationError

# --------------------------------------------------------------------------------------------------------------
# BEV grid <-> metres (the one mapping)


def bev_affine(grid: GridConfig) -> np.ndarray:
    """3x3 affine matrix taking ego-frame metres (x, y, 1) to continuous BEV pixel coordinates (u, v, 1).

    u is the column (along x), v the row (along y); the centre of cell (row r, column c) is (u, v) = (c, r).
    This is the only place that defines the relation; everything else derives from it.
    """
    xmin, _, dx = grid.xbound
    ymin, _, dy = grid.ybound
    return np.array([[1.0 / dx, 0.0, -xmin / dx - 0.5],
                     [0.0, 1.0 / dy, -ymin / dy - 0.5],
                     [0.0, 0.0, 1.0]])


def metres_to_pixel(grid: GridConfig, x, y):
    """Ego-frame metres -> continuous pixel coordinates (u = column, v = row), cell centres at integers."""
    a = bev_affine(grid)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return a[0, 0] * x + a[0, 2], a[1, 1] * y + a[1, 2]


@lru_cache(maxsize=16)
def _metres_affine(grid: GridConfig) -> np.ndarray:
    """The inverse of :func:`bev_affine` (read-only; computed once per grid: a LAPACK call costs ~0.1 ms)."""
    a = np.linalg.inv(bev_affine(grid))
    a.setflags(write=False)
    return a


def pixel_to_metres(grid: GridConfig, u, v):
    """Continuous pixel coordinates (u = column, v = row) -> ego-frame metres (x, y)."""
    a = _metres_affine(grid)
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return a[0, 0] * u + a[0, 2], a[1, 1] * v + a[1, 2]


def metres_to_index(grid: GridConfig, x, y):
    """Ego-frame metres -> integer cell indices (row, col) of the cell containing the point.

    Points outside the grid get indices outside [0, H) x [0, W); use :func:`in_grid` to test.
    """
    u, v = metres_to_pixel(grid, x, y)
    return np.floor(v + 0.5).astype(np.int64), np.floor(u + 0.5).astype(np.int64)


def index_to_metres(grid: GridConfig, row, col):
    """Integer cell indices (row, col) -> ego-frame metres (x, y) of the cell centre."""
    return pixel_to_metres(grid, np.asarray(col, dtype=np.float64), np.asarray(row, dtype=np.float64))


def in_grid(grid: GridConfig, row, col) -> np.ndarray:
    row = np.asarray(row)
    col = np.asarray(col)
    return (row >= 0) & (row < grid.H) & (col >= 0) & (col < grid.W)


def cell_centres(grid: GridConfig) -> np.ndarray:
    """(H, W, 2) array of the (x, y) metres of every cell centre."""
    rows, cols = np.meshgrid(np.arange(grid.H), np.arange(grid.W), indexing='ij')
    x, y = index_to_metres(grid, rows, cols)
    return np.stack([x, y], axis=-1)


# --------------------------------------------------------------------------------------------------------------
# rotations and transforms


def quaternion_to_matrix(q) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), normalised here, -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12) or not np.all(np.isfinite(q)):
        raise CalibrationError(f'invalid quaternion (zero or non-finite): {q.tolist()}')
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quaternion(rot) -> np.ndarray:
    """(3, 3) rotation matrix -> quaternion (w, x, y, z) with w >= 0."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def make_transform(rotation, translation) -> np.ndarray:
    """4x4 transform from a quaternion (w, x, y, z) or a 3x3 matrix, and a translation (3,)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    rot = quaternion_to_matrix(rotation) if rotation.shape == (4,) else rotation
    if rot.shape != (3, 3):
        raise CalibrationError(f'rotation must be a quaternion (4,) or a 3x3 matrix, got shape {rotation.shape}')
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if t.shape != (3,):
        raise CalibrationError(f'translation must have 3 values, got {t.tolist()}')
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = t
    return out


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (or a stack of them)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum('...ij,...j->...i', rot_t, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    points = np.asarray(points)
    return points @ t[:3, :3].T + t[:3, 3]


def yaw_of(t: np.ndarray) -> float:
    """Heading (radians, counter-clockwise about z from the x axis) of a 4x4 transform's x axis."""
    return float(np.arctan2(t[1, 0], t[0, 0]))


def planar_transform(t: np.ndarray) -> tuple[float, float, float]:
    """(x, y, yaw) of a 4x4 transform, for 2D map work."""
    return float(t[0, 3]), float(t[1, 3]), yaw_of(t)


# --------------------------------------------------------------------------------------------------------------
# cameras


def scale_intrinsics(k: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics after resizing an image by (sx, sy) (new size / old size), with pixel centres preserved.

    A resize maps pixel u to (u + 0.5) * sx - 0.5 (OpenCV's convention), so fx' = fx * sx and
    cx' = (cx + 0.5) * sx - 0.5; likewise for y. Works on (3, 3) or (..., 3, 3).
    """
    k = np.array(k, dtype=np.float64, copy=True)
    k[..., 0, 0] *= sx
    k[..., 0, 1] *= sx
    k[..., 0, 2] = (k[..., 0, 2] + 0.5) * sx - 0.5
    k[..., 1, 1] *= sy
    k[..., 1, 2] = (k[..., 1, 2] + 0.5) * sy - 0.5
    return k


def project_points(points_ego: np.ndarray, intrinsic: np.ndarray, cam_to_ego: np.ndarray):
    """Project (N, 3) ego-frame points into a camera: returns (uv (N, 2) pixels, depth (N,) metres).

    Points behind the camera get depth <= 0 (their uv is meaningless); filter with ``depth > min_depth``.
    """
    pts_cam = transform_points(invert_transform(cam_to_ego), points_ego)
    depth = pts_cam[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    uvw = pts_cam @ np.asarray(intrinsic, dtype=np.float64).T
    return uvw[:, :2] / safe[:, None], depth


def validate_calibration(intrinsic, cam_to_ego, name: str = 'camera') -> None:
    """Raise a CalibrationError (a ValueError) naming ``name`` when intrinsics or extrinsics are not usable."""
    k = np.asarray(intrinsic, dtype=np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise CalibrationError(f'{name}: intrinsic matrix must be a finite 3x3 matrix, got {k.tolist()}')
    if k[0, 0] <= 0 or k[1, 1] <= 0 or abs(k[2, 2] - 1.0) > 1e-6 or np.any(np.abs(k[2, :2]) > 1e-9):
        raise CalibrationError(f'{name}: intrinsic matrix must have fx, fy > 0 and last row [0, 0, 1], '
                               f'got {k.tolist()}')
    t = np.asarray(cam_to_ego, dtype=np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise CalibrationError(f'{name}: extrinsic must be a finite 4x4 matrix, got shape {t.shape}')
    rot = t[:3, :3]
    if np.abs(rot @ rot.T - np.eye(3)).max() > 1e-4 or np.linalg.det(rot) < 0.99:
        raise CalibrationError(f'{name}: extrinsic rotation is not a proper rotation matrix')
