"""A drivable lane graph built from the lane polygons of a bundled map expansion.

The bundled maps hold lane *polygons* only: no lane connectors, arclines or connectivity (see
``assets/nuscenes_tiny/README.md``), so the devkit's lane-graph functions do not work on them. This module builds
what virtual drives need from the polygons themselves (nothing in the devkit or shapely does this):

* **Centre lines.** A lane polygon is a long thin ring. Its two ends are the pair of ring vertices farthest apart;
  they split the ring into the two side chains, which are resampled by arc length and averaged (then smoothed), at
  ``STEP`` metres per point. Lanes shorter than ``MIN_LANE`` metres or with an ambiguous shape are skipped.
* **Direction.** A polygon does not say which way traffic flows. First vote, the real ego and vehicle tracks of the
  mini scenes that drive inside the lane; otherwise the nearest road divider within ``DIVIDER_RANGE`` metres must lie
  on the driver's side of the lane: the left in right-hand-traffic Boston, the right in left-hand-traffic Singapore;
  otherwise a seeded coin (two-way roads without a painted divider look the same both ways).
* **Connections.** Lane B follows lane A when B starts where A ends, heading the same way (a continuation), or when
  a smooth curve (cubic Hermite) from A's end to B's start turns by at most ``MAX_TURN_DEG`` degrees, moves forward,
  and stays inside the drivable area (a path through an intersection). The middles of the connectors that turn by
  more than 30 degrees mark intersections in the statistics (lane ends with several successors do not: along a road
  lanes also split and merge).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

from ..map_gt import load_nusc_map, map_lines, map_polygons

STEP = 1.0  # metres between centre-line points
MIN_LANE = 4.0
MIN_ASPECT = 1.5  # lane length / mean width below this: no clear axis, skipped
DIVIDER_RANGE = 15.0
JOIN_DIST = 2.0  # a lane start within this of a lane end, heading the same way: a continuation
MAX_GAP = 40.0  # longest connector through an intersection
MAX_TURN_DEG = 110.0
RIGHT_HAND_TRAFFIC = {'boston-seaport': True, 'singapore-onenorth': False, 'singapore-queenstown': False,
                      'singapore-hollandvillage': False}


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def resample_polyline(pts: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline every ``step`` metres (both ends kept)."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return pts[:1]
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.column_stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])])


def headings(pts: np.ndarray) -> np.ndarray:
    d = np.gradient(pts, axis=0)
    return np.arctan2(d[:, 1], d[:, 0])


def lane_centerline(poly: Polygon, step: float = STEP) -> np.ndarray | None:
    """Centre line (N, 2) of a thin lane polygon, from one end to the other; None when it has no clear axis."""
    ring = np.asarray(poly.exterior.coords)[:-1, :2]
    if len(ring) < 4:
        return None
    d = np.linalg.norm(ring[:, None] - ring[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    i, j = min(i, j), max(i, j)
    m = len(ring)
    side_a = list(range(i, j + 1))  # i -> j one way round the ring
    side_b = [(i - k) % m for k in range(0, (i - j) % m + 1)]  # i -> j the other way
    axis = (ring[j] - ring[i]) / max(d[i, j], 1e-9)

    def transverse(p, q):  # |cos| of an edge against the lane axis: small for an end edge
        e = ring[q] - ring[p]
        return abs(e @ axis) / max(np.hypot(*e), 1e-9)

    # the diameter's ends are corners; drop each end edge from the side that holds it, so that the centre line
    # runs from the middle of one end edge to the middle of the other
    if transverse(i, side_a[1]) < transverse(i, side_b[1]):
        side_a = side_a[1:]
    else:
        side_b = side_b[1:]
    if transverse(side_a[-2], j) < transverse(side_b[-2], j):
        side_a = side_a[:-1]
    else:
        side_b = side_b[:-1]
    if len(side_a) < 2 or len(side_b) < 2:
        return None
    side_a, side_b = ring[side_a], ring[side_b]
    n = 64
    a = resample_polyline(side_a, 1.0)
    b = resample_polyline(side_b, 1.0)
    ta = np.linspace(0, 1, len(a))
    tb = np.linspace(0, 1, len(b))
    t = np.linspace(0, 1, n)
    mid = 0.5 * (np.column_stack([np.interp(t, ta, a[:, 0]), np.interp(t, ta, a[:, 1])])
                 + np.column_stack([np.interp(t, tb, b[:, 0]), np.interp(t, tb, b[:, 1])]))
    # smooth the interior (the ends stay where they are) to remove the skew of the end edges
    k = 5
    # odd reflection at the ends keeps them in place (and straight lines straight)
    pad = np.vstack([2 * mid[0] - mid[k:0:-1], mid, 2 * mid[-1] - mid[-2:-k - 2:-1]])
    kernel = np.ones(2 * k + 1) / (2 * k + 1)
    smooth = np.column_stack([np.convolve(pad[:, 0], kernel, 'valid'), np.convolve(pad[:, 1], kernel, 'valid')])
    line = resample_polyline(smooth, step)
    length = float(np.hypot(*np.diff(line, axis=0).T).sum())
    width = poly.area / max(length, 1e-6)
    if length < MIN_LANE or length < MIN_ASPECT * width:
        return None
    return line


def hermite(p0, h0, p1, h1, n: int = 0) -> np.ndarray:
    """A cubic Hermite curve from p0 (heading h0) to p1 (heading h1), tangents scaled to the chord."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    chord = float(np.hypot(*(p1 - p0)))
    n = n or max(3, int(np.ceil(chord / STEP)) + 1)
    t = np.linspace(0, 1, n)[:, None]
    m0 = chord * np.array([np.cos(h0), np.sin(h0)])
    m1 = chord * np.array([np.cos(h1), np.sin(h1)])
    return ((2 * t ** 3 - 3 * t ** 2 + 1) * p0 + (t ** 3 - 2 * t ** 2 + t) * m0
            + (-2 * t ** 3 + 3 * t ** 2) * p1 + (t ** 3 - t ** 2) * m1)


@dataclass
class Lane:
    index: int
    token: str
    line: np.ndarray  # (N, 2) centre line in the travel direction, STEP apart
    polygon: Polygon

    @property
    def length(self) -> float:
        return float(np.hypot(*np.diff(self.line, axis=0).T).sum())

    def start_heading(self) -> float:
        d = self.line[min(2, len(self.line) - 1)] - self.line[0]
        return float(np.arctan2(d[1], d[0]))

    def end_heading(self) -> float:
        d = self.line[-1] - self.line[max(0, len(self.line) - 3)]
        return float(np.arctan2(d[1], d[0]))


@dataclass
class Connection:
    to: int
    path: np.ndarray  # connector points strictly between the lanes (may be empty)
    turn: float  # heading change, radians


@dataclass
class LaneGraph:
    city: str
    lanes: list[Lane]
    successors: list[list[Connection]]
    drivable: object  # shapely geometry of the drivable area (prepared)
    junctions: np.ndarray  # (M, 2) junction points
    direction_source: dict = field(default_factory=dict)  # 'tracks' / 'divider' / 'coin' -> count

    @classmethod
    def build(cls, dataroot, city: str, tracks=(), seed: int = 0) -> 'LaneGraph':
        """``tracks``: (xy (N, 2), heading (N,)) pairs of real vehicle tracks in this city, for lane directions."""
        nusc_map = load_nusc_map(dataroot, city)
        lane_polys, tokens = [], []
        for rec in nusc_map.lane:
            poly = nusc_map.extract_polygon(rec['polygon_token'])
            if poly.is_valid and not poly.is_empty:
                lane_polys.append(poly)
                tokens.append(rec['token'])
        drivable = shapely.union_all(np.array(map_polygons(nusc_map, 'road_segment') + lane_polys, dtype=object))
        drivable = drivable.buffer(0.5)
        shapely.prepare(drivable)
        dividers = [np.asarray(ln.coords)[:, :2] for ln in map_lines(nusc_map, 'road_divider')]
        div_pts = np.vstack([resample_polyline(d, 1.0) for d in dividers]) if dividers else np.zeros((0, 2))
        div_tree = cKDTree(div_pts) if len(div_pts) else None
        rng = np.random.default_rng([seed, sum(map(ord, city))])
        right_hand = RIGHT_HAND_TRAFFIC.get(city, True)
        lines, polys, toks, scores, source = [], [], [], [], {'tracks': 0, 'divider': 0, 'coin': 0}
        for poly, tok in zip(lane_polys, tokens):
            line = lane_centerline(poly)
            if line is not None:
                lines.append(line)
                polys.append(poly)
                toks.append(tok)
                scores.append(_direction_score(line, poly, tracks, div_tree, div_pts, right_hand))
        flips = _consistent_directions(lines, scores, rng, source)
        lanes = [Lane(i, tok, line[::-1].copy() if flip else line, poly)
                 for i, (line, poly, tok, flip) in enumerate(zip(lines, polys, toks, flips))]
        succ, junctions = _connect(lanes, drivable)
        return cls(city, lanes, succ, drivable, junctions, source)

    def inside(self, xy: np.ndarray) -> np.ndarray:
        return shapely.contains_xy(self.drivable, xy[:, 0], xy[:, 1])


def _direction_score(line, poly, tracks, div_tree, div_pts, right_hand) -> tuple[float, float]:
    """Evidence that traffic flows along the centre line as drawn (> 0) or against it (< 0):
    (from real tracks, from the road divider side)."""
    h = headings(line)
    vote = 0.0
    for xy, heading in tracks:
        inside = shapely.contains_xy(poly, xy[:, 0], xy[:, 1])
        if inside.any():
            # heading of the track against the lane's local heading at the nearest centre-line point
            near = cKDTree(line).query(xy[inside])[1]
            vote += float(np.cos(_wrap(heading[inside] - h[near])).sum())
    divider = 0.0
    if div_tree is not None:
        at = [len(line) // 4, len(line) // 2, 3 * len(line) // 4]
        dist, idx = div_tree.query(line[at])
        ok = dist < DIVIDER_RANGE
        if ok.any():
            rel = div_pts[idx[ok]] - line[at][ok]
            hm = h[at][ok]
            cross = np.cos(hm) * rel[:, 1] - np.sin(hm) * rel[:, 0]  # > 0: the divider is on the left
            divider = float(np.sign(cross).sum()) * (1.0 if right_hand else -1.0)
    return vote, divider


def _consistent_directions(lines, scores, rng, source) -> list[bool]:
    """Whether to reverse each centre line. Lanes that meet end to end (a chain along a road) must agree: they are
    joined in a union-find with parity (same or opposite drawing direction), and each chain takes the sign of its
    summed evidence: tracks first, then dividers, then a seeded coin."""
    n = len(lines)
    parent, parity = list(range(n)), [0] * n  # parity: 1 if drawn against the root

    def find(a):
        if parent[a] == a:
            return a, 0
        root, p = find(parent[a])
        parent[a], parity[a] = root, parity[a] ^ p
        return root, parity[a]

    ends = np.array([[ln[0], ln[-1]] for ln in lines])  # (n, 2 ends, 2)
    end_h = np.array([[np.arctan2(*(ln[min(2, len(ln) - 1)] - ln[0])[::-1]),
                       np.arctan2(*(ln[-1] - ln[max(0, len(ln) - 3)])[::-1])] for ln in lines])
    tree = cKDTree(ends.reshape(-1, 2))
    for a, b in sorted(tree.query_pairs(JOIN_DIST)):
        la, ea = divmod(a, 2)
        lb, eb = divmod(b, 2)
        if la == lb:
            continue
        # drawn the same way when one's end meets the other's start, with the headings continuing
        same = ea != eb
        ha, hb = end_h[la, ea], end_h[lb, eb]
        if abs(_wrap(ha - hb if same else ha - hb - np.pi)) > np.radians(45):
            continue
        (ra, pa), (rb, pb) = find(la), find(lb)
        if ra != rb:
            parent[rb], parity[rb] = ra, pa ^ pb ^ (0 if same else 1)
    roots = [find(i) for i in range(n)]
    totals: dict[int, list[float]] = {}
    for i, (root, p) in enumerate(roots):
        sign = -1.0 if p else 1.0
        t = totals.setdefault(root, [0.0, 0.0])
        t[0] += sign * scores[i][0]
        t[1] += sign * scores[i][1]
    orient = {}
    for root in sorted(totals):
        track, divider = totals[root]
        if abs(track) > 2.0:
            orient[root], how = track < 0, 'tracks'
        elif divider != 0:
            orient[root], how = divider < 0, 'divider'
        else:
            orient[root], how = bool(rng.random() < 0.5), 'coin'
        source[how] += 1
    return [orient[root] ^ bool(p) for root, p in roots]


def _connect(lanes: list[Lane], drivable) -> tuple[list[list[Connection]], np.ndarray]:
    starts = np.array([ln.line[0] for ln in lanes])
    tree = cKDTree(starts)
    start_h = np.array([ln.start_heading() for ln in lanes])
    succ: list[list[Connection]] = [[] for _ in lanes]
    junctions = []
    max_turn = np.radians(MAX_TURN_DEG)
    for a in lanes:
        pe, he = a.line[-1], a.end_heading()
        fwd = np.array([np.cos(he), np.sin(he)])
        for b in tree.query_ball_point(pe, MAX_GAP):
            if b == a.index:
                continue
            ps, hs = starts[b], start_h[b]
            turn = float(_wrap(hs - he))
            v = ps - pe
            dist = float(np.hypot(*v))
            if dist < JOIN_DIST:
                if abs(turn) < np.radians(45):
                    succ[a.index].append(Connection(b, np.zeros((0, 2)), turn))
                continue
            if abs(turn) > max_turn or v @ fwd < 1.0:
                continue
            lateral = abs(fwd[0] * v[1] - fwd[1] * v[0])
            if abs(turn) < np.radians(25) and lateral > 4.0:
                continue  # going straight but jumping across lanes
            curve = hermite(pe, he, ps, hs)
            if not drivable_all(drivable, curve):
                continue
            ch = headings(curve)
            if np.abs(_wrap(np.diff(np.unwrap(ch)))).max(initial=0) > np.radians(30):
                continue  # a kink, not a drivable curve
            succ[a.index].append(Connection(b, curve[1:-1], turn))
            if abs(turn) > np.radians(30):
                junctions.append(curve[len(curve) // 2])
    return succ, np.array(junctions, dtype=np.float64).reshape(-1, 2)


def drivable_all(drivable, pts: np.ndarray) -> bool:
    return bool(shapely.contains_xy(drivable, pts[:, 0], pts[:, 1]).all())


