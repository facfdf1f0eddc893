"""Virtual drives over the whole bundled maps, with a geographically held-out split (``geo_train`` / ``geo_val``).

The ten real tracks see a few straight roads; the bundled map expansion holds far more. A *drive* is a scene of
about ``scene_seconds`` (20 s, 41 keyframes at 2 Hz) along the lane graph of :mod:`.lanes`: it starts at a point
drawn uniformly over the lane length of a city, follows lane centre lines, and at every lane end takes a seeded
successor (straight on, or a turn through the intersection), at a cruise speed of 3-15 m/s that slows for curves
(lateral acceleration at most 2 m/s^2). A drive ends early at a dead end or where it would leave its split's region.
Every drive is a :class:`~.tracks.SceneTracks` (ego and agent tracks at 10 Hz), so the renderer of the real-track
scenes draws it unchanged.

Splits: the val region is the map within ``val_radius`` (250 m) of the two mini_val scene tracks (scene-0103
boston-seaport, scene-0916 singapore-queenstown). Val drives stay inside it, train drives outside it, and every
drive stays more than ``split_gap`` (70 m) from the keyframes of the other split, so no train keyframe's 60 x 30 m
patch (half diagonal 33.5 m) overlaps a val keyframe's. The planner first adds drives aimed at each ped crossing
that no keyframe patch has seen yet (val crossings first, then a few rounds for both splits), then spreads drives
over the lane length of every city until the keyframe targets are met (crossings that no allowed drive can reach
are reported).

Agents come from the real tracks' types and box sizes: vehicles driving the lane graph, vehicles parked at the
kerb, pedestrians walking across crossings and along walkways.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy.spatial import cKDTree

from ..map_gt import load_nusc_map, map_polygons, two_longest_edges
from .lanes import LaneGraph, headings, resample_polyline
from .tracks import STEP_SECONDS, SceneTracks, Track, load_scene_tracks

CITIES = ('boston-seaport', 'singapore-hollandvillage', 'singapore-onenorth', 'singapore-queenstown')
VAL_SCENES = ('scene-0103', 'scene-0916')  # the official mini_val scenes
PATCH = (60.0, 30.0)  # the BEV patch, metres along x (forward) and y
KEYFRAME_HZ = 2.0
MIN_SECONDS = 6.0  # shorter drives (dead ends, region edges) are dropped
MAX_LAT_ACC = 2.0
DRIVE_PREFIX = 'drive-'
#: the named splits of the drives (``splits.yaml``), in this order
DRIVE_SPLITS = ('geo_train', 'geo_val')


@dataclass(frozen=True)
class DrivePlanConfig:
    train_keyframes: int = 6000
    val_keyframes: int = 1000
    scene_seconds: float = 20.0
    val_radius: float = 250.0
    split_gap: float = 70.0
    cover_crossings: bool = True
    seed: int = 0


@dataclass
class Drive:
    name: str
    split: str  # 'geo_train' / 'geo_val'
    scene: SceneTracks
    purpose: str  # 'spread' / 'crossing'

    def keyframe_poses(self) -> np.ndarray:
        """(K, 3) x, y, heading at the 2 Hz keyframes (as the generator samples them)."""
        t = np.arange(int(np.floor(self.scene.duration * KEYFRAME_HZ)) + 1) / KEYFRAME_HZ + self.scene.ego.t[0]
        return np.array([self.scene.ego.pose_at(float(x)) for x in t])


@dataclass
class DrivePlan:
    config: DrivePlanConfig
    drives: list[Drive]
    uncovered: dict[str, int] = field(default_factory=dict)  # city -> crossings no drive could reach
    junctions: dict[str, np.ndarray] = field(default_factory=dict)  # city -> junction points (statistics)

    def split_names(self) -> dict[str, list[str]]:
        out = {'geo_train': [], 'geo_val': []}
        for d in self.drives:
            out[d.split].append(d.name)
        return out


# ----------------------------------------------------------------------------------------------------------------
# per-city geometry


class CityPlanner:
    """Lane graph, crossings, walkways and kerbs of one city, and the val region there."""

    def __init__(self, dataroot: Path, city: str, tracks: dict[str, SceneTracks], cfg: DrivePlanConfig):
        self.city = city
        vehicle_tracks = []
        for s in tracks.values():
            if s.city != city:
                continue
            vehicle_tracks.append((s.ego.xy, s.ego.heading))
            for a in s.agents:
                if a.type == 'VEHICLE' and len(a.t) > 5 and np.hypot(*(a.xy[-1] - a.xy[0])) > 5:
                    vehicle_tracks.append((a.xy, a.heading))
        self.graph = LaneGraph.build(dataroot, city, vehicle_tracks, cfg.seed)
        nusc_map = load_nusc_map(dataroot, city)
        self.crossings = map_polygons(nusc_map, 'ped_crossing')
        self.walkways = map_polygons(nusc_map, 'walkway')
        val_xy = [s.ego.xy for n, s in tracks.items() if n in VAL_SCENES and s.city == city]
        self.val_tree = cKDTree(np.vstack(val_xy)) if val_xy else None
        self.val_radius = cfg.val_radius
        lanes = self.graph.lanes
        self.lane_points = np.vstack([ln.line for ln in lanes])
        self.lane_of_point = np.concatenate([np.full(len(ln.line), ln.index) for ln in lanes])
        self.index_in_lane = np.concatenate([np.arange(len(ln.line)) for ln in lanes])
        self.point_tree = cKDTree(self.lane_points)
        self.predecessors: list[list[int]] = [[] for _ in lanes]
        for a, succ in enumerate(self.graph.successors):
            for c in succ:
                self.predecessors[c.to].append(a)
        kerb = self.graph.drivable.boundary
        self.kerbs = [np.asarray(g.coords)[:, :2] for g in getattr(kerb, 'geoms', [kerb])]

    def in_val_region(self, xy: np.ndarray) -> np.ndarray:
        if self.val_tree is None:
            return np.zeros(len(xy), bool)
        return self.val_tree.query(xy, distance_upper_bound=self.val_radius)[0] <= self.val_radius

    def lane_points_in(self, region: str) -> np.ndarray:
        val = self.in_val_region(self.lane_points)
        return np.nonzero(val if region == 'geo_val' else ~val)[0]

    # -- routes ---------------------------------------------------------------------------------------------------
    def back_from(self, lane: int, index: int, metres: float, rng: np.random.Generator) -> tuple[int, int]:
        """The lane point ``metres`` before point ``index`` of ``lane``, walking back through seeded predecessors."""
        steps = int(round(metres / (self.graph.lanes[lane].length / max(len(self.graph.lanes[lane].line) - 1, 1))))
        while steps > index and self.predecessors[lane]:
            steps -= index + 1
            lane = self.predecessors[lane][int(rng.integers(len(self.predecessors[lane])))]
            index = len(self.graph.lanes[lane].line) - 1
        return lane, max(0, index - steps)

    def route(self, lane: int, start: int, length: float, rng: np.random.Generator) -> np.ndarray:
        """Points (STEP apart) from point ``start`` of ``lane`` along seeded successors, up to ``length`` metres."""
        parts = [self.graph.lanes[lane].line[start:]]
        total = _length(parts[0])
        cur = lane
        while total < length:
            succ = self.graph.successors[cur]
            if not succ:
                break
            c = succ[int(rng.integers(len(succ)))]
            nxt = self.graph.lanes[c.to].line
            parts.extend([c.path, nxt])
            total += _length(np.vstack([parts[-3][-1:], c.path, nxt]))
            cur = c.to
        return resample_polyline(np.vstack([p for p in parts if len(p)]), 0.5)


def _length(pts: np.ndarray) -> float:
    return float(np.hypot(*np.diff(pts, axis=0).T).sum()) if len(pts) > 1 else 0.0


def drive_along(path: np.ndarray, cruise: float, seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample a path at 10 Hz at a cruise speed that slows for curves: (t, xy, heading), at most ``seconds``."""
    ds = np.hypot(*np.diff(path, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(ds)])
    h = np.unwrap(headings(path))
    curv = np.abs(np.gradient(h, s, edge_order=1)) if len(path) > 2 else np.zeros(len(path))
    v = np.minimum(cruise, np.sqrt(MAX_LAT_ACC / np.maximum(curv, 1e-4)))
    # look ahead: brake smoothly (a moving minimum over 15 m, then a moving average)
    w = max(1, int(15.0 / max(np.median(ds), 1e-3)))
    vmin = np.array([v[i:i + w].min() for i in range(len(v))])
    v = np.maximum(np.convolve(np.pad(vmin, w // 2, mode='edge'), np.ones(w) / w, 'same')[w // 2:w // 2 + len(v)],
                   1.0)
    t_of_s = np.concatenate([[0.0], np.cumsum(ds / (0.5 * (v[1:] + v[:-1])))])
    t = np.arange(0.0, min(seconds, t_of_s[-1]) + 1e-9, STEP_SECONDS)
    st = np.interp(t, t_of_s, s)
    xy = np.column_stack([np.interp(st, s, path[:, 0]), np.interp(st, s, path[:, 1])])
    return t, xy, np.interp(st, s, h)


def patch_corners(x: float, y: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    hx, hy = PATCH[0] / 2, PATCH[1] / 2
    local = np.array([[hx, hy], [hx, -hy], [-hx, -hy], [-hx, hy]])
    return local @ np.array([[c, s], [-s, c]]) + [x, y]


def patches(poses: np.ndarray) -> np.ndarray:
    """shapely polygons of the BEV patches of (K, 3) keyframe poses."""
    return shapely.polygons([patch_corners(*p) for p in poses])


# ----------------------------------------------------------------------------------------------------------------
# agents


class AgentPool:
    """Real agent types and box sizes from the tracks file."""

    def __init__(self, tracks: dict[str, SceneTracks]):
        self.sizes: dict[str, list] = {}
        for s in tracks.values():
            for a in s.agents:
                self.sizes.setdefault(a.type, []).append(a.lwh)

    def size(self, kind: str, rng) -> tuple[float, float, float]:
        pool = self.sizes.get(kind) or self.sizes.get('VEHICLE') or [(4.5, 1.9, 1.6)]
        return tuple(float(v) for v in pool[int(rng.integers(len(pool)))])


def _static(ident, kind, lwh, x, y, h, seconds) -> Track:
    return Track(ident, kind, np.array([0.0, seconds]), np.array([[x, y], [x, y]], float), np.array([h, h], float),
                 lwh)


def make_agents(city: CityPlanner, pool: AgentPool, ego_xy: np.ndarray, seconds: float, rng,
                name: str) -> list[Track]:
    """Vehicles on lanes and at kerbs, pedestrians on crossings and walkways, around the ego's route."""
    out: list[Track] = []
    near = np.unique(np.concatenate(city.point_tree.query_ball_point(ego_xy[::10], 45.0)))
    ego_tree = cKDTree(ego_xy)

    def clear_of_ego(xy, margin):
        return ego_tree.query(xy)[0].min() > margin

    # moving vehicles
    for k in range(int(rng.integers(2, 9))):
        if not len(near):
            break
        p = near[int(rng.integers(len(near)))]
        path = city.route(city.lane_of_point[p], city.index_in_lane[p], 16 * seconds, rng)
        if len(path) < 3:
            continue
        t, xy, h = drive_along(path, float(rng.uniform(3, 12)), seconds)
        if len(t) < 2:
            continue
        # the agent stays at its last pose when its path ends before the scene does
        idx = np.minimum(np.arange(len(ego_xy)), len(xy) - 1)
        if np.hypot(*(xy[idx] - ego_xy).T).min() > 7.0:
            out.append(Track(f'{name}/car{k}', 'VEHICLE', t, xy, h, pool.size('VEHICLE', rng)))
    # parked vehicles: along the kerb near the route, inside the road
    for k in range(int(rng.integers(1, 7))):
        centre = ego_xy[int(rng.integers(len(ego_xy)))]
        cand = [kb for kb in city.kerbs if cKDTree(kb).query(centre)[0] < 40]
        if not cand:
            continue
        kerb = resample_polyline(cand[int(rng.integers(len(cand)))], 1.0)
        i = int(rng.integers(1, max(2, len(kerb) - 1)))
        d = kerb[min(i + 1, len(kerb) - 1)] - kerb[i - 1]
        h = float(np.arctan2(d[1], d[0]))
        lwh = pool.size('VEHICLE', rng)
        normal = np.array([-np.sin(h), np.cos(h)])
        for side in (1.0, -1.0):
            xy = kerb[i] + side * normal * (lwh[1] / 2 + 0.3)
            if city.graph.inside(xy[None])[0]:
                break
        else:
            continue
        if clear_of_ego(xy[None], 4.0):
            out.append(_static(f'{name}/parked{k}', 'VEHICLE', lwh, *xy, h + np.pi * rng.integers(2), seconds))
    # pedestrians across crossings near the route
    near_cross = [c for c in city.crossings if ego_tree.query(np.asarray(c.centroid.coords[0]))[0] < 40]
    for k in range(min(len(near_cross), int(rng.integers(0, 5)))):
        c = near_cross[int(rng.integers(len(near_cross)))]
        edges = two_longest_edges(c)
        if len(edges) < 2:
            continue
        a = np.asarray(edges[0].interpolate(float(rng.uniform(0.2, 0.8)), normalized=True).coords[0])
        b = np.asarray(edges[1].interpolate(edges[1].project(shapely.Point(a))).coords[0])
        if rng.random() < 0.5:
            a, b = b, a
        out.append(_walker(f'{name}/ped{k}', pool, a, b, seconds, rng))
    # pedestrians along walkways
    near_walk = [w for w in city.walkways if ego_tree.query(np.asarray(w.representative_point().coords[0]))[0] < 40]
    for k in range(min(len(near_walk), int(rng.integers(0, 6)))):
        w = near_walk[int(rng.integers(len(near_walk)))]
        ring = resample_polyline(np.asarray(w.exterior.coords)[:, :2], 1.0)
        i = int(rng.integers(len(ring)))
        j = (i + int(rng.integers(5, 25))) % len(ring)
        out.append(_walker(f'{name}/walker{k}', pool, ring[i], ring[j], seconds, rng))
    return out


def _walker(ident, pool, a, b, seconds, rng) -> Track:
    speed = float(rng.uniform(0.8, 1.6))
    dist = float(np.hypot(*(b - a)))
    t = np.arange(0.0, seconds + 1e-9, 0.5)
    f = np.clip(t * speed / max(dist, 1e-3), 0, 1)
    xy = a + f[:, None] * (b - a)
    h = np.full(len(t), float(np.arctan2(*(b - a)[::-1])))
    return Track(ident, 'PEDESTRIAN', t, xy, h, pool.size('PEDESTRIAN', rng))


# ----------------------------------------------------------------------------------------------------------------
# the planner


def plan_drives(dataroot: Path, cfg: DrivePlanConfig) -> DrivePlan:
    """Deterministic for (cfg, dataroot): the same drives, agents and splits every time."""
    tracks = load_scene_tracks(Path(dataroot) / 'scenes.json.gz')
    cities = {c: CityPlanner(Path(dataroot), c, tracks, cfg) for c in CITIES}
    pool = AgentPool(tracks)
    rng = np.random.default_rng([cfg.seed, 13])
    drives: list[Drive] = []
    counts = {'geo_train': 0, 'geo_val': 0}
    targets = {'geo_train': cfg.train_keyframes, 'geo_val': cfg.val_keyframes}
    keys: dict = {(c, s): [] for c in CITIES for s in counts}  # keyframe positions per city and split

    def allowed(city: CityPlanner, split: str, xy: np.ndarray) -> np.ndarray:
        inside = city.in_val_region(xy)
        ok = inside if split == 'geo_val' else ~inside
        other = keys[city.city, 'geo_train' if split == 'geo_val' else 'geo_val']
        if other:
            ok &= cKDTree(np.vstack(other)).query(xy, distance_upper_bound=cfg.split_gap)[0] > cfg.split_gap
        return ok

    def try_drive(city: CityPlanner, split: str, lane: int, start: int, purpose: str) -> Drive | None:
        cruise = float(rng.uniform(3.0, 15.0))
        path = city.route(lane, start, cruise * cfg.scene_seconds * 1.2 + 20, rng)
        if len(path) < 3:
            return None
        t, xy, h = drive_along(path, cruise, cfg.scene_seconds)
        ok = allowed(city, split, xy)
        stop = int(np.argmin(ok)) if not ok.all() else len(t)
        if stop * STEP_SECONDS < MIN_SECONDS:
            return None
        t, xy, h = t[:stop], xy[:stop], h[:stop]
        name = f'{DRIVE_PREFIX}{len(drives):05d}'
        scene = SceneTracks(name, city.city, Track(f'{name}/ego', 'EGO', t, xy, h, (4.5, 1.9, 1.6)), [])
        return Drive(name, split, scene, purpose)

    def add(d: Drive) -> None:
        city = cities[d.scene.city]
        d.scene.agents = make_agents(city, pool, d.scene.ego.xy, float(d.scene.ego.t[-1]), rng, d.name)
        drives.append(d)
        k = d.keyframe_poses()
        counts[d.split] += len(k)
        keys[d.scene.city, d.split].append(k[:, :2])

    def spread(split: str) -> None:
        """Drives starting uniformly over the lane length of the split's region, until its keyframe target."""
        pts = {c: cities[c].lane_points_in(split) for c in CITIES}
        weights = np.array([len(pts[c]) for c in CITIES], float)
        failures = 0
        while weights.sum() and counts[split] < targets[split] and failures < 2000:
            c = CITIES[int(rng.choice(len(CITIES), p=weights / weights.sum()))]
            p = pts[c][int(rng.integers(len(pts[c])))]
            d = try_drive(cities[c], split, cities[c].lane_of_point[p], cities[c].index_in_lane[p], 'spread')
            if d is None:
                failures += 1
            else:
                add(d)

    # the crossings first, then the spread drives; every drive keeps its distance from the keyframes of the other
    # split, so the order decides who gets the band between the regions
    if cfg.cover_crossings:
        for c in CITIES:  # crossings inside the val region first, then those a train drive can see
            _cover_crossings(cities[c], drives, try_drive, add, 'geo_val', rng, reach=0.0)
        for _ in range(3):  # then the band between the regions; later rounds draw other routes
            for split in DRIVE_SPLITS:
                for c in CITIES:
                    _cover_crossings(cities[c], drives, try_drive, add, split, rng)
    spread('geo_val')
    spread('geo_train')
    uncovered = {c: len(_unseen(cities[c], drives)) for c in CITIES} if cfg.cover_crossings else {}
    return DrivePlan(cfg, drives, uncovered, {c: cities[c].graph.junctions for c in CITIES})


def _unseen(city: CityPlanner, drives: list[Drive]) -> list[int]:
    """Indices of the city's crossings that no keyframe patch of ``drives`` intersects."""
    if not city.crossings:
        return []
    polys = [patches(d.keyframe_poses()) for d in drives if d.scene.city == city.city]
    seen = np.zeros(len(city.crossings), bool)
    if polys:
        hit = shapely.STRtree(np.array(city.crossings, dtype=object)).query(np.concatenate(polys),
                                                                              predicate='intersects')[1]
        seen[np.unique(hit)] = True
    return [int(i) for i in np.nonzero(~seen)[0]]


def _cover_crossings(city: CityPlanner, drives: list[Drive], try_drive, add, split: str, rng,
                     reach: float = 30.0) -> None:
    """Add ``split`` drives that see each crossing no keyframe patch has seen yet: from lane points within 28 m of
    the crossing (up to 8 lanes), starting 12, 30, 0, 60 or 100 m before that point (the first that works; walking
    back into predecessor lanes), kept when a keyframe patch of the drive intersects the crossing. Val drives try
    the crossings a val keyframe may reach (centre within ``val_radius + reach`` of the val tracks), train drives
    any."""
    reach = city.val_radius + reach
    added: list[Drive] = []
    for i in _unseen(city, drives):
        crossing = city.crossings[i]
        centre = np.asarray(crossing.centroid.coords[0])
        near_val = city.val_tree is not None and city.val_tree.query(centre)[0] <= reach
        if split == 'geo_val' and not near_val:
            continue
        if added and not _unseen_of(city, added, [i]):
            continue  # seen by a drive added for an earlier crossing
        cand = city.point_tree.query_ball_point(centre, 28.0)
        lanes_tried: set[int] = set()
        done = False
        for p in sorted(cand, key=lambda q: float(np.hypot(*(city.lane_points[q] - centre)))):
            lane = int(city.lane_of_point[p])
            if lane in lanes_tried:
                continue
            lanes_tried.add(lane)
            for back in (12.0, 30.0, 0.0, 60.0, 100.0):  # start before the crossing, so the drive passes it
                start = city.back_from(lane, int(city.index_in_lane[p]), back, rng)
                d = try_drive(city, split, *start, 'crossing')
                if d is not None and not _unseen_of(city, [d], [i]):
                    add(d)
                    added.append(d)
                    done = True
                    break
            if done or len(lanes_tried) >= 8:
                break


def _unseen_of(city: CityPlanner, drives: list[Drive], which: list[int]) -> list[int]:
    polys = np.concatenate([patches(d.keyframe_poses()) for d in drives])
    return [i for i in which if not shapely.intersects(polys, city.crossings[i]).any()]


# ----------------------------------------------------------------------------------------------------------------
# statistics


def keyframe_table(plan: DrivePlan, dataroot: Path, limit: int = 0) -> list[dict]:
    """One row per keyframe (the first ``limit`` of each drive when it is set, as the generator writes them):
    drive, split, city, pose and what its patch holds (crossing, intersection, curve)."""
    rows = []
    per_city = {}
    for c in CITIES:
        nusc_map = load_nusc_map(dataroot, c)
        per_city[c] = (np.array(map_polygons(nusc_map, 'ped_crossing'), dtype=object), plan.junctions[c])
    for d in plan.drives:
        poses = d.keyframe_poses()[:limit or None]
        crossings, junctions = per_city[d.scene.city]
        polys = patches(poses)
        has_cross = np.zeros(len(poses), bool)
        if len(crossings):
            has_cross[np.unique(shapely.STRtree(crossings).query(polys, predicate='intersects')[0])] = True
        has_junction = np.zeros(len(poses), bool)
        if len(junctions):
            has_junction = np.array([shapely.contains_xy(p, junctions[:, 0], junctions[:, 1]).any() for p in polys])
        # a curve: the ego's heading changes by more than 15 degrees within 15 m of path either side
        ego = d.scene.ego
        s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(ego.xy, axis=0).T))])
        curve = []
        for x, y, _ in poses:
            i = int(np.argmin(np.hypot(ego.xy[:, 0] - x, ego.xy[:, 1] - y)))
            win = np.abs(s - s[i]) <= 15.0
            curve.append(float(np.ptp(ego.heading[win])) > np.radians(15))
        for k, (x, y, yaw) in enumerate(poses):
            rows.append(dict(scene=d.name, split=d.split, city=d.scene.city, k=k, x=float(x), y=float(y),
                             yaw=float(yaw), crossing=bool(has_cross[k]), intersection=bool(has_junction[k]),
                             curve=bool(curve[k]), purpose=d.purpose))
    return rows


def plan_summary(plan: DrivePlan, rows: list[dict]) -> dict:
    """Counts, per-split shares, the train-val minimum distance and crossing coverage."""
    out: dict = {'drives': len(plan.drives), 'uncovered_crossings': dict(plan.uncovered)}
    for split in DRIVE_SPLITS:
        r = [x for x in rows if x['split'] == split]
        out[split] = {'keyframes': len(r), 'scenes': len({x['scene'] for x in r}),
                      'per_city': {c: sum(x['city'] == c for x in r) for c in CITIES},
                      'share_crossing': float(np.mean([x['crossing'] for x in r])) if r else 0.0,
                      'share_intersection': float(np.mean([x['intersection'] for x in r])) if r else 0.0,
                      'share_curve': float(np.mean([x['curve'] for x in r])) if r else 0.0}
    out['min_train_val_distance_m'] = min_train_val_distance(rows)
    return out


def min_train_val_distance(rows: list[dict]) -> float:
    best = np.inf
    for c in CITIES:
        tr = np.array([[x['x'], x['y']] for x in rows if x['split'] == 'geo_train' and x['city'] == c])
        va = np.array([[x['x'], x['y']] for x in rows if x['split'] == 'geo_val' and x['city'] == c])
        if len(tr) and len(va):
            best = min(best, float(cKDTree(va).query(tr)[0].min()))
    return best


def write_plan_files(root: Path, plan: DrivePlan, rows: list[dict], present: set[str] | None = None) -> None:
    """``splits.yaml`` (geo_train / geo_val scene lists, read by the index) and ``drives.json.gz`` (keyframes);
    ``present``: the scenes the dataroot holds (a subset leaves some drives out), default all."""
    import yaml
    splits = {split: [n for n in names if present is None or n in present]
              for split, names in plan.split_names().items()}
    (root / 'splits.yaml').write_text(yaml.safe_dump(splits, default_flow_style=False), encoding='utf-8')
    data = json.dumps({'summary': plan_summary(plan, rows), 'keyframes': rows}, sort_keys=True).encode()
    with open(root / 'drives.json.gz', 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as fh:
        fh.write(data)  # mtime 0: the same plan gives the same bytes
