"""``mapkd-bag-convert``: a nuScenes dataroot (real or synthetic) to a ROS 2 bag (rosbag2, MCAP or sqlite3).

Written with the pure-Python ``rosbags`` library, so it needs no ROS install. Topic names follow Foxglove's nuScenes
converters (``nuscenes2mcap`` / ``nuscenes2bag``), see :mod:`mapkd_ros.bag.topics` and ``config/bag_topics.yaml``:

==================================  ==================================  ==============================================
topic                               type                                content
==================================  ==================================  ==============================================
``/<CAM>/image_rect_compressed``    sensor_msgs/msg/CompressedImage     the dataset's JPEG bytes, unchanged
``/<CAM>/camera_info``              sensor_msgs/msg/CameraInfo          K, identity R, P = [K | 0], no distortion
``/LIDAR_TOP``                      sensor_msgs/msg/PointCloud2         x, y, z, intensity, ring (float32, as stored)
``/tf``                             tf2_msgs/msg/TFMessage              map -> base_link, one per ego pose
``/tf_static``                      tf2_msgs/msg/TFMessage              base_link -> every sensor, once per scene
``/map_gt/markers``                 visualization_msgs/msg/MarkerArray  ground-truth map per keyframe (base_link)
==================================  ==================================  ==============================================

Where we differ from nuscenes2mcap: sensor mounts go on ``/tf_static`` (recorded with transient-local QoS, like
tf2's static broadcaster) rather than being repeated on ``/tf``; no radar, annotations, CAN bus or map images; and
the ground-truth map topic is ours. The bag is rosbag2 format version 8, which Humble, Jazzy and Kilted read.

Stamps: every header stamp and every bag (log) time is the nuScenes timestamp of that record (microseconds -> ns),
so the bag keeps the dataset's timing. Each sensor message is stamped with its own sample's time and its frame is
the channel name; each such sample has its own ego pose, written on ``/tf`` at the same stamp, so a tf lookup of
``base_link`` at an image stamp gives the ego pose of that image. Scenes are written in time order.

Frames: ``map`` is the nuScenes global frame, ``base_link`` the nuScenes ego frame (REP-103: x forward, y left,
z up), sensor frames are named after their channel. A nuScenes camera frame (x right, y down, z forward) is the ROS
optical-frame convention, so ``CAM_FRONT`` is an optical frame.

Ground truth: per keyframe, at the keyframe's LiDAR stamp, a MarkerArray in ``base_link`` (the LIDAR_TOP keyframe's
ego pose, the ego frame of the training samples): one DELETEALL marker, then one LINE_STRIP per ground-truth polyline
(:class:`mapkd_core.data.map_gt.MapGroundTruth` on the configured BEV grid), ``ns`` = the class name (divider,
ped_crossing, boundary), z = 0. The bag's ``custom_data`` records the grid (``mapkd.grid``) and the source.

The bag is written into a temporary folder beside the output and renamed when complete, so a failed or interrupted
conversion leaves nothing at the output path. Every sensor file is checked before writing starts.

Usage::

    mapkd-bag-convert --dataroot synthetic --out bags/synth --split mini_val
    mapkd-bag-convert --dataroot data/nuscenes --version v1.0-mini --out bags/s0103 --scenes scene-0103 \\
        --start 0 --end 10 --all-sweeps --storage sqlite3 --topics my_topics.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mapkd_core.cli import add_debug_flag, command
from mapkd_core.config import DataConfig, GridConfig, MapGtConfig
from mapkd_core.constants import CAMERAS, GT_ALPHA
from mapkd_core.errors import (CorruptSensorFileError, DatasetNotFoundError, MissingSensorFileError, OutputExistsError,
                               SplitError, UnknownMapError)
from mapkd_core.geometry import make_transform, matrix_to_quaternion

from ..markers import polyline_markers
from . import BagError
from .topics import TopicMap, load_topic_map

LIDAR = 'LIDAR_TOP'
#: channels written by default: the six cameras in the fixed order, then the top LiDAR
CHANNELS = CAMERAS + (LIDAR,)
STORAGES = ('mcap', 'sqlite3')
#: rosbag2 metadata version: 8 is read by Humble, Jazzy and Kilted (9 stores QoS in a form Humble cannot parse)
BAG_VERSION = 8
#: the tables nuscenes-devkit loads (it fails on any missing one)
TABLES = ('category', 'attribute', 'visibility', 'instance', 'sensor', 'calibrated_sensor', 'ego_pose', 'log',
          'scene', 'sample', 'sample_data', 'sample_annotation', 'map')
#: line width of the ground-truth markers, metres
MARKER_WIDTH = 0.2

_TYPES = {
    'image': 'sensor_msgs/msg/CompressedImage',
    'info': 'sensor_msgs/msg/CameraInfo',
    'lidar': 'sensor_msgs/msg/PointCloud2',
    'tf': 'tf2_msgs/msg/TFMessage',
    'tf_static': 'tf2_msgs/msg/TFMessage',
    'map_gt': 'visualization_msgs/msg/MarkerArray',
}


class BagExistsError(BagError, OutputExistsError):
    """The output bag exists and ``overwrite`` was not given."""


# ----------------------------------------------------------------------------------------------------------------
# message building (rosbags types; no rclpy)


def typestore():
    """The rosbags type store we serialise with (Humble definitions; identical hashes on Jazzy and Kilted for every
    type written here)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


class _Msgs:
    """Builds and serialises the messages of a bag."""

    def __init__(self, topics: TopicMap):
        self.ts = typestore()
        self.t = self.ts.types
        self.topics = topics

    def ser(self, msg, kind: str) -> bytes:
        return bytes(self.ts.serialize_cdr(msg, _TYPES[kind]))

    def header(self, stamp_ns: int, frame: str):
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return self.t['std_msgs/msg/Header'](stamp=self.t['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec),
                                             frame_id=frame)

    def image(self, stamp_ns: int, channel: str, jpeg: bytes) -> bytes:
        msg = self.t['sensor_msgs/msg/CompressedImage'](header=self.header(stamp_ns, channel), format='jpeg',
                                                        data=np.frombuffer(jpeg, dtype=np.uint8))
        return self.ser(msg, 'image')

    def camera_info(self, stamp_ns: int, channel: str, k: np.ndarray, width: int, height: int) -> bytes:
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        p = np.zeros((3, 4))
        p[:, :3] = k
        roi = self.t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = self.t['sensor_msgs/msg/CameraInfo'](
            header=self.header(stamp_ns, channel), height=int(height), width=int(width),
            distortion_model='plumb_bob', d=np.zeros(5), k=k.reshape(9).copy(), r=np.eye(3).reshape(9),
            p=p.reshape(12), binning_x=0, binning_y=0, roi=roi)
        return self.ser(msg, 'info')

    def pointcloud(self, stamp_ns: int, channel: str, raw: bytes) -> bytes:
        pf = self.t['sensor_msgs/msg/PointField']
        fields = [pf(name=n, offset=4 * i, datatype=pf.FLOAT32, count=1)
                  for i, n in enumerate(('x', 'y', 'z', 'intensity', 'ring'))]
        n = len(raw) // 20
        msg = self.t['sensor_msgs/msg/PointCloud2'](
            header=self.header(stamp_ns, channel), height=1, width=n, fields=fields, is_bigendian=False,
            point_step=20, row_step=20 * n, data=np.frombuffer(raw, dtype=np.uint8), is_dense=True)
        return self.ser(msg, 'lidar')

    def transform(self, stamp_ns: int, parent: str, child: str, t: np.ndarray):
        w, x, y, z = matrix_to_quaternion(t[:3, :3])
        tr = self.t['geometry_msgs/msg/Transform'](
            translation=self.t['geometry_msgs/msg/Vector3'](x=float(t[0, 3]), y=float(t[1, 3]), z=float(t[2, 3])),
            rotation=self.t['geometry_msgs/msg/Quaternion'](x=float(x), y=float(y), z=float(z), w=float(w)))
        return self.t['geometry_msgs/msg/TransformStamped'](header=self.header(stamp_ns, parent),
                                                            child_frame_id=child, transform=tr)

    def tf(self, transforms: list, kind: str = 'tf') -> bytes:
        return self.ser(self.t['tf2_msgs/msg/TFMessage'](transforms=transforms), kind)

    def markers(self, stamp_ns: int, vectors) -> bytes:
        """The ground-truth MarkerArray: the node's marker description (``mapkd_ros.markers.polyline_markers``,
        the same class colours) at ``GT_ALPHA``, in rosbags message types."""
        t = self.t
        header = self.header(stamp_ns, self.topics.ego_frame)
        pose = t['geometry_msgs/msg/Pose'](position=t['geometry_msgs/msg/Point'](x=0.0, y=0.0, z=0.0),
                                           orientation=t['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0))
        empty_image = t['sensor_msgs/msg/CompressedImage'](header=self.header(0, ''), format='',
                                                           data=np.zeros(0, dtype=np.uint8))
        out = [t['visualization_msgs/msg/Marker'](
            header=header, ns=spec.ns, id=spec.id, type=spec.type, action=spec.action, pose=pose,
            scale=t['geometry_msgs/msg/Vector3'](x=spec.width, y=0.0, z=0.0),
            color=t['std_msgs/msg/ColorRGBA'](r=spec.rgba[0], g=spec.rgba[1], b=spec.rgba[2], a=spec.rgba[3]),
            lifetime=t['builtin_interfaces/msg/Duration'](sec=0, nanosec=0), frame_locked=False,
            points=[t['geometry_msgs/msg/Point'](x=x, y=y, z=0.0) for x, y in spec.points],
            colors=[], texture_resource='', texture=empty_image, uv_coordinates=[], text=spec.text, mesh_resource='',
            mesh_file=t['visualization_msgs/msg/MeshFile'](filename='', data=np.zeros(0, dtype=np.uint8)),
            mesh_use_embedded_materials=False)
            for spec in polyline_markers(vectors, MARKER_WIDTH, alpha=GT_ALPHA, scores=False)]
        return self.ser(t['visualization_msgs/msg/MarkerArray'](markers=out), 'map_gt')


def _qos_latched():
    """The offered QoS recorded for /tf_static (reliable, transient local, depth 1), as tf2's static broadcaster."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    zero = QosTime(sec=0, nsec=0)
    return [Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                durability=QosDurability.TRANSIENT_LOCAL, deadline=zero, lifespan=zero,
                liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                avoid_ros_namespace_conventions=False)]


# ----------------------------------------------------------------------------------------------------------------
# selection


@dataclass
class _Record:
    """One sensor sample to write."""

    channel: str
    stamp_ns: int
    path: Path
    token: str
    width: int
    height: int
    intrinsic: Optional[np.ndarray]
    ego_pose_token: str
    is_key_frame: bool


def _check_tables(root: Path, version: str) -> None:
    missing = [root / version / f'{t}.json' for t in TABLES if not (root / version / f'{t}.json').is_file()]
    if missing:
        raise DatasetNotFoundError(f'nuScenes table file(s) missing: {", ".join(str(p) for p in missing)}')


def _select_scenes(nusc, scenes: Optional[Sequence[str]], split: Optional[str]) -> list[dict]:
    by_name = {s['name']: s for s in nusc.scene}
    if scenes and split:
        raise SplitError('give either scenes or a split, not both')
    if scenes:
        unknown = [s for s in scenes if s not in by_name]
        if unknown:
            raise SplitError(f'scene(s) {unknown} not in the dataroot; it has: {sorted(by_name)}')
        names = list(dict.fromkeys(scenes))
    elif split:
        from mapkd_core.data.index import resolve_split
        names = [n for n in resolve_split(split, None, by_name) if n in by_name]
        if not names:
            raise SplitError(f'split {split!r} selects no scene of the dataroot (it has: {sorted(by_name)})')
    else:
        names = sorted(by_name)
    chosen = [by_name[n] for n in names]
    # scenes in time order so that the bag's times never go back
    chosen.sort(key=lambda s: nusc.get('sample', s['first_sample_token'])['timestamp'])
    return chosen


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, token = [], scene['first_sample_token']
    while token:
        s = nusc.get('sample', token)
        out.append(s)
        token = s['next']
    return sorted(out, key=lambda s: s['timestamp'])


def _in_range(t_us: int, t0_us: int, start: Optional[float], end: Optional[float]) -> bool:
    rel = (t_us - t0_us) * 1e-6
    return (start is None or rel >= start - 1e-9) and (end is None or rel <= end + 1e-9)


# ----------------------------------------------------------------------------------------------------------------
# the conversion


def convert(dataroot, out, version: str = 'v1.0-mini', scenes: Optional[Sequence[str]] = None,
            split: Optional[str] = None, start: Optional[float] = None, end: Optional[float] = None,
            keyframes_only: bool = True, storage: str = 'mcap', topics=None, overwrite: bool = False,
            channels: Sequence[str] = CHANNELS, map_gt: bool = True, grid: Optional[GridConfig] = None,
            map_gt_cfg: Optional[MapGtConfig] = None, progress: bool = False) -> dict:
    """Convert scenes of a nuScenes dataroot to a rosbag2 bag at ``out`` (a folder); return a summary dict.

    ``dataroot`` may be ``synthetic`` (the cached synthetic dataset) or ``bundled`` (the real keyframe shipped with
    the package). ``scenes`` (names) or ``split`` (an official split or ``all``) select scenes (default: all);
    ``start`` / ``end`` are seconds from each scene's first keyframe. ``keyframes_only=False`` also writes every
    camera and LiDAR sweep the dataroot has. ``topics`` is a :class:`TopicMap`, a YAML path or ``None`` (defaults).
    ``grid`` / ``map_gt_cfg`` set the ground-truth map patch (default: the paper grid, 60 m x 30 m).

    The summary has ``bag``, ``storage``, ``scenes``, ``counts`` and ``types`` (per topic), ``messages``,
    ``start_ns``, ``end_ns``, ``bytes`` and ``seconds``.
    """
    t_begin = time.perf_counter()
    from mapkd_core.data.index import check_dataroot
    if storage not in STORAGES:
        raise BagError(f'storage must be one of {list(STORAGES)}, got {storage!r}')
    if start is not None and end is not None and end < start:
        raise BagError(f'end ({end} s) is before start ({start} s)')
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise BagError(f'unknown channel(s) {unknown or "(none given)"}; known: {list(CHANNELS)}')
    if isinstance(topics, TopicMap):
        tm = topics
        tm.validate('topics: ', tuple(channels))
    else:
        tm = load_topic_map(topics, channels=tuple(channels))
    out = Path(out)
    _check_output(out, overwrite)

    from mapkd_core.data.dataroot import resolve_data_path
    if not resolve_data_path(dataroot).is_dir():
        raise DatasetNotFoundError(f'nuScenes dataroot not found: {resolve_data_path(dataroot)} (--dataroot)')
    root = check_dataroot(dataroot, version)
    _check_tables(root, version)
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    chosen = _select_scenes(nusc, scenes, split)
    grid = grid or GridConfig()
    map_gt_cfg = map_gt_cfg or MapGtConfig()

    # which sample_data to write, per scene
    by_sample: dict[str, list[dict]] = {}
    for sd in nusc.sample_data:
        by_sample.setdefault(sd['sample_token'], []).append(sd)
    channel_of_cs = {}
    for cs in nusc.calibrated_sensor:
        channel_of_cs[cs['token']] = nusc.get('sensor', cs['sensor_token'])['channel']

    msgs = _Msgs(tm)
    plan: list[tuple[int, int, str, str, Callable[[], bytes]]] = []  # (stamp, seq, topic, kind, make)
    scene_names, has_sweeps = [], False
    poses_written: dict[int, str] = {}  # stamp_ns -> ego pose token
    gt_jobs = []
    gt_holder: dict = {}  # the MapGroundTruth, built below once the plan is known to need it

    def add(stamp_ns, topic, kind, make):
        if topic:
            plan.append((int(stamp_ns), len(plan), topic, kind, make))

    for scene in chosen:
        samples = _scene_samples(nusc, scene)
        t0 = samples[0]['timestamp']
        tokens = {s['token'] for s in samples}
        city = nusc.get('log', scene['log_token'])['location']
        records: list[_Record] = []
        static: dict[str, np.ndarray] = {}
        for tok in tokens:
            for sd in by_sample.get(tok, ()):
                ch = channel_of_cs.get(sd['calibrated_sensor_token'])
                if ch not in channels:
                    continue
                has_sweeps = has_sweeps or not sd['is_key_frame']
                if keyframes_only and not sd['is_key_frame']:
                    continue
                if not _in_range(sd['timestamp'], t0, start, end):
                    continue
                cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
                static.setdefault(ch, make_transform(cs['rotation'], cs['translation']))
                k = np.asarray(cs['camera_intrinsic'], dtype=np.float64) if cs.get('camera_intrinsic') else None
                records.append(_Record(ch, int(sd['timestamp']) * 1000, root / sd['filename'], sd['token'],
                                       int(sd.get('width') or 0), int(sd.get('height') or 0), k,
                                       sd['ego_pose_token'], bool(sd['is_key_frame'])))
        keyframes = [s for s in samples if _in_range(s['timestamp'], t0, start, end)]
        if not records and not keyframes:
            continue
        scene_names.append(scene['name'])
        _check_files(records)
        records.sort(key=lambda r: (r.stamp_ns, CHANNELS.index(r.channel)))
        scene_start = min([r.stamp_ns for r in records] + [s['timestamp'] * 1000 for s in keyframes])
        if static:
            transforms = [msgs.transform(scene_start, tm.ego_frame, ch, static[ch])
                          for ch in CHANNELS if ch in static]
            add(scene_start, tm.tf_static, 'tf_static', lambda tr=transforms: msgs.tf(tr, 'tf_static'))
        for r in records:
            if r.channel == LIDAR:
                add(r.stamp_ns, tm.lidar_topic(r.channel), 'lidar',
                    lambda r=r: msgs.pointcloud(r.stamp_ns, r.channel, _read_lidar(r.path)))
            else:
                # CameraInfo first: a player sends it before the image of the same stamp, so a node that needs the
                # calibration before it fuses a set has it when the set completes
                add(r.stamp_ns, tm.info_topic(r.channel), 'info',
                    lambda r=r: msgs.camera_info(r.stamp_ns, r.channel, r.intrinsic, *_image_size(r)))
                add(r.stamp_ns, tm.image_topic(r.channel), 'image',
                    lambda r=r: msgs.image(r.stamp_ns, r.channel, _read_jpeg(r.path)))
            if r.stamp_ns not in poses_written:
                poses_written[r.stamp_ns] = r.ego_pose_token
                add(r.stamp_ns, tm.tf, 'tf', lambda r=r: msgs.tf([msgs.transform(
                    r.stamp_ns, tm.global_frame, tm.ego_frame, _pose(nusc, r.ego_pose_token))]))
        if map_gt and tm.map_gt and keyframes:
            gt_jobs.append(city)
            for s in keyframes:
                lidar_sd = nusc.get('sample_data', s['data'][LIDAR]) if LIDAR in s['data'] else None
                if lidar_sd is None:
                    raise MissingSensorFileError(f'sample {s["token"]} (scene {scene["name"]}) has no {LIDAR}: '
                                                 'the ground-truth map is built at its ego pose (use map_gt=False)')
                stamp = int(lidar_sd['timestamp']) * 1000
                add(stamp, tm.map_gt, 'map_gt',
                    lambda stamp=stamp, city=city, tok=lidar_sd['ego_pose_token']: msgs.markers(
                        stamp, gt_holder['gt'].vectors(city, _pose(nusc, tok))))
    if not plan:
        raise BagError(f'nothing to write: the selection (scenes {[s["name"] for s in chosen]}, start {start}, '
                       f'end {end}, channels {list(channels)}) holds no message')
    if gt_jobs:
        from mapkd_core.data.map_gt import MapGroundTruth, available_maps
        for city in sorted(set(gt_jobs)):
            if not (root / 'maps' / 'expansion' / f'{city}.json').is_file():
                raise UnknownMapError(f'no map expansion for city {city!r}: '
                                      f'{root / "maps" / "expansion" / (city + ".json")} is missing (maps present: '
                                      f'{available_maps(root) or "none"}); convert without the ground-truth map '
                                      '(--no-map-gt) or add the map expansion')
        gt_holder['gt'] = MapGroundTruth(root, grid, map_gt_cfg)

    plan.sort(key=lambda p: (p[0], p[1]))
    custom = {
        'mapkd.source': json.dumps({'dataroot': str(root), 'version': version, 'scenes': scene_names,
                                    'keyframes_only': bool(keyframes_only), 'start': start, 'end': end}),
        'mapkd.grid': json.dumps(asdict(grid)),
        'mapkd.topics': json.dumps(asdict(tm)),
    }
    counts, types = _write(out, plan, storage, custom, overwrite, progress, msgs)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    summary = {
        'bag': str(out), 'storage': storage, 'scenes': scene_names, 'counts': counts, 'types': types,
        'messages': sum(counts.values()), 'start_ns': plan[0][0], 'end_ns': plan[-1][0], 'bytes': size,
        'seconds': time.perf_counter() - t_begin, 'keyframes_only': bool(keyframes_only),
        'dataroot_has_sweeps': has_sweeps,
    }
    return summary


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise BagExistsError(f'output {out} exists already; pass --overwrite (overwrite=True) to replace it')
    if not out.is_dir() or (any(out.iterdir()) and not (out / 'metadata.yaml').is_file()):
        raise BagExistsError(f'output {out} exists and is not a rosbag2 folder (no metadata.yaml): not replacing it')


def _check_files(records: list[_Record]) -> None:
    missing = [r for r in records if not r.path.is_file()]
    if missing:
        listed = ', '.join(f'{r.path} ({r.channel}, sample_data {r.token})' for r in missing[:5])
        more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise MissingSensorFileError(f'{len(missing)} sensor file(s) listed in the tables are missing: {listed}{more}')


def _read_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] != b'\xff\xd8':
        raise CorruptSensorFileError(f'not a JPEG file (no SOI marker): {path}')
    return data


def _read_lidar(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) % 20:
        raise CorruptSensorFileError(f'LiDAR file {path} has {len(data)} bytes, not a whole number of 5 x float32 '
                                     'points (x, y, z, intensity, ring)')
    return data


def _image_size(r: _Record) -> tuple[int, int]:
    if r.width and r.height:
        return r.width, r.height
    import cv2
    img = cv2.imdecode(np.frombuffer(_read_jpeg(r.path), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorruptSensorFileError(f'cannot decode JPEG {r.path}')
    return img.shape[1], img.shape[0]


def _pose(nusc, token: str) -> np.ndarray:
    ep = nusc.get('ego_pose', token)
    return make_transform(ep['rotation'], ep['translation'])


def _write(out: Path, plan, storage: str, custom: dict, overwrite: bool, progress: bool, msgs: _Msgs):
    """Write the plan into a temporary folder beside ``out``, then move it into place."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f'.{out.name}.partial-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    counts: dict[str, int] = {}
    types: dict[str, str] = {}
    try:
        writer = Writer(tmp / out.name, version=BAG_VERSION,
                        storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
        for key, value in custom.items():
            writer.set_custom_data(key, value)
        conns = {}
        with writer:
            from tqdm import tqdm
            bar = tqdm(total=len(plan), unit='msg', desc='mapkd-bag-convert', disable=not progress,
                       dynamic_ncols=True)
            for stamp, _, topic, kind, make in plan:
                if topic not in conns:
                    qos = _qos_latched() if kind == 'tf_static' else ()
                    conns[topic] = writer.add_connection(topic, _TYPES[kind], typestore=msgs.ts,
                                                         offered_qos_profiles=qos)
                    types[topic] = _TYPES[kind]
                    counts[topic] = 0
                writer.write(conns[topic], stamp, make())
                counts[topic] += 1
                bar.update(1)
            bar.close()
        if out.exists():
            shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
        (tmp / out.name).rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts, types


# ----------------------------------------------------------------------------------------------------------------
# command line


def _csv(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(',') if t.strip()]
    return items or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='mapkd-bag-convert',
        description='Convert a nuScenes dataroot (real or synthetic) to a ROS 2 bag (rosbag2, MCAP or sqlite3): '
                    'CompressedImage + CameraInfo per camera, LIDAR_TOP PointCloud2, /tf and /tf_static, and the '
                    'ground-truth map as a MarkerArray. Topic names follow Foxglove nuscenes2mcap.')
    p.add_argument('--dataroot', required=True,
                   help='nuScenes dataroot; "synthetic" = the cached synthetic dataset, "bundled" = the real keyframe')
    p.add_argument('--version', default='v1.0-mini', help='table version folder (default: v1.0-mini)')
    p.add_argument('--out', required=True, help='output bag folder (must not exist unless --overwrite)')
    sel = p.add_mutually_exclusive_group()
    sel.add_argument('--scenes', help='comma-separated scene names (default: every scene of the dataroot)')
    sel.add_argument('--split', help='an official split (mini_train, mini_val, train, val, ...) or "all"')
    p.add_argument('--start', type=float, default=None, help='seconds from each scene start to begin at')
    p.add_argument('--end', type=float, default=None, help='seconds from each scene start to stop at')
    kf = p.add_mutually_exclusive_group()
    kf.add_argument('--keyframes-only', dest='keyframes_only', action='store_true', default=True,
                    help='write only keyframe (2 Hz) samples (the default)')
    kf.add_argument('--all-sweeps', dest='keyframes_only', action='store_false',
                    help='also write every camera (12 Hz) and LiDAR (20 Hz) sweep in the dataroot')
    p.add_argument('--storage', choices=STORAGES, default='mcap', help='rosbag2 storage plugin (default: mcap)')
    p.add_argument('--topics', help='YAML file overriding topic names / frames (see config/bag_topics.yaml)')
    p.add_argument('--channels', help=f'comma-separated channels to write (default: {",".join(CHANNELS)})')
    p.add_argument('--no-map-gt', dest='map_gt', action='store_false', help='do not write the ground-truth map')
    p.add_argument('--data-config', help='data config YAML whose grid / map_gt settings shape the ground-truth map '
                                         '(default: the paper grid, 60 m x 30 m at 0.15 m)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output bag')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    add_debug_flag(p)
    return p


@command('mapkd-bag-convert')
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    grid = map_gt_cfg = None
    if args.data_config:
        from mapkd_core.config import load_config
        cfg = load_config(args.data_config, DataConfig)
        grid, map_gt_cfg = cfg.grid, cfg.map_gt
    summary = convert(args.dataroot, args.out, version=args.version, scenes=_csv(args.scenes),
                      split=args.split, start=args.start, end=args.end, keyframes_only=args.keyframes_only,
                      storage=args.storage, topics=args.topics, overwrite=args.overwrite,
                      channels=tuple(_csv(args.channels) or CHANNELS), map_gt=args.map_gt, grid=grid,
                      map_gt_cfg=map_gt_cfg, progress=args.progress and sys.stderr.isatty())
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    dur = (summary['end_ns'] - summary['start_ns']) * 1e-9
    lines = [f'wrote {summary["bag"]} ({summary["storage"]}, {summary["bytes"] / 1e6:.1f} MB, '
             f'{summary["messages"]} messages, {dur:.1f} s of data, scenes: {", ".join(summary["scenes"])}) '
             f'in {summary["seconds"]:.1f} s']
    if not summary['keyframes_only'] and not summary['dataroot_has_sweeps']:
        lines.append('note: --all-sweeps was asked but the dataroot has keyframes only')
    width = max(len(t) for t in summary['counts'])
    for topic in sorted(summary['counts']):
        lines.append(f'  {topic:<{width}}  {summary["types"][topic]:<36} {summary["counts"][topic]:>6}')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
