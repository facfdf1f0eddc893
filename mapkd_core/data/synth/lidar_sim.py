"""A 32-beam spinning LiDAR like nuScenes LIDAR_TOP, ray-cast against the flat ground and the agent boxes.

Beams at elevations evenly spread over about -30.7 to +10.7 degrees (the HDL-32E pattern), ``azimuths`` steps per
revolution. Each ray keeps its nearest hit: the ground plane z = 0 of the ego frame, or an agent box (slab test).
Intensity is high on painted markings and low on asphalt, as on real roads. Points are written in the sensor frame
with 5 float32 per point (x, y, z, intensity, ring index), as nuScenes ``.pcd.bin`` files.
"""
from __future__ import annotations

import numpy as np

from .camera import Box
from .world import CURB, LANE_PAINT, OFFROAD, PED_PAINT, ROAD, ROAD_DIVIDER_PAINT, SIDEWALK, GroundPatch

#: (low, high) intensity per ground class; paint is retro-reflective
INTENSITY = {OFFROAD: (4, 18), SIDEWALK: (10, 25), ROAD: (3, 12), CURB: (12, 28), PED_PAINT: (60, 110),
             LANE_PAINT: (60, 110), ROAD_DIVIDER_PAINT: (60, 110)}
BOX_INTENSITY = (15, 50)


class LidarModel:
    def __init__(self, sensor_to_ego: np.ndarray, beams: int = 32, elevation=(-30.67, 10.67), azimuths: int = 1084,
                 max_range: float = 70.0, dropout: float = 0.03, range_noise: float = 0.02):
        self.sensor_to_ego = np.asarray(sensor_to_ego, dtype=np.float64)
        el = np.radians(np.linspace(elevation[0], elevation[1], beams))
        az = np.arange(azimuths) * (2 * np.pi / azimuths)
        el_g, az_g = np.meshgrid(el, az, indexing='ij')
        self.dirs_sensor = np.stack([np.cos(el_g) * np.cos(az_g), np.cos(el_g) * np.sin(az_g), np.sin(el_g)],
                                    -1).reshape(-1, 3)
        self.ring = np.repeat(np.arange(beams, dtype=np.float32), azimuths)
        self.dirs = self.dirs_sensor @ self.sensor_to_ego[:3, :3].T  # ego frame
        self.ray_azimuth = np.arctan2(self.dirs[:, 1], self.dirs[:, 0])
        self.origin = self.sensor_to_ego[:3, 3]
        down = self.dirs[:, 2] < -1e-6
        self.ground_range = np.where(down, -self.origin[2] / np.where(down, self.dirs[:, 2], -1.0), np.inf)
        self.max_range = max_range
        self.dropout = dropout
        self.range_noise = range_noise

    def _box_ranges(self, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
        """Nearest box hit per ray (inf if none) and the index of that box."""
        best = np.full(len(self.dirs), np.inf)
        which = np.full(len(self.dirs), -1)
        for i, b in enumerate(boxes):
            if np.hypot(b.x - self.origin[0], b.y - self.origin[1]) > self.max_range + max(b.lwh):
                continue
            # only the rays whose azimuth falls within the box's angular extent (plus a margin) can hit it
            corners = b.corners()[:4, :2] - self.origin[:2]
            centre_az = np.arctan2(b.y - self.origin[1], b.x - self.origin[0])
            spread = np.abs((np.arctan2(corners[:, 1], corners[:, 0]) - centre_az + np.pi) % (2 * np.pi) - np.pi)
            if np.hypot(b.x - self.origin[0], b.y - self.origin[1]) < max(b.lwh[:2]):
                rays = np.arange(len(self.dirs))  # the sensor is at or in the box: test every ray
            else:
                delta = np.abs((self.ray_azimuth - centre_az + np.pi) % (2 * np.pi) - np.pi)
                rays = np.nonzero(delta <= spread.max() + 0.02)[0]
            if not len(rays):
                continue
            c, s = np.cos(b.heading), np.sin(b.heading)
            rot = np.array([[c, s], [-s, c]])  # ego -> box frame (planar)
            o = np.array([*(rot @ (self.origin[:2] - [b.x, b.y])), self.origin[2]])
            dirs = self.dirs[rays]
            d = np.column_stack([dirs[:, :2] @ rot.T, dirs[:, 2]])
            lo = np.array([-b.lwh[0] / 2, -b.lwh[1] / 2, 0.0])
            hi = np.array([b.lwh[0] / 2, b.lwh[1] / 2, b.lwh[2]])
            with np.errstate(divide='ignore', invalid='ignore'):
                inv = 1.0 / d
                t1 = (lo - o) * inv
                t2 = (hi - o) * inv
            t_near = np.nanmax(np.minimum(t1, t2), axis=1)
            t_far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (t_far >= t_near) & (t_near > 0.05)
            closer = hit & (t_near < best[rays])
            best[rays[closer]] = t_near[closer]
            which[rays[closer]] = i
        return best, which

    def scan(self, ground: GroundPatch, sweep_ego_to_key_ego: np.ndarray, boxes: list[Box],
             rng: np.random.Generator) -> np.ndarray:
        """(N, 5) float32 points in the sensor frame. ``boxes`` are in the ego frame at the sweep's time;
        ``ground`` is in the keyframe's ego frame, reached through the planar transform ``sweep_ego_to_key_ego``."""
        box_r, box_i = self._box_ranges(boxes)
        r = np.minimum(self.ground_range, box_r)
        keep = (r <= self.max_range) & (rng.random(len(r)) >= self.dropout)
        r = r[keep]
        on_box = (box_r[keep] <= self.ground_range[keep])
        hits = self.origin + self.dirs[keep] * r[:, None]
        a = sweep_ego_to_key_ego
        hx = a[0, 0] * hits[:, 0] + a[0, 1] * hits[:, 1] + a[0, 2]
        hy = a[1, 0] * hits[:, 0] + a[1, 1] * hits[:, 1] + a[1, 2]
        cls = ground.lookup(hx, hy)
        intensity = np.empty(len(r), np.float32)
        for c, (lo, hi) in INTENSITY.items():
            m = (cls == c) & ~on_box
            intensity[m] = rng.uniform(lo, hi, m.sum())
        intensity[on_box] = rng.uniform(*BOX_INTENSITY, on_box.sum())
        r_noisy = r + rng.normal(0.0, self.range_noise, len(r))
        pts = self.dirs_sensor[keep] * r_noisy[:, None]
        return np.column_stack([pts, intensity, self.ring[keep]]).astype(np.float32)
