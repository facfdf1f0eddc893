"""``mapkd-synth``: write a complete nuScenes dataroot rendered from the real maps and tracks.

The output is a ``v1.0-mini`` dataroot (tables, ``samples/``, optional ``sweeps/``, ``maps/expansion/``) that
nuscenes-devkit and our loader read unchanged. One scene per real v1.0-mini track, with the real scene names, so the
official ``mini_train`` / ``mini_val`` splits apply: mini_val is scene-0103 (boston-seaport) and scene-0916
(singapore-queenstown), two cities with ped crossings.

* Ego poses come from the real 10 Hz tracks, interpolated: keyframes at 2 Hz, optional camera sweeps at 12 Hz and
  LiDAR sweeps at 20 Hz. Each camera fires at its real offset from the LiDAR keyframe (from the bundled keyframe).
* Calibration is the real keyframe's (six cameras and LIDAR_TOP); intrinsics are scaled to the output size.
* Cameras see the painted world of :mod:`.world` (road, sidewalk, curbs, dashed lane dividers, solid road dividers,
  zebra crossings, the agents as boxes, sky); per keyframe a seeded style varies exposure, tint, noise and wear.
* LiDAR is a 32-beam spinning pattern ray-cast against the ground and the boxes (:mod:`.lidar_sim`).

Deterministic for a seed: the same arguments give identical bytes. Usage::

    mapkd-synth --out data/synth [--scenes scene-0061,scene-0103] [--seed 0] [--limit 10] [--width 800]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...constants import CAMERAS
from ...geometry import make_transform, scale_intrinsics
from ...paths import bundled_dataroot
from ..patch import ego_to_map_2d
from .camera import Box, CameraModel
from .lidar_sim import LidarModel
from .style import AGENT_PALETTE, Style, colour_texture, finish_image, wear_markings
from .tables import (calibrated_row, link, pose_row, sensor_tokens, token, write_tables)
from .tracks import SceneTracks, load_scene_tracks
from .world import CityWorld

GENERATOR_VERSION = 1
LIDAR = 'LIDAR_TOP'
KEYFRAME_HZ = 2.0
CAMERA_HZ = 12.0
LIDAR_HZ = 20.0


@dataclass(frozen=True)
class SynthConfig:
    scenes: tuple[str, ...] = ()  # empty: all scenes of the tracks file
    seed: int = 0
    limit: int = 0  # keyframes per scene, 0 = all (about 40)
    width: int = 800  # height = width * 9 / 16, like the real 1600x900 cameras
    camera_sweeps: bool = False
    lidar_sweeps: bool = False
    render_range: float = 60.0  # metres of painted ground around the ego; beyond is haze
    texture_resolution: float = 0.05  # metres per texel of the ground texture
    fog_start: float = 25.0
    jpeg_quality: int = 90
    workers: int = 0  # 0 = min(2, CPU count)
    version: str = 'v1.0-mini'
    source: str = field(default='', compare=False)  # bundled dataroot override (tests)

    @property
    def height(self) -> int:
        return int(round(self.width * 9 / 16))

    def validate(self) -> None:
        if self.width < 64 or self.width > 3200 or self.width % 16:
            raise ValueError(f'--width must be a multiple of 16 in [64, 3200], got {self.width}')
        if self.limit < 0:
            raise ValueError(f'--limit must be >= 0, got {self.limit}')
        if not 10 <= self.jpeg_quality <= 100:
            raise ValueError(f'jpeg_quality must be in [10, 100], got {self.jpeg_quality}')


# ----------------------------------------------------------------------------------------------------------------
# the real rig (calibration and camera timing) from the bundled keyframe


@dataclass
class Rig:
    sensor_to_ego: dict[str, np.ndarray]
    intrinsic: dict[str, np.ndarray]  # at the output size
    offset_us: dict[str, int]  # sensor timestamp minus the LiDAR keyframe timestamp
    sensor_token: dict[str, str]


def load_rig(source: Path, width: int, height: int) -> Rig:
    tables = source / 'v1.0-mini'
    rows = {n: json.loads((tables / f'{n}.json').read_text()) for n in
            ('sample_data', 'calibrated_sensor', 'sensor')}
    cs = {r['token']: r for r in rows['calibrated_sensor']}
    channel_of = {r['token']: r['channel'] for r in rows['sensor']}
    s2e, intr, stamp = {}, {}, {}
    for sd in rows['sample_data']:
        c = cs[sd['calibrated_sensor_token']]
        ch = channel_of[c['sensor_token']]
        s2e[ch] = make_transform(c['rotation'], c['translation'])
        stamp[ch] = int(sd['timestamp'])
        if c['camera_intrinsic']:
            intr[ch] = scale_intrinsics(np.asarray(c['camera_intrinsic']), width / sd['width'], height / sd['height'])
    key = stamp[LIDAR]
    return Rig(s2e, intr, {ch: t - key for ch, t in stamp.items()}, {v: k for k, v in channel_of.items()})


# ----------------------------------------------------------------------------------------------------------------
# scene timeline


def scene_number(name: str) -> int:
    digits = ''.join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def scene_base_us(name: str) -> int:
    """A fixed start time per scene (2020-09-13 + scene number x 100 s)."""
    return 1_600_000_000_000_000 + scene_number(name) * 100_000_000


def keyframe_times(scene: SceneTracks, limit: int) -> list[float]:
    """Keyframe times (s from the track start) at 2 Hz, leaving room for the 12/20 Hz sweeps before the next."""
    t0 = float(scene.ego.t[0])
    n = int(np.floor(scene.duration * KEYFRAME_HZ)) + 1
    times = [t0 + k / KEYFRAME_HZ for k in range(n)]
    return times[:limit] if limit else times


def ego_pose_2d(scene: SceneTracks, t: float) -> np.ndarray:
    x, y, h = scene.ego.pose_at(t)
    return make_transform([np.cos(h / 2), 0.0, 0.0, np.sin(h / 2)], [x, y, 0.0])


# ----------------------------------------------------------------------------------------------------------------
# per-process renderer


class SceneRenderer:
    """Built once per worker process: city worlds, camera and LiDAR models."""

    def __init__(self, cfg: SynthConfig, source: Path):
        self.cfg = cfg
        self.source = source
        self.rig = load_rig(source, cfg.width, cfg.height)
        self.cameras = {ch: CameraModel(ch, self.rig.intrinsic[ch], self.rig.sensor_to_ego[ch], cfg.width,
                                        cfg.height, cfg.render_range) for ch in CAMERAS}
        self.lidar = LidarModel(self.rig.sensor_to_ego[LIDAR])
        self.worlds: dict[str, CityWorld] = {}
        self.tracks = load_scene_tracks(source / 'scenes.json.gz')

    def world(self, city: str) -> CityWorld:
        if city not in self.worlds:
            self.worlds[city] = CityWorld(self.source, city)
        return self.worlds[city]

    @staticmethod
    def boxes(scene: SceneTracks, t: float, ego_to_global: np.ndarray) -> list[Box]:
        to_ego = np.linalg.inv(ego_to_map_2d(ego_to_global))
        yaw = np.arctan2(ego_to_global[1, 0], ego_to_global[0, 0])
        out = []
        for agent, (x, y, h) in scene.agents_at(t):
            px, py, _ = to_ego @ [x, y, 1.0]
            colour = AGENT_PALETTE[int(token(agent.id)[:6], 16) % len(AGENT_PALETTE)]
            out.append(Box(float(px), float(py), float(h - yaw), agent.lwh, tuple(float(c) for c in colour)))
        return out

    def _frame_times(self, channel: str, hz: float, sweeps: bool, t_key: float, t_next: float | None) -> list:
        """Times of a sensor's frames from keyframe t_key up to the next keyframe (its real offset applied)."""
        offset = self.rig.offset_us[channel] * 1e-6
        times = [t_key + offset]
        if sweeps and t_next is not None:
            j = 1
            while t_key + offset + j / hz < t_next + offset - 1e-6:
                times.append(t_key + offset + j / hz)
                j += 1
        return times

    def render(self, scene_name: str, k: int, t_key: float, t_next: float | None = None):
        """Yield (channel, frame index, time, ego pose, data, labels) for keyframe k of a scene and its sweeps.

        Camera data is uint8 RGB with its ground-class labels (see ``world.GROUND_CLASS_NAMES``); LiDAR data is the
        (N, 5) float32 point array and ``None``. Everything is seeded by (seed, scene, keyframe, frame).
        """
        cfg = self.cfg
        scene = self.tracks[scene_name]
        world = self.world(scene.city)
        num = scene_number(scene_name)
        rng = np.random.default_rng([cfg.seed, num, k])
        style = Style.sample(rng, scene.city)
        key_pose = ego_pose_2d(scene, t_key)
        ground = world.ground(key_pose, cfg.render_range, cfg.texture_resolution)
        ground.classes = wear_markings(ground.classes, style.wear, rng)
        texture = colour_texture(ground.classes, style, rng)
        key_inv = np.linalg.inv(ego_to_map_2d(key_pose))
        for ci, ch in enumerate(CAMERAS):
            for j, t in enumerate(self._frame_times(ch, CAMERA_HZ, cfg.camera_sweeps, t_key, t_next)):
                pose = ego_pose_2d(scene, t)
                rel = key_inv @ ego_to_map_2d(pose)
                img, labels = self.cameras[ch].render(ground, texture, rel, self.boxes(scene, t, pose), style.sky,
                                                      style.haze, cfg.fog_start)
                img = finish_image(img, style, np.random.default_rng([cfg.seed, num, k, 1 + j, ci]))
                yield ch, j, t, pose, img, labels
        for j, t in enumerate(self._frame_times(LIDAR, LIDAR_HZ, cfg.lidar_sweeps, t_key, t_next)):
            pose = ego_pose_2d(scene, t)
            rel = key_inv @ ego_to_map_2d(pose)
            pts = self.lidar.scan(ground, rel, self.boxes(scene, t, pose),
                                  np.random.default_rng([cfg.seed, num, k, 100 + j]))
            yield LIDAR, j, t, pose, pts, None

    def keyframe(self, out: Path, scene_name: str, k: int, t_key: float, t_next: float | None) -> list[dict]:
        """Render keyframe k of a scene and its sweeps, write the files; returns the sample_data records."""
        base = scene_base_us(scene_name)
        logfile = f'synth-{scene_name}'
        records = []
        for ch, j, t, pose, data, _ in self.render(scene_name, k, t_key, t_next):
            ts = base + int(round(t * 1e6))
            folder = 'samples' if j == 0 else 'sweeps'
            if ch == LIDAR:
                rel_path = f'{folder}/{ch}/{logfile}__{ch}__{ts}.pcd.bin'
                (out / rel_path).write_bytes(data.astype(np.float32).tobytes())
                size = (0, 0)
            else:
                rel_path = f'{folder}/{ch}/{logfile}__{ch}__{ts}.jpg'
                ok, buf = cv2.imencode('.jpg', cv2.cvtColor(data, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
                if not ok:
                    raise RuntimeError(f'JPEG encoding failed for {rel_path}')
                (out / rel_path).write_bytes(buf.tobytes())
                size = (self.cfg.width, self.cfg.height)
            records.append(dict(channel=ch, t=t, timestamp=ts, key=j == 0, filename=rel_path, pose=pose,
                                width=size[0], height=size[1]))
        return records


_WORKER: SceneRenderer | None = None


def _init_worker(cfg: SynthConfig, source: str) -> None:
    global _WORKER
    cv2.setNumThreads(1)
    _WORKER = SceneRenderer(cfg, Path(source))


def _run_task(args):
    out, scene_name, k, t_key, t_next = args
    return scene_name, k, _WORKER.keyframe(Path(out), scene_name, k, t_key, t_next)


# ----------------------------------------------------------------------------------------------------------------
# tables


def build_tables(cfg: SynthConfig, rig: Rig, scenes: dict[str, SceneTracks], records: dict) -> dict[str, list]:
    tables: dict[str, list] = {n: [] for n in ('log', 'map', 'scene', 'sample', 'sample_data', 'ego_pose',
                                               'calibrated_sensor')}
    cities: dict[str, list[str]] = {}
    for name in sorted(scenes):
        scene = scenes[name]
        log_tok = token('log', name)
        tables['log'].append({'token': log_tok, 'logfile': f'synth-{name}', 'vehicle': 'synth',
                              'date_captured': '2020-09-13', 'location': scene.city})
        cities.setdefault(scene.city, []).append(log_tok)
        calib = {}
        for ch in (*CAMERAS, LIDAR):
            calib[ch] = token('calibrated_sensor', name, ch)
            tables['calibrated_sensor'].append(calibrated_row(calib[ch], rig.sensor_token[ch], rig.sensor_to_ego[ch],
                                                              rig.intrinsic.get(ch)))
        keys = sorted(k for (s, k) in records if s == name)
        samples = []
        for k in keys:
            lidar_key = next(r for r in records[(name, k)] if r['channel'] == LIDAR and r['key'])
            samples.append({'token': token('sample', name, k), 'timestamp': lidar_key['timestamp'],
                            'scene_token': token('scene', name)})
        link(samples)
        tables['sample'].extend(samples)
        tables['scene'].append({'token': token('scene', name), 'log_token': log_tok, 'nbr_samples': len(samples),
                                'name': name, 'description': f'synthetic rendering of the real track of {name}',
                                'first_sample_token': samples[0]['token'], 'last_sample_token': samples[-1]['token']})
        per_channel: dict[str, list[dict]] = {}
        for k in keys:
            for r in records[(name, k)]:
                sd_tok = token('sample_data', name, r['channel'], r['timestamp'])
                x, y = r['pose'][:2, 3]
                yaw = float(np.arctan2(r['pose'][1, 0], r['pose'][0, 0]))
                tables['ego_pose'].append(pose_row(sd_tok, r['timestamp'], x, y, yaw))
                per_channel.setdefault(r['channel'], []).append({
                    'token': sd_tok, 'sample_token': token('sample', name, k), 'ego_pose_token': sd_tok,
                    'calibrated_sensor_token': calib[r['channel']], 'timestamp': r['timestamp'],
                    'fileformat': 'jpg' if r['channel'] != LIDAR else 'pcd', 'is_key_frame': r['key'],
                    'height': r['height'], 'width': r['width'], 'filename': r['filename']})
        for ch in sorted(per_channel):
            tables['sample_data'].extend(link(sorted(per_channel[ch], key=lambda r: r['timestamp'])))
    for city in sorted(cities):
        map_tok = token('map', city)
        tables['map'].append({'token': map_tok, 'category': 'semantic_prior', 'filename': f'maps/{map_tok}.png',
                              'log_tokens': cities[city]})
    return tables


# ----------------------------------------------------------------------------------------------------------------
# top level


def generate(out: str | Path, cfg: SynthConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the synthetic dataroot to ``out`` (atomically: into a temporary folder renamed at the end)."""
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    source = Path(cfg.source) if cfg.source else bundled_dataroot()
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise FileExistsError(f'{out} exists and is not empty (use --overwrite to replace it)')
    all_tracks = load_scene_tracks(source / 'scenes.json.gz')
    names = list(cfg.scenes) if cfg.scenes else sorted(all_tracks)
    unknown = [n for n in names if n not in all_tracks]
    if unknown:
        raise ValueError(f'unknown scene(s) {unknown}; the tracks file has: {sorted(all_tracks)}')
    scenes = {n: all_tracks[n] for n in names}
    tmp = out.with_name(out.name + f'.tmp-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    for folder in ('samples', 'sweeps'):
        for ch in (*CAMERAS, LIDAR):
            (tmp / folder / ch).mkdir(parents=True, exist_ok=True)
    tasks = []
    for name, scene in scenes.items():
        times = keyframe_times(scene, cfg.limit)
        all_times = keyframe_times(scene, 0)
        for k, t in enumerate(times):
            t_next = all_times[k + 1] if k + 1 < len(all_times) else None
            tasks.append((str(tmp), name, k, t, t_next))
    workers = cfg.workers or min(2, os.cpu_count() or 1)
    records: dict = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks), desc='mapkd-synth', unit='sample', disable=not progress)
    if workers <= 1:
        _init_worker(cfg, str(source))
        for task in tasks:
            name, k, recs = _run_task(task)
            records[(name, k)] = recs
            bar.update()
    else:
        ctx = mp.get_context('spawn')
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(source))) as pool:
            for name, k, recs in pool.imap_unordered(_run_task, tasks):
                records[(name, k)] = recs
                bar.update()
    bar.close()
    rig = load_rig(source, cfg.width, cfg.height)
    tables = build_tables(cfg, rig, scenes, records)
    write_tables(tmp, cfg.version, tables, source / 'v1.0-mini')
    (tmp / 'maps' / 'expansion').mkdir(parents=True)
    for city in sorted({s.city for s in scenes.values()} | set()):
        shutil.copyfile(source / 'maps' / 'expansion' / f'{city}.json', tmp / 'maps' / 'expansion' / f'{city}.json')
    for row in tables['map']:
        # the devkit insists that the legacy semantic-prior mask named in map.json exists; nothing here reads it
        cv2.imwrite(str(tmp / row['filename']), np.zeros((8, 8), np.uint8))
    shutil.copyfile(source / 'LICENSE', tmp / 'LICENSE')
    (tmp / 'README.md').write_text(_readme(cfg, scenes), encoding='utf-8')
    params = {k: v for k, v in asdict(cfg).items() if k not in ('workers', 'source')}  # not part of the result
    (tmp / 'synth.json').write_text(json.dumps({'generator_version': GENERATOR_VERSION, **params, 'scenes': names},
                                               indent=1, sort_keys=True), encoding='utf-8')
    for folder in ('samples', 'sweeps'):  # drop empty sensor folders (no sweeps asked for)
        for ch_dir in (tmp / folder).iterdir():
            if not any(ch_dir.iterdir()):
                ch_dir.rmdir()
        if not any((tmp / folder).iterdir()):
            (tmp / folder).rmdir()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    n = len(tasks)
    dt = time.perf_counter() - t0
    if progress:
        print(f'mapkd-synth: {n} samples of {len(scenes)} scene(s) in {dt:.1f} s ({n / dt:.2f} samples/s) -> {out}')
    return out


def _readme(cfg: SynthConfig, scenes: dict[str, SceneTracks]) -> str:
    lines = ['# Synthetic nuScenes-format dataroot (generated by mapkd-synth)', '',
             'Rendered from the real nuScenes map expansion and the real ego and agent tracks of '
             'the v1.0-mini scenes. Not real sensor data. Derived from nuScenes: CC BY-NC-SA 4.0 and the nuScenes '
             'terms of use (see LICENSE).', '',
             f'Parameters: seed {cfg.seed}, {cfg.width}x{cfg.height} JPEG (quality {cfg.jpeg_quality}), '
             f'keyframes per scene {cfg.limit or "all"}, camera sweeps {cfg.camera_sweeps}, LiDAR sweeps '
             f'{cfg.lidar_sweeps}.', '', '| scene | city |', '| --- | --- |']
    lines += [f'| {n} | {s.city} |' for n, s in sorted(scenes.items())]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='mapkd-synth', description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output dataroot (must not exist, or be empty)')
    p.add_argument('--scenes', default='', help='comma-separated scene names (default: all ten)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--limit', type=int, default=0, help='keyframes per scene (default: all, about 40)')
    p.add_argument('--width', type=int, default=800, help='image width (height = 9/16 of it); default 800')
    p.add_argument('--camera-sweeps', action='store_true', help='also write 12 Hz camera sweeps')
    p.add_argument('--lidar-sweeps', action='store_true', help='also write 20 Hz LiDAR sweeps')
    p.add_argument('--workers', type=int, default=0, help='processes (default: up to 2)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args(argv)
    cfg = SynthConfig(scenes=tuple(s for s in args.scenes.split(',') if s), seed=args.seed, limit=args.limit,
                      width=args.width, camera_sweeps=args.camera_sweeps, lidar_sweeps=args.lidar_sweeps,
                      workers=args.workers)
    try:
        generate(args.out, cfg, progress=not args.quiet, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f'mapkd-synth: error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
