"""The painted world of the synthetic dataset, built from a city's real map expansion.

Ground classes (what the cameras see and what sets the LiDAR intensity), painted in this order:
off-road, sidewalk (``walkway``), road (the union of ``road_segment`` and ``lane``, the same polygons whose rings
are the boundary ground truth), curbs along the road's rings, ped-crossing zebra bars and the two transverse edge
lines (the crossing's two longest edges, the ped-crossing ground truth), dashed white lane dividers and solid road
dividers. All geometry is built once per city in the global map frame; :meth:`CityWorld.ground` rasterises the part
around an ego pose into a class map in that ego's frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, Polygon, box
from shapely.ops import substring

from ..map_gt import load_nusc_map, map_lines, map_polygons, two_longest_edges
from ..patch import ego_to_map_2d, explode_lines

# ground classes of the texture
OFFROAD, SIDEWALK, ROAD, CURB, PED_PAINT, LANE_PAINT, ROAD_DIVIDER_PAINT, OBJECT, SKY = range(9)
GROUND_CLASS_NAMES = ('offroad', 'sidewalk', 'road', 'curb', 'ped_paint', 'lane_paint', 'road_divider_paint',
                      'object', 'sky')
PAINT_CLASSES = (PED_PAINT, LANE_PAINT, ROAD_DIVIDER_PAINT)


@dataclass(frozen=True)
class Paint:
    """Sizes of the painted markings, metres."""

    lane_line_width: float = 0.15
    lane_dash: float = 3.0
    lane_gap: float = 5.0
    road_divider_width: float = 0.2
    curb_width: float = 0.3
    ped_edge_width: float = 0.3
    ped_bar_width: float = 0.5
    ped_bar_gap: float = 0.6


def dashes(line: LineString, dash: float, gap: float) -> list[LineString]:
    """Dash pieces of a line: ``dash`` metres painted, ``gap`` metres skipped, from the line's start."""
    out = []
    start, length = 0.0, line.length
    while start < length:
        piece = substring(line, start, min(start + dash, length))
        if piece.length > 0.05:
            out.append(piece)
        start += dash + gap
    return out


def zebra_bars(poly: Polygon, bar: float, gap: float) -> list[Polygon]:
    """Bars across a crossing polygon: strips perpendicular to its longest edge, spanning the crossing."""
    edges = two_longest_edges(poly)
    if not edges:
        return []
    (x0, y0), (x1, y1) = edges[0].coords[:2]
    angle = np.degrees(np.arctan2(y1 - y0, x1 - x0))
    # in a frame aligned with the long edge, bars are vertical strips
    local = affinity.rotate(poly, -angle, origin=(0, 0))
    minx, miny, maxx, maxy = local.bounds
    out = []
    x = minx + gap / 2
    while x + bar <= maxx:
        strip = local.intersection(box(x, miny - 1, x + bar, maxy + 1))
        if not strip.is_empty and strip.area > 0.05:
            out.append(affinity.rotate(strip, angle, origin=(0, 0)))
        x += bar + gap
    return out


class _Geoms:
    """A list of geometries with an STRtree, queried by a window polygon."""

    def __init__(self, geoms):
        self.geoms = np.array([g for g in geoms if g is not None and not g.is_empty], dtype=object)
        self.tree = shapely.STRtree(self.geoms)

    def query(self, window) -> np.ndarray:
        if len(self.geoms) == 0:
            return self.geoms
        return self.geoms[np.sort(self.tree.query(window))]


class CityWorld:
    """One city's paintable geometry (global map frame)."""

    def __init__(self, dataroot, city: str, paint: Paint | None = None):
        self.city = city
        self.paint = paint or Paint()
        nusc_map = load_nusc_map(dataroot, city)
        roads = map_polygons(nusc_map, 'road_segment') + map_polygons(nusc_map, 'lane')
        road_union = shapely.union_all(np.array(roads, dtype=object)) if roads else Polygon()
        parts = [g for g in getattr(road_union, 'geoms', [road_union]) if isinstance(g, Polygon)]
        # split big polygons into tiles so that a window query returns small pieces
        self.road = _Geoms(self._tiles(parts))
        rings = []
        for p in parts:
            rings.append(LineString(p.exterior.coords))
            rings.extend(LineString(r.coords) for r in p.interiors)
        self.curbs = _Geoms(self._segments(rings))
        self.sidewalk = _Geoms(map_polygons(nusc_map, 'walkway'))
        peds = map_polygons(nusc_map, 'ped_crossing')
        self.ped_bars = _Geoms([b for p in peds for b in zebra_bars(p, self.paint.ped_bar_width,
                                                                       self.paint.ped_bar_gap)])
        self.ped_edges = _Geoms([e for p in peds for e in two_longest_edges(p)])
        self.lane_dashes = _Geoms([d for ln in map_lines(nusc_map, 'lane_divider')
                                   for d in dashes(ln, self.paint.lane_dash, self.paint.lane_gap)])
        self.road_dividers = _Geoms(self._segments(map_lines(nusc_map, 'road_divider')))

    @staticmethod
    def _tiles(polys, size: float = 100.0) -> list:
        out = []
        for p in polys:
            minx, miny, maxx, maxy = p.bounds
            if maxx - minx <= size and maxy - miny <= size:
                out.append(p)
                continue
            for x in np.arange(minx, maxx, size):
                for y in np.arange(miny, maxy, size):
                    piece = p.intersection(box(x, y, x + size, y + size))
                    if not piece.is_empty:
                        out.extend(g for g in getattr(piece, 'geoms', [piece]) if isinstance(g, Polygon))
        return out

    @staticmethod
    def _segments(lines, size: float = 50.0) -> list:
        """Long lines cut into pieces of about ``size`` metres (smaller window queries)."""
        out = []
        for ln in lines:
            n = max(1, int(np.ceil(ln.length / size)))
            for i in range(n):
                piece = substring(ln, ln.length * i / n, ln.length * (i + 1) / n)
                if piece.length > 0:
                    out.append(piece)
        return out

    def ground(self, ego_to_global: np.ndarray, extent: float, resolution: float) -> 'GroundPatch':
        """Class map of the square [-extent, extent]^2 around the ego (ego frame), ``resolution`` m/px."""
        size = int(round(2 * extent / resolution))
        cls = np.full((size, size), OFFROAD, np.uint8)
        to_ego = np.linalg.inv(ego_to_map_2d(ego_to_global))
        # ego (x, y) -> texture (col, row): col = (x + extent) / res - 0.5, row = (extent - y) / res - 0.5
        to_px = np.array([[1 / resolution, 0, extent / resolution - 0.5],
                          [0, -1 / resolution, extent / resolution - 0.5], [0, 0, 1]]) @ to_ego
        window = affinity.affine_transform(box(-extent, -extent, extent, extent),
                                           _affine_params(ego_to_map_2d(ego_to_global)))
        shift = 3
        scale = float(1 << shift)

        def pts(coords):
            xy = np.asarray(coords)[:, :2] @ to_px[:2, :2].T + to_px[:2, 2]
            return np.round(xy * scale).astype(np.int32)

        def fill(geoms, value):
            rings = []
            holes = []
            for g in geoms:
                for p in getattr(g, 'geoms', [g]):
                    if isinstance(p, Polygon) and not p.is_empty:
                        rings.append(pts(p.exterior.coords))
                        holes.extend(pts(r.coords) for r in p.interiors)
            if rings:
                cv2.fillPoly(cls, rings, int(value), shift=shift)
            return holes

        def stroke(geoms, value, width_m):
            lines = [pts(ln.coords) for g in geoms for ln in explode_lines(g)]
            if lines:
                cv2.polylines(cls, lines, False, int(value), thickness=max(1, int(round(width_m / resolution))),
                              shift=shift)

        fill(self.sidewalk.query(window), SIDEWALK)
        holes = fill(self.road.query(window), ROAD)
        if holes:
            cv2.fillPoly(cls, holes, OFFROAD, shift=shift)
        p = self.paint
        stroke(self.curbs.query(window), CURB, p.curb_width)
        fill(self.ped_bars.query(window), PED_PAINT)
        stroke(self.ped_edges.query(window), PED_PAINT, p.ped_edge_width)
        stroke(self.lane_dashes.query(window), LANE_PAINT, p.lane_line_width)
        stroke(self.road_dividers.query(window), ROAD_DIVIDER_PAINT, p.road_divider_width)
        return GroundPatch(cls, extent, resolution)


def _affine_params(m: np.ndarray) -> list[float]:
    return [m[0, 0], m[0, 1], m[1, 0], m[1, 1], m[0, 2], m[1, 2]]


@dataclass
class GroundPatch:
    """A class map around the ego: pixel (row, col) has its centre at x = (col + 0.5) res - extent,
    y = extent - (row + 0.5) res in the ego frame."""

    classes: np.ndarray
    extent: float
    resolution: float

    def to_pixel(self, x, y):
        """Ego-frame metres -> continuous texture coordinates (col, row) for cv2.remap."""
        return (np.asarray(x) + self.extent) / self.resolution - 0.5, (self.extent - np.asarray(y)) / self.resolution - 0.5

    def lookup(self, x, y) -> np.ndarray:
        """Ground class at ego-frame points (nearest texel; OFFROAD outside the patch)."""
        col, row = self.to_pixel(x, y)
        c = np.floor(col + 0.5).astype(np.int64)
        r = np.floor(row + 0.5).astype(np.int64)
        n = self.classes.shape[0]
        ok = (c >= 0) & (c < n) & (r >= 0) & (r < n)
        out = np.full(np.shape(c), OFFROAD, np.uint8)
        out[ok] = self.classes[r[ok], c[ok]]
        return out
