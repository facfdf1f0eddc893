"""The local map patch around the ego vehicle, shared by the map ground truth and the SD prior.

The map is treated as 2D: the patch is the BEV grid's rectangle placed at the ego's planar pose (x, y, yaw), as
HDMapNet and P-MapNet do (patch box centred at the ego, rotated by its yaw). Geometry is clipped to the patch in the
global map frame and then moved into the ego frame (REP-103, x forward, y left).
"""
from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, box

from ..config import GridConfig
from ..geometry import planar_transform


def grid_box(grid: GridConfig, margin: float = 0.0):
    """The grid rectangle in the ego frame, optionally shrunk by ``margin`` metres on every side."""
    return box(grid.xbound[0] + margin, grid.ybound[0] + margin, grid.xbound[1] - margin, grid.ybound[1] - margin)


def ego_to_map_2d(ego_to_global: np.ndarray) -> np.ndarray:
    """3x3 planar transform (x, y, yaw of the ego) taking ego-frame (x, y, 1) to global map (x, y, 1)."""
    x, y, yaw = planar_transform(ego_to_global)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


def patch_polygon(grid: GridConfig, ego_to_global: np.ndarray, margin: float = 0.0):
    """The grid rectangle placed in the global map frame at the ego pose."""
    return to_frame(grid_box(grid, margin), ego_to_map_2d(ego_to_global))


def to_frame(geoms, t2d: np.ndarray):
    """Apply a 3x3 planar transform to a shapely geometry or an array of geometries (vectorised)."""
    a = np.asarray(t2d, dtype=np.float64)

    def fn(xy):
        return xy @ a[:2, :2].T + a[:2, 2]
    return shapely.transform(geoms, fn)


def global_to_ego(geoms, ego_to_global: np.ndarray):
    """Move geometries from the global map frame into the ego frame (planar)."""
    return to_frame(geoms, np.linalg.inv(ego_to_map_2d(ego_to_global)))


def explode_lines(geom) -> list[LineString]:
    """All non-empty LineStrings inside a geometry (LineString, MultiLineString, GeometryCollection, ...)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, LineString):
        return [geom]
    if isinstance(geom, MultiLineString) or hasattr(geom, 'geoms'):
        out = []
        for g in geom.geoms:
            out.extend(explode_lines(g))
        return out
    return []  # points and polygons carry no line


def resample_line(line: LineString, step: float, keep_end: bool = True) -> np.ndarray:
    """Points every ``step`` metres along a line, from its start; the end point is appended when ``keep_end``."""
    length = line.length
    dist = np.arange(0.0, length, step)
    if keep_end and (len(dist) == 0 or length - dist[-1] > 1e-6):
        dist = np.append(dist, length)
    pts = shapely.line_interpolate_point(line, dist)
    return shapely.get_coordinates(pts)[:, :2]
