"""The real ego and agent tracks of the ten v1.0-mini scenes (``scenes.json.gz``), interpolated in time.

Layout of the file (see assets/nuscenes_tiny/README.md): ``{scene: {city, rate_hz, length, ego: TRACK,
agents: [TRACK]}}`` with ``TRACK = {id, type, steps, xy, z, heading, lwh}``; ``steps`` index the 10 Hz timeline of
the scene (a track has entries only where it was observed), poses are in the global map frame. Agent boxes are
``lwh`` = (length, width, height).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DatasetNotFoundError

STEP_SECONDS = 0.1  # the tracks are sampled at 10 Hz


@dataclass
class Track:
    id: str
    type: str
    t: np.ndarray  # seconds from the scene start, increasing
    xy: np.ndarray  # (N, 2) global map frame
    heading: np.ndarray  # (N,) radians, unwrapped
    lwh: tuple[float, float, float]

    @classmethod
    def from_json(cls, rec: dict) -> 'Track':
        steps = np.asarray(rec['steps'], dtype=np.float64)
        order = np.argsort(steps, kind='stable')
        return cls(id=str(rec['id']), type=str(rec['type']), t=steps[order] * STEP_SECONDS,
                   xy=np.asarray(rec['xy'], dtype=np.float64)[order],
                   heading=np.unwrap(np.asarray(rec['heading'], dtype=np.float64)[order]),
                   lwh=tuple(float(v) for v in rec['lwh']))

    def covers(self, t: float) -> bool:
        return bool(self.t[0] - 1e-9 <= t <= self.t[-1] + 1e-9)

    def pose_at(self, t: float) -> tuple[float, float, float]:
        """(x, y, heading) at time t (linear interpolation; clamped at the ends)."""
        if len(self.t) == 1:
            return float(self.xy[0, 0]), float(self.xy[0, 1]), float(self.heading[0])
        x = np.interp(t, self.t, self.xy[:, 0])
        y = np.interp(t, self.t, self.xy[:, 1])
        h = np.interp(t, self.t, self.heading)
        return float(x), float(y), float(h)


@dataclass
class SceneTracks:
    name: str
    city: str
    ego: Track
    agents: list[Track]

    @property
    def duration(self) -> float:
        return float(self.ego.t[-1] - self.ego.t[0])

    def agents_at(self, t: float) -> list[tuple[Track, tuple[float, float, float]]]:
        """The agents observed at time t with their interpolated poses."""
        return [(a, a.pose_at(t)) for a in self.agents if a.covers(t)]


def load_scene_tracks(path: str | Path) -> dict[str, SceneTracks]:
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f'scene tracks file not found: {path}')
    with gzip.open(path, 'rt', encoding='utf-8') as fh:
        data = json.load(fh)
    out = {}
    for name, rec in data.items():
        out[name] = SceneTracks(name=name, city=rec['city'], ego=Track.from_json(rec['ego']),
                                agents=[Track.from_json(a) for a in rec['agents']])
    return out
