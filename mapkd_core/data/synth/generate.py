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
    mapkd-synth --out data/drives --drives --width 704 [--subset geo_train=1200,geo_val=300]
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
from ...errors import OutputExistsError, UsageError
from ...geometry import make_transform, scale_intrinsics
from ...paths import bundled_dataroot
from ..patch import ego_to_map_2d
from .camera import Box, CameraModel
from .drives import DRIVE_PREFIX, DRIVE_SPLITS
from .lidar_sim import LidarModel
from .style import AGENT_PALETTE, Style, cast_shadows, colour_texture, finish_image, wear_markings
from .tables import calibrated_row, link, pose_row, token, write_tables
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
    # virtual drives over the whole maps (see drives.py), added to the real-track scenes when ``drives`` is set
    drives: bool = False
    train_keyframes: int = 6000
    val_keyframes: int = 1000
    scene_seconds: float = 20.0
    cover_crossings: bool = True
    # with ``drives``: render only some keyframes of a drive split, ((split, count), ...): the ``count`` keyframes
    # that ``dataset.spread`` picks from the whole split (count 0: all of it), with byte-identical data (every
    # keyframe is seeded on its own), so a run that reads ``train_limit`` / ``limit`` frames of the full dataset
    # reads the same frames here at a fraction of the rendering (see ``subset_plan``)
    subset: tuple = ()
    # with ``subset``: the LiDAR of this many keyframes before each kept one, kept as its sweeps (the full dataset
    # has them as the previous keyframes' LiDAR: the loader's ``lidar_sweeps: 3`` reads two)
    lidar_history: int = 2

    def plan_config(self):
        from .drives import DrivePlanConfig
        return DrivePlanConfig(train_keyframes=self.train_keyframes, val_keyframes=self.val_keyframes,
                               scene_seconds=self.scene_seconds, cover_crossings=self.cover_crossings, seed=self.seed)

    @property
    def height(self) -> int:
        return int(round(self.width * 9 / 16))

    def validate(self) -> None:
        """Raise UsageError naming the first unusable value (its command-line option where it has one)."""
        if self.width < 64 or self.width > 3200 or self.width % 16:
            raise UsageError(f'--width must be a multiple of 16 in [64, 3200], got {self.width}')
        if self.limit < 0:
            raise UsageError(f'--limit must be >= 0, got {self.limit}')
        if not 10 <= self.jpeg_quality <= 100:
            raise UsageError(f'jpeg_quality must be in [10, 100], got {self.jpeg_quality}')
        if self.drives:
            if self.train_keyframes < 0:
                raise UsageError(f'--train-keyframes must be >= 0, got {self.train_keyframes}')
            if self.val_keyframes < 0:
                raise UsageError(f'--val-keyframes must be >= 0, got {self.val_keyframes}')
            if self.scene_seconds < 6:
                raise UsageError(f'drives: scene_seconds must be >= 6, got {self.scene_seconds}')
        if self.subset:
            if not self.drives:
                raise UsageError('subset: only a dataset with virtual drives (drives=True) has splits to subset')
            seen = set()
            for item in self.subset:
                if (not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] not in DRIVE_SPLITS
                        or isinstance(item[1], bool) or not isinstance(item[1], int) or item[1] < 0):
                    raise UsageError(f'subset: each item must be (split, count >= 0) with split in {DRIVE_SPLITS}, '
                                     f'got {item!r}')
                if item[0] in seen:
                    raise UsageError(f'subset: split {item[0]!r} named twice')
                seen.add(item[0])
        if self.lidar_history < 0:
            raise UsageError(f'lidar_history must be >= 0, got {self.lidar_history}')


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
    """The number that seeds a scene and places it in time: nuScenes scene numbers for the real tracks,
    100000 + the drive number for virtual drives."""
    digits = ''.join(ch for ch in name if ch.isdigit())
    return (100_000 if name.startswith(DRIVE_PREFIX) else 0) + (int(digits) if digits else 0)


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

    def __init__(self, cfg: SynthConfig, source: Path, drives: dict[str, SceneTracks] | None = None):
        self.cfg = cfg
        self.source = source
        self.rig = load_rig(source, cfg.width, cfg.height)
        self.cameras = {ch: CameraModel(ch, self.rig.intrinsic[ch], self.rig.sensor_to_ego[ch], cfg.width,
                                        cfg.height, cfg.render_range) for ch in CAMERAS}
        self.lidar = LidarModel(self.rig.sensor_to_ego[LIDAR])
        self.worlds: dict[str, CityWorld] = {}
        self.tracks = load_scene_tracks(source / 'scenes.json.gz')
        self.tracks.update(drives or {})

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

    def render(self, scene_name: str, k: int, t_key: float, t_next: float | None = None, lidar_only: bool = False):
        """Yield (channel, frame index, time, ego pose, data, labels) for keyframe k of a scene and its sweeps.

        Camera data is uint8 RGB with its ground-class labels (see ``world.GROUND_CLASS_NAMES``); LiDAR data is the
        (N, 5) float32 point array and ``None``. Everything is seeded by (seed, scene, keyframe, frame).
        ``lidar_only`` skips the cameras: the LiDAR frames are the same bytes (they draw from their own seeds and
        read the ground classes, which are worn before any camera-only draw).
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
        key_inv = np.linalg.inv(ego_to_map_2d(key_pose))
        if not lidar_only:
            texture = colour_texture(ground.classes, style, rng)
            cast_shadows(texture, ground, self.boxes(scene, t_key, key_pose), style)
        for ci, ch in enumerate(() if lidar_only else CAMERAS):
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

    def keyframe(self, out: Path, scene_name: str, k: int, t_key: float, t_next: float | None,
                 lidar_only: bool = False) -> list[dict]:
        """Render keyframe k of a scene and its sweeps, write the files; returns the sample_data records.
        ``lidar_only``: only its LiDAR frames, all written as sweeps (the history of a later kept keyframe)."""
        base = scene_base_us(scene_name)
        logfile = f'synth-{scene_name}'
        records = []
        for ch, j, t, pose, data, _ in self.render(scene_name, k, t_key, t_next, lidar_only=lidar_only):
            ts = base + int(round(t * 1e6))
            key = j == 0 and not lidar_only
            folder = 'samples' if key else 'sweeps'
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
            records.append(dict(channel=ch, t=t, timestamp=ts, key=key, filename=rel_path, pose=pose,
                                width=size[0], height=size[1]))
        return records


_WORKER: SceneRenderer | None = None


def _init_worker(cfg: SynthConfig, source: str, drives: dict | None = None) -> None:
    global _WORKER
    cv2.setNumThreads(1)
    _WORKER = SceneRenderer(cfg, Path(source), drives)


def _run_task(args):
    out, scene_name, k, t_key, t_next, lidar_only = args
    return scene_name, k, _WORKER.keyframe(Path(out), scene_name, k, t_key, t_next, lidar_only)


def subset_plan(cfg: SynthConfig, scenes: dict[str, SceneTracks], splits: dict[str, list[str]]
                ) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """With ``cfg.subset``: per drive scene of a subset split, the keyframes to render in full and the earlier ones
    to render for their LiDAR only. The kept ones are those ``dataset.spread(frames, count)`` picks from the split's
    frames in the index's order (scenes sorted by name, keyframes by time), so a run reading ``count`` frames of the
    full dataset reads these. Scenes of other splits (the real tracks) are not in the result: all of them render."""
    from ..dataset import spread
    keep: dict[str, set[int]] = {}
    history: dict[str, set[int]] = {}
    for split, count in cfg.subset:
        frames = [(name, k) for name in sorted(splits.get(split, ()))
                  for k in range(len(keyframe_times(scenes[name], cfg.limit)))]
        keep.update({name: set() for name in splits.get(split, ())})
        for name, k in spread(frames, count):
            keep[name].add(k)
    for name, ks in keep.items():
        earlier = {k - d for k in ks for d in range(1, cfg.lidar_history + 1) if k - d >= 0}
        history[name] = earlier - ks
    return keep, history


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
        rendered = sorted(k for (s, k) in records if s == name)
        # keyframes have their LiDAR keyframe; the others (a subset's LiDAR history) are sweeps of the next keyframe
        keys = [k for k in rendered if any(r['channel'] == LIDAR and r['key'] for r in records[(name, k)])]
        sample_of = {k: min(kk for kk in keys if kk >= k) for k in rendered}
        samples = []
        for k in keys:
            lidar_key = next(r for r in records[(name, k)] if r['channel'] == LIDAR and r['key'])
            samples.append({'token': token('sample', name, k), 'timestamp': lidar_key['timestamp'],
                            'scene_token': token('scene', name)})
        link(samples)
        tables['sample'].extend(samples)
        what = 'a virtual drive on the real map' if name.startswith(DRIVE_PREFIX) else f'the real track of {name}'
        tables['scene'].append({'token': token('scene', name), 'log_token': log_tok, 'nbr_samples': len(samples),
                                'name': name, 'description': f'synthetic rendering of {what}',
                                'first_sample_token': samples[0]['token'], 'last_sample_token': samples[-1]['token']})
        per_channel: dict[str, list[dict]] = {}
        for k in rendered:
            for r in records[(name, k)]:
                sd_tok = token('sample_data', name, r['channel'], r['timestamp'])
                x, y = r['pose'][:2, 3]
                yaw = float(np.arctan2(r['pose'][1, 0], r['pose'][0, 0]))
                tables['ego_pose'].append(pose_row(sd_tok, r['timestamp'], x, y, yaw))
                per_channel.setdefault(r['channel'], []).append({
                    'token': sd_tok, 'sample_token': token('sample', name, sample_of[k]), 'ego_pose_token': sd_tok,
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


def _params(cfg: SynthConfig) -> dict:
    """The parameters that decide the result (not the worker count or the source override)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ('workers', 'source')}


def _save_records(path: Path, recs: list[dict]) -> None:
    rows = [{**r, 'pose': np.asarray(r['pose']).tolist()} for r in recs]
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(rows), encoding='utf-8')
    tmp.replace(path)


def _load_records(path: Path) -> list[dict]:
    return [{**r, 'pose': np.asarray(r['pose'])} for r in json.loads(path.read_text(encoding='utf-8'))]


def generate(out: str | Path, cfg: SynthConfig, progress: bool = True, overwrite: bool = False) -> Path:
    """Write the synthetic dataroot to ``out``: into ``<out>.partial`` first, renamed when complete.

    Resumable: every finished keyframe is recorded in ``<out>.partial/records/``; a run with the same parameters
    that finds an interrupted ``.partial`` folder renders only the keyframes still missing (each keyframe is seeded on
    its own, so the result is the same bytes as an uninterrupted run).
    """
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    source = Path(cfg.source) if cfg.source else bundled_dataroot()
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise OutputExistsError(f'{out} exists and is not empty (use --overwrite to replace it)')
    all_tracks = load_scene_tracks(source / 'scenes.json.gz')
    names = list(cfg.scenes) if cfg.scenes else sorted(all_tracks)
    unknown = [n for n in names if n not in all_tracks]
    if unknown:
        raise UsageError(f'--scenes: unknown scene(s) {unknown}; the tracks file has: {sorted(all_tracks)}')
    scenes = {n: all_tracks[n] for n in names}
    t0 = time.perf_counter()
    plan = None
    if cfg.drives:
        from .drives import plan_drives
        if progress:
            print('mapkd-synth: planning virtual drives over the bundled maps ...', flush=True)
        plan = plan_drives(source, cfg.plan_config())
        scenes.update({d.name: d.scene for d in plan.drives})
    keep: dict[str, set[int]] = {}
    history: dict[str, set[int]] = {}
    if cfg.subset:
        keep, history = subset_plan(cfg, scenes, plan.split_names())
        scenes = {n: s for n, s in scenes.items() if n not in keep or keep[n]}  # drives with no kept keyframe
    tmp = out.with_name(out.name + '.partial')
    params = json.dumps(_params(cfg), sort_keys=True)
    if tmp.exists() and not ((tmp / 'params.json').is_file()
                             and (tmp / 'params.json').read_text(encoding='utf-8') == params):
        shutil.rmtree(tmp)  # left by a run with other parameters
    for folder in ('samples', 'sweeps'):
        for ch in (*CAMERAS, LIDAR):
            (tmp / folder / ch).mkdir(parents=True, exist_ok=True)
    (tmp / 'records').mkdir(exist_ok=True)
    (tmp / 'params.json').write_text(params, encoding='utf-8')
    tasks = []
    for name, scene in scenes.items():
        times = keyframe_times(scene, cfg.limit)
        all_times = keyframe_times(scene, 0)
        for k, t in enumerate(times):
            lidar_only = k in history.get(name, ())
            if name in keep and k not in keep[name] and not lidar_only:
                continue
            t_next = all_times[k + 1] if k + 1 < len(all_times) else None
            tasks.append((str(tmp), name, k, t, t_next, lidar_only))
    records: dict = {}
    todo = []
    for task in tasks:
        rec_path = tmp / 'records' / f'{task[1]}__{task[2]:04d}.json'
        if rec_path.is_file():
            records[(task[1], task[2])] = _load_records(rec_path)
        else:
            todo.append(task)
    if records and progress:
        print(f'mapkd-synth: resuming {tmp}: {len(records)} of {len(tasks)} keyframes already rendered', flush=True)
    drive_tracks = {d.name: d.scene for d in plan.drives} if plan else {}
    workers = cfg.workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(tasks), initial=len(records), desc='mapkd-synth', unit='keyframe', disable=not progress,
               smoothing=0.05)

    def done(name, k, recs):
        _save_records(tmp / 'records' / f'{name}__{k:04d}.json', recs)
        records[(name, k)] = recs
        bar.update()

    if workers <= 1 or len(todo) <= 1:
        _init_worker(cfg, str(source), drive_tracks)
        for task in todo:
            done(*_run_task(task))
    else:
        ctx = mp.get_context('spawn')
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(source), drive_tracks)) as pool:
            for result in pool.imap_unordered(_run_task, todo, chunksize=1):
                done(*result)
    bar.close()
    rig = load_rig(source, cfg.width, cfg.height)
    tables = build_tables(cfg, rig, scenes, records)
    write_tables(tmp, cfg.version, tables, source / 'v1.0-mini')
    (tmp / 'maps' / 'expansion').mkdir(parents=True, exist_ok=True)
    for city in sorted({s.city for s in scenes.values()}):
        shutil.copyfile(source / 'maps' / 'expansion' / f'{city}.json', tmp / 'maps' / 'expansion' / f'{city}.json')
    for row in tables['map']:
        # the devkit insists that the legacy semantic-prior mask named in map.json exists; nothing here reads it
        cv2.imwrite(str(tmp / row['filename']), np.zeros((8, 8), np.uint8))
    shutil.copyfile(source / 'LICENSE', tmp / 'LICENSE')
    if plan is not None:
        from .drives import keyframe_table, write_plan_files
        rows = keyframe_table(plan, source, cfg.limit)
        if cfg.subset:  # the table and the splits list what this dataroot holds
            rows = [r for r in rows if r['scene'] not in keep or r['k'] in keep[r['scene']]]
        write_plan_files(tmp, plan, rows, present=set(scenes))
    (tmp / 'README.md').write_text(_readme(cfg, scenes), encoding='utf-8')
    (tmp / 'synth.json').write_text(json.dumps({'generator_version': GENERATOR_VERSION, **_params(cfg),
                                                'scenes': names}, indent=1, sort_keys=True), encoding='utf-8')
    shutil.rmtree(tmp / 'records')
    (tmp / 'params.json').unlink()
    for folder in ('samples', 'sweeps'):  # drop empty sensor folders (no sweeps asked for)
        for ch_dir in (tmp / folder).iterdir():
            if not any(ch_dir.iterdir()):
                ch_dir.rmdir()
        if not any((tmp / folder).iterdir()):
            (tmp / folder).rmdir()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    n = len(todo)
    dt = time.perf_counter() - t0
    if progress:
        print(f'mapkd-synth: {len(tasks)} keyframes of {len(scenes)} scene(s) ({n} rendered now) in {dt:.1f} s '
              f'({n / max(dt, 1e-9):.2f} keyframes/s) -> {out}')
    return out


def _readme(cfg: SynthConfig, scenes: dict[str, SceneTracks]) -> str:
    lines = ['# Synthetic nuScenes-format dataroot (generated by mapkd-synth)', '',
             'Rendered from the real nuScenes map expansion and the real ego and agent tracks of '
             'the v1.0-mini scenes. Not real sensor data. Derived from nuScenes: CC BY-NC-SA 4.0 and the nuScenes '
             'terms of use (see LICENSE).', '',
             f'Parameters: seed {cfg.seed}, {cfg.width}x{cfg.height} JPEG (quality {cfg.jpeg_quality}), '
             f'keyframes per scene {cfg.limit or "all"}, camera sweeps {cfg.camera_sweeps}, LiDAR sweeps '
             f'{cfg.lidar_sweeps}.', '', '| scene | city |', '| --- | --- |']
    if cfg.drives:
        lines[-3:-3] = ['Virtual drives (`drive-NNNNN`) follow the lane graph of the whole bundled maps; `splits.yaml` '
                        'holds the geographically held-out splits geo_train / geo_val and `drives.json.gz` one row '
                        'per drive keyframe (pose, split, what its patch holds) with a summary.', '']
    if cfg.subset:
        lines[-3:-3] = ['A subset: of the drive splits only ' + ', '.join(
            f'{count or "all"} keyframes of {split}' for split, count in cfg.subset) + ' (spread over the split as '
            f'`dataset.spread` picks them), each with the LiDAR of its {cfg.lidar_history} previous keyframes as '
            'sweeps; the same bytes as those frames of the full dataset.', '']
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
    p.add_argument('--drives', action='store_true',
                   help='add virtual drives over the whole maps with the geo_train / geo_val splits')
    p.add_argument('--train-keyframes', type=int, default=6000, help='with --drives: geo_train keyframes (at least)')
    p.add_argument('--val-keyframes', type=int, default=1000, help='with --drives: geo_val keyframes (at least)')
    p.add_argument('--subset', default='',
                   help='with --drives: only these frames of the drive splits, e.g. geo_train=1200,geo_val=300 (the '
                        'frames a train_limit / limit of the full dataset reads, the same bytes; 0 = the whole split)')
    p.add_argument('--workers', type=int, default=0, help='processes (default: up to 2)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args(argv)
    try:
        from ..dataroot import parse_subset
        subset = parse_subset(f'synthetic_drives[{args.subset}]') if args.subset else ()
    except UsageError as exc:
        print(f'mapkd-synth: error: --subset: {exc}', file=sys.stderr)
        return 2
    cfg = SynthConfig(scenes=tuple(s for s in args.scenes.split(',') if s), seed=args.seed, limit=args.limit,
                      width=args.width, camera_sweeps=args.camera_sweeps, lidar_sweeps=args.lidar_sweeps,
                      workers=args.workers, drives=args.drives, train_keyframes=args.train_keyframes,
                      val_keyframes=args.val_keyframes, subset=subset)
    try:
        generate(args.out, cfg, progress=not args.quiet, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f'mapkd-synth: error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
