"""Bag tools: nuScenes -> rosbag2 conversion read back (counts, types, stamps, pixels, calibration, tf, ground
truth), the topic mapping, bad inputs, and the rclpy player delivering every message."""
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest

from mapkd_core.config import GridConfig
from mapkd_core.constants import CAMERAS, CLASS_INDEX, CLASS_NAMES
from mapkd_core.data.index import NuScenesIndex
from mapkd_core.data.map_gt import MapGroundTruth
from mapkd_core.data.synth import SynthConfig
from mapkd_core.data.synth.cache import synthetic_dataroot
from mapkd_core.errors import (ConfigError, CorruptSensorFileError, DatasetNotFoundError, MissingSensorFileError,
                               SplitError, UnknownMapError)
from mapkd_core.geometry import make_transform
from mapkd_core.paths import config_path
from mapkd_ros.bag import BagError
from mapkd_ros.bag import convert as bag_convert
from mapkd_ros.bag.convert import CHANNELS, BagExistsError, convert, typestore
from mapkd_ros.bag.topics import DEFAULT_TOPICS, load_topic_map

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:lark.*')

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
#: namespace of the topics the player tests publish, unique to this test process
NS = f'/bag_test_{os.getpid()}'

SCENES = ('scene-0061', 'scene-0103', 'scene-0916')
IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
EXPECTED_TYPES = {
    **{f'/{c}/image_rect_compressed': IMAGE_TYPE for c in CAMERAS},
    **{f'/{c}/camera_info': 'sensor_msgs/msg/CameraInfo' for c in CAMERAS},
    '/LIDAR_TOP': 'sensor_msgs/msg/PointCloud2',
    '/tf': 'tf2_msgs/msg/TFMessage',
    '/tf_static': 'tf2_msgs/msg/TFMessage',
    '/map_gt/markers': 'visualization_msgs/msg/MarkerArray',
}


def read_bag(path, order=None):
    """{topic: [(log time ns, deserialised message, raw bytes)]} and {topic: type} of a bag, in file order
    (``order``, a list, receives every log time in reading order)."""
    from rosbags.rosbag2 import Reader
    ts = typestore()
    out, types = defaultdict(list), {}
    with Reader(path) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, stamp, raw in reader.messages():
            out[conn.topic].append((stamp, ts.deserialize_cdr(raw, conn.msgtype), bytes(raw)))
            if order is not None:
                order.append(stamp)
    return dict(out), types


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def matrix_of(transform) -> np.ndarray:
    q, t = transform.rotation, transform.translation
    return make_transform([q.w, q.x, q.y, q.z], [t.x, t.y, t.z])


@pytest.fixture(scope='module')
def synth_root():
    # the same cached dataroot as test_runtime: three scenes in three cities, three keyframes each
    return synthetic_dataroot(SynthConfig(scenes=SCENES, limit=3), progress=False)


@pytest.fixture(scope='module')
def synth_index(synth_root):
    return NuScenesIndex(synth_root, 'v1.0-mini', 'all', lidar_sweeps=1)


@pytest.fixture(scope='module')
def synth_bag(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('bags') / 'synth'
    summary = convert(synth_root, out, version='v1.0-mini')
    order = []
    msgs, types = read_bag(out, order)
    summary['order'] = order
    return summary, msgs, types


# ----------------------------------------------------------------------------------------------------------------
# topic mapping


def test_shipped_topic_file_is_the_default_and_follows_the_foxglove_convention():
    assert load_topic_map(config_path('bag_topics.yaml')) == DEFAULT_TOPICS
    assert DEFAULT_TOPICS.image_topic('CAM_FRONT') == '/CAM_FRONT/image_rect_compressed'
    assert DEFAULT_TOPICS.info_topic('CAM_BACK_LEFT') == '/CAM_BACK_LEFT/camera_info'
    assert DEFAULT_TOPICS.lidar_topic('LIDAR_TOP') == '/LIDAR_TOP'
    assert (DEFAULT_TOPICS.tf, DEFAULT_TOPICS.tf_static, DEFAULT_TOPICS.map_gt) == ('/tf', '/tf_static',
                                                                                    '/map_gt/markers')
    assert (DEFAULT_TOPICS.global_frame, DEFAULT_TOPICS.ego_frame) == ('map', 'base_link')


@pytest.mark.parametrize('text, words', [
    ('camera_imgae: /x/{channel}\n', ['unknown key', 'camera_imgae']),
    ('camera_image: cam/{channel}\n', ['camera_image', 'not a valid']),
    ('camera_image: /cam\n', ['camera_image', '{channel}']),
    ('tf: /{channel}/tf\n', ['tf:', '{channel}']),
    ('lidar: /tf\n', ['lidar', "'/tf'", 'also used']),
    ('camera_info: /{chanel}/info\n', ['camera_info', 'must contain']),
    ('lidar: /{chanel}\n', ['lidar', 'bad template']),
    ('ego_frame: map\n', ['must differ']),
    ('ego_frame: null\n', ['ego_frame', 'required']),
    ('map_gt: 3\n', ['map_gt', 'string']),
    ('- /a\n- /b\n', ['expected a mapping']),
    ('camera_image: [unclosed\n', ['not valid YAML']),
])
def test_bad_topics_yaml_is_named(tmp_path, text, words):
    path = tmp_path / 'topics.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_topic_map(path)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg
    with pytest.raises(ConfigError, match='not found'):
        load_topic_map(tmp_path / 'missing.yaml')


def test_bad_topics_yaml_fails_the_cli_before_writing(tmp_path, capsys):
    path = tmp_path / 'topics.yaml'
    path.write_text('camera_image: nope\n')
    out = tmp_path / 'bag'
    assert bag_convert.main(['--dataroot', 'bundled', '--out', str(out), '--topics', str(path)]) == 2
    err = capsys.readouterr().err
    assert 'mapkd-bag-convert: error:' in err and str(path) in err and 'camera_image' in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# convert, then read back


def test_counts_and_types_per_topic(synth_bag, synth_index, synth_root):
    summary, msgs, types = synth_bag
    n = len(synth_index)
    assert n == 9 and summary['scenes'] == sorted(SCENES, key=lambda s: int(s[-4:]))
    assert types == EXPECTED_TYPES
    assert summary['types'] == EXPECTED_TYPES
    for ch in CAMERAS:
        assert len(msgs[f'/{ch}/image_rect_compressed']) == n
        assert len(msgs[f'/{ch}/camera_info']) == n
    assert len(msgs['/LIDAR_TOP']) == n
    assert len(msgs['/map_gt/markers']) == n
    assert len(msgs['/tf_static']) == len(SCENES)  # once per scene
    # one map -> base_link per ego pose of a written sample: 6 cameras + LIDAR_TOP per keyframe, own stamps
    stamps = {c.timestamp for f in synth_index for c in f.cameras} | {f.lidar[0].timestamp for f in synth_index}
    assert len(msgs['/tf']) == len(stamps)
    assert summary['counts'] == {t: len(v) for t, v in msgs.items()}
    assert summary['messages'] == sum(summary['counts'].values())


def test_stamps_are_monotonic_and_match_headers(synth_bag):
    summary, msgs, _ = synth_bag
    for topic, items in msgs.items():
        log_times = [t for t, _, _ in items]
        assert all(b > a for a, b in zip(log_times, log_times[1:])), topic
        for t, msg, _ in items:
            if hasattr(msg, 'header'):
                assert stamp_ns(msg.header) == t, topic
            elif hasattr(msg, 'transforms'):
                assert all(stamp_ns(tr.header) == t for tr in msg.transforms), topic
            else:
                assert all(stamp_ns(m.header) == t for m in msg.markers), topic
    # the whole bag in time order too (the scenes are written in time order)
    order = summary['order']
    assert order == sorted(order) and len(order) == summary['messages']
    assert order[0] == summary['start_ns'] and order[-1] == summary['end_ns']


def test_images_decode_to_the_dataset_pixels_and_camera_info_is_the_calibration(synth_bag, synth_index):
    _, msgs, _ = synth_bag
    by_stamp = {(c.channel, c.timestamp * 1000): c for f in synth_index for c in f.cameras}
    for ch in CAMERAS:
        images = msgs[f'/{ch}/image_rect_compressed']
        infos = msgs[f'/{ch}/camera_info']
        for (t, img, _), (t_info, info, _) in zip(images, infos):
            cam = by_stamp[(ch, t)]
            assert t_info == t
            assert img.format == 'jpeg' and img.header.frame_id == ch
            jpeg = cam.path.read_bytes()
            assert img.data.tobytes() == jpeg  # the dataset's bytes, unchanged
            decoded = cv2.imdecode(img.data, cv2.IMREAD_COLOR)
            assert np.array_equal(decoded, cv2.imread(str(cam.path), cv2.IMREAD_COLOR))
            assert info.header.frame_id == ch
            assert (info.width, info.height) == (cam.width, cam.height) == (decoded.shape[1], decoded.shape[0])
            assert np.array_equal(info.k.reshape(3, 3), cam.intrinsic)
            assert np.array_equal(info.p.reshape(3, 4)[:, :3], cam.intrinsic)
            assert np.array_equal(info.r.reshape(3, 3), np.eye(3)) and not np.any(info.d)


def test_pointclouds_are_the_dataset_points(synth_bag, synth_index):
    _, msgs, _ = synth_bag
    by_stamp = {f.lidar[0].timestamp * 1000: f.lidar[0] for f in synth_index}
    for t, pc, _ in msgs['/LIDAR_TOP']:
        sweep = by_stamp[t]
        assert pc.header.frame_id == 'LIDAR_TOP'
        assert [f.name for f in pc.fields] == ['x', 'y', 'z', 'intensity', 'ring']
        assert pc.point_step == 20 and pc.height == 1 and not pc.is_bigendian
        pts = np.frombuffer(pc.data.tobytes(), dtype=np.float32).reshape(-1, 5)
        assert pc.width == len(pts)
        assert np.array_equal(pts, np.fromfile(sweep.path, dtype=np.float32).reshape(-1, 5))


def test_tf_has_one_ego_pose_per_stamp_and_static_sensor_frames(synth_bag, synth_index):
    _, msgs, _ = synth_bag
    tf = {}
    for t, msg, _ in msgs['/tf']:
        assert len(msg.transforms) == 1
        tr = msg.transforms[0]
        assert (tr.header.frame_id, tr.child_frame_id) == ('map', 'base_link')
        tf[t] = matrix_of(tr.transform)
    for f in synth_index:
        for c in f.cameras:  # the ego pose at each image's own stamp
            np.testing.assert_allclose(tf[c.timestamp * 1000], c.ego_to_global, atol=1e-9)
        np.testing.assert_allclose(tf[f.lidar[0].timestamp * 1000], f.ego_to_global, atol=1e-9)
    first_of_scene = {}
    for f in synth_index:
        first_of_scene.setdefault(f.scene_name, f)
    statics = msgs['/tf_static']
    for (t, msg, _), f in zip(statics, sorted(first_of_scene.values(), key=lambda f: f.timestamp)):
        frames = {tr.child_frame_id: tr for tr in msg.transforms}
        assert list(frames) == list(CHANNELS)
        assert all(tr.header.frame_id == 'base_link' for tr in msg.transforms)
        for c in f.cameras:
            np.testing.assert_allclose(matrix_of(frames[c.channel].transform), c.cam_to_ego, atol=1e-9)
        np.testing.assert_allclose(matrix_of(frames['LIDAR_TOP'].transform), f.lidar[0].sensor_to_ego, atol=1e-9)


def test_ground_truth_markers_are_the_map_vectors_in_base_link(synth_bag, synth_index, synth_root):
    _, msgs, _ = synth_bag
    gt = MapGroundTruth(synth_root, GridConfig())
    frames = {f.lidar[0].timestamp * 1000: f for f in synth_index}
    marker_t = typestore().types['visualization_msgs/msg/Marker']
    total = 0
    for t, arr, _ in msgs['/map_gt/markers']:
        f = frames[t]
        assert arr.markers[0].action == marker_t.DELETEALL
        lines = arr.markers[1:]
        assert all(m.type == marker_t.LINE_STRIP and m.action == marker_t.ADD for m in lines)
        assert all(m.header.frame_id == 'base_link' and m.ns in CLASS_NAMES[1:] for m in lines)
        ids = [(m.ns, m.id) for m in lines]
        assert len(set(ids)) == len(ids)
        expected = gt.vectors(f.city, f.ego_to_global)
        assert len(lines) == len(expected)
        for m, v in zip(lines, expected):
            assert CLASS_INDEX[m.ns] == v.cls
            pts = np.array([[p.x, p.y] for p in m.points])
            np.testing.assert_allclose(pts, v.points, atol=1e-9)
        total += len(lines)
    assert total > 0


def test_bundled_real_keyframe_to_sqlite3(keyframe, tmp_path):
    out = tmp_path / 'real'
    summary = convert('bundled', out, storage='sqlite3', map_gt=False)
    assert summary['storage'] == 'sqlite3' and summary['scenes'] == ['scene-0061']
    assert list(out.glob('*.db3')) and '/map_gt/markers' not in summary['counts']
    msgs, _ = read_bag(out)
    for c in keyframe.cameras:
        (t, img, _), = msgs[f'/{c.channel}/image_rect_compressed']
        assert t == c.timestamp * 1000
        decoded = cv2.imdecode(img.data, cv2.IMREAD_COLOR)
        assert decoded.shape == (900, 1600, 3)
        assert np.array_equal(decoded, cv2.imread(str(c.path), cv2.IMREAD_COLOR))
        (_, info, _), = msgs[f'/{c.channel}/camera_info']
        assert np.array_equal(info.k.reshape(3, 3), c.intrinsic)


def test_scene_split_time_range_and_topic_override(synth_root, synth_index, tmp_path):
    topics = tmp_path / 'topics.yaml'
    topics.write_text('camera_image: /sensing/{channel}/jpeg\ncamera_info: null\nlidar: /points\n'
                      'map_gt: ""\nego_frame: ego\n')
    out = tmp_path / 'range'
    summary = convert(synth_root, out, split='mini_val', start=0.4, end=1.0, topics=topics,
                      channels=('CAM_FRONT', 'LIDAR_TOP'))
    assert summary['scenes'] == ['scene-0103', 'scene-0916']  # the official mini_val scenes, in time order
    msgs, types = read_bag(out)
    assert set(types) == {'/sensing/CAM_FRONT/jpeg', '/points', '/tf', '/tf_static'}
    # keyframes at 0, 0.5, 1.0 s: the range keeps those at 0.5 and 1.0 s (LiDAR at the keyframe, CAM_FRONT 35 ms
    # before it, so the camera of the first keyframe falls before 0.4 s)
    starts = sorted({f.timestamp * 1000 for f in synth_index if f.scene_name in summary['scenes']
                     and f is next(g for g in synth_index if g.scene_name == f.scene_name)})
    assert len(starts) == 2
    for topic in ('/sensing/CAM_FRONT/jpeg', '/points'):
        assert len(msgs[topic]) == 4, topic
        for t, msg, _ in msgs[topic]:
            start = max(s for s in starts if s <= t)
            assert 0.4 <= (t - start) * 1e-9 <= 1.0, (topic, (t - start) * 1e-9)
    assert all(msg.transforms[0].child_frame_id == 'ego' for _, msg, _ in msgs['/tf'])
    assert {tr.child_frame_id for _, msg, _ in msgs['/tf_static'] for tr in msg.transforms} == {'CAM_FRONT',
                                                                                                  'LIDAR_TOP'}
    with pytest.raises(SplitError, match='scene-9999'):
        convert(synth_root, tmp_path / 'x', scenes=['scene-9999'])
    with pytest.raises(BagError, match='nothing to write'):
        convert(synth_root, tmp_path / 'y', scenes=['scene-0103'], start=100, end=200)
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


@pytest.mark.slow
def test_all_sweeps(tmp_path):
    root = synthetic_dataroot(SynthConfig(scenes=('scene-0103',), limit=2, camera_sweeps=True, lidar_sweeps=True),
                              progress=False)
    import json
    rows = json.loads((root / 'v1.0-mini' / 'sample_data.json').read_text())
    assert any(not r['is_key_frame'] for r in rows)
    cs = {r['token']: r for r in json.loads((root / 'v1.0-mini' / 'calibrated_sensor.json').read_text())}
    sensors = {r['token']: r['channel'] for r in json.loads((root / 'v1.0-mini' / 'sensor.json').read_text())}
    per_channel = defaultdict(list)
    for r in rows:
        per_channel[sensors[cs[r['calibrated_sensor_token']]['sensor_token']]].append(r)
    summary = convert(root, tmp_path / 'sweeps', keyframes_only=False, storage='sqlite3')
    msgs, _ = read_bag(tmp_path / 'sweeps')
    for ch, records in per_channel.items():
        topic = '/LIDAR_TOP' if ch == 'LIDAR_TOP' else f'/{ch}/image_rect_compressed'
        assert [t for t, _, _ in msgs[topic]] == sorted(r['timestamp'] * 1000 for r in records)
        assert len(records) > sum(r['is_key_frame'] for r in records)
    for topic, items in msgs.items():
        stamps = [t for t, _, _ in items]
        assert all(b > a for a, b in zip(stamps, stamps[1:])), topic
    assert len(msgs['/map_gt/markers']) == 2  # ground truth stays per keyframe
    assert len(msgs['/tf']) == len({r['timestamp'] for r in rows})
    for t, img, _ in msgs['/CAM_FRONT/image_rect_compressed']:
        rec = next(r for r in per_channel['CAM_FRONT'] if r['timestamp'] * 1000 == t)
        assert np.array_equal(cv2.imdecode(img.data, cv2.IMREAD_COLOR),
                              cv2.imread(str(root / rec['filename']), cv2.IMREAD_COLOR))
    key = convert(root, tmp_path / 'keys', keyframes_only=True)
    topic = '/CAM_FRONT/image_rect_compressed'
    assert key['counts'][topic] == 2 < summary['counts'][topic]


# ----------------------------------------------------------------------------------------------------------------
# bad inputs


def test_missing_dataroot_is_named(tmp_path, capsys):
    missing = tmp_path / 'no_such_dataroot'
    with pytest.raises(DatasetNotFoundError, match=str(missing)):
        convert(missing, tmp_path / 'out')
    assert bag_convert.main(['--dataroot', str(missing), '--out', str(tmp_path / 'out')]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_missing_table_and_sensor_file_are_named_and_nothing_is_left(tmp_dataroot, keyframe, tmp_path):
    cam = keyframe.cameras[1]
    (tmp_dataroot / cam.path.relative_to(keyframe.cameras[1].path.parents[2])).unlink()
    out = tmp_path / 'bags' / 'broken'
    with pytest.raises(MissingSensorFileError) as err:
        convert(tmp_dataroot, out)
    assert cam.path.name in str(err.value) and cam.channel in str(err.value)
    assert not (tmp_path / 'bags').exists()  # checked before anything is written
    (tmp_dataroot / 'v1.0-mini' / 'ego_pose.json').unlink()
    with pytest.raises(DatasetNotFoundError, match='ego_pose.json'):
        convert(tmp_dataroot, out)


def test_corrupt_lidar_file_fails_without_leaving_a_bag(tmp_dataroot, keyframe, tmp_path):
    rel = keyframe.lidar[0].path.relative_to(keyframe.lidar[0].path.parents[2])
    (tmp_dataroot / rel).write_bytes(b'\0' * 21)
    out = tmp_path / 'broken'
    with pytest.raises(CorruptSensorFileError, match=re.escape(rel.name)):
        convert(tmp_dataroot, out, map_gt=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ['nuscenes']


def test_missing_map_expansion_is_named(tmp_dataroot, tmp_path):
    (tmp_dataroot / 'maps' / 'expansion' / 'singapore-onenorth.json').unlink()
    with pytest.raises(UnknownMapError, match='singapore-onenorth.json') as err:
        convert(tmp_dataroot, tmp_path / 'nomap')
    assert '--no-map-gt' in str(err.value) and not (tmp_path / 'nomap').exists()
    assert '/map_gt/markers' not in convert(tmp_dataroot, tmp_path / 'nomap', map_gt=False)['counts']


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / 'bag'
    first = convert('bundled', out, map_gt=False)
    with pytest.raises(BagExistsError, match='--overwrite'):
        convert('bundled', out, map_gt=False)
    assert bag_convert.main(['--dataroot', 'bundled', '--out', str(out), '--no-map-gt']) == 2
    second = convert('bundled', out, map_gt=False, overwrite=True, storage='sqlite3')
    assert second['counts'] == first['counts'] and list(out.glob('*.db3')) and not list(out.glob('*.mcap'))
    other = tmp_path / 'not_a_bag'
    other.mkdir()
    (other / 'keep.txt').write_text('mine')
    with pytest.raises(BagExistsError, match='not a rosbag2 folder'):
        convert('bundled', other, overwrite=True)
    assert (other / 'keep.txt').read_text() == 'mine'


def test_cli_convert_prints_the_topics(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert bag_convert.main(['--dataroot', 'bundled', '--out', str(out), '--storage', 'mcap', '--no-progress']) == 0
    text = capsys.readouterr().out
    assert f'wrote {out}' in text and '/CAM_FRONT/image_rect_compressed' in text and '/map_gt/markers' in text
    assert (out / 'metadata.yaml').is_file() and (out / 'cli.mcap').is_file()


# ----------------------------------------------------------------------------------------------------------------
# player



class Listener:
    """A subscriber node in its own rclpy context, spun in a background thread."""

    def __init__(self, topics: dict):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node('bag_test_listener', context=self.ctx)
        self.got = defaultdict(list)
        self.lock = threading.Lock()
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        for topic, cls in topics.items():
            self.node.create_subscription(cls, topic, lambda m, t=topic: self._on(t, m), qos)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _on(self, topic, msg):
        with self.lock:
            self.got[topic].append(msg)

    def _spin(self):
        while self.running and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(self, counts: dict, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(len(self.got[t]) >= n for t, n in counts.items()):
                    return True
            time.sleep(0.02)
        return False

    def close(self):
        self.running = False
        self.thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()


@pytest.fixture(scope='module')
def small_bag(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('play') / 'small'
    convert(synth_root, out, scenes=['scene-0103'])
    return out


def test_play_delivers_every_image_with_remap(small_bag):
    from sensor_msgs.msg import CompressedImage
    from visualization_msgs.msg import MarkerArray
    from mapkd_ros.bag.play import message_class, play
    msgs, _ = read_bag(small_bag)
    has_tf2 = message_class('tf2_msgs/msg/TFMessage') is not None
    # every topic under a namespace of this test process, so that other ROS tests running on the machine at the
    # same time neither receive these messages nor send theirs here
    remap = {t: NS + t for t in msgs}
    remap['/CAM_FRONT/image_rect_compressed'] = NS + '/front/jpeg'
    topics = {remap.get(f'/{c}/image_rect_compressed', f'/{c}/image_rect_compressed'): CompressedImage
              for c in CAMERAS}
    topics[NS + '/map_gt/markers'] = MarkerArray
    listener = Listener(topics)
    lines = []
    try:
        counts = play(small_bag, rate=5.0, remap=remap, wait_for=list(topics), wait_for_subscribers=20,
                      log=lines.append)
        expected = {remap.get(t, t): len(v) for t, v in msgs.items() if has_tf2 or t not in ('/tf', '/tf_static')}
        assert counts == expected
        assert listener.wait_for({t: expected[t] for t in topics}), {t: len(v) for t, v in listener.got.items()}
    finally:
        listener.close()
    for c in CAMERAS:
        sent = [m for _, m, _ in msgs[f'/{c}/image_rect_compressed']]
        got = listener.got[remap.get(f'/{c}/image_rect_compressed', f'/{c}/image_rect_compressed')]
        assert [stamp_ns(m.header) for m in got] == [stamp_ns(m.header) for m in sent]
        assert all(bytes(g.data) == s.data.tobytes() and g.header.frame_id == c for g, s in zip(got, sent))
    arrays = listener.got[NS + '/map_gt/markers']
    assert [len(a.markers) for a in arrays] == [len(m.markers) for _, m, _ in msgs['/map_gt/markers']]
    assert arrays[0].markers[1].ns in CLASS_NAMES[1:] and arrays[0].markers[1].header.frame_id == 'base_link'
    text = '\n'.join(lines)
    assert ('skipping /tf ' in text) == (not has_tf2)  # /tf cannot be published without tf2_msgs
    assert NS + '/front/jpeg' in text and 'sent' in text


def test_play_loops_and_paces(small_bag):
    from mapkd_ros.bag.play import play
    msgs, _ = read_bag(small_bag)
    topic = '/CAM_FRONT/camera_info'
    t0 = time.perf_counter()
    counts = play(small_bag, rate=4.0, loop=True, loops=2, topics=[topic], remap={topic: NS + topic},
                  wait_for_subscribers=0, log=None)
    elapsed = time.perf_counter() - t0
    assert counts == {NS + topic: 2 * len(msgs[topic])}
    span = (msgs[topic][-1][0] - msgs[topic][0][0]) * 1e-9  # 1 s of bag time per pass
    assert elapsed >= 2 * span / 4.0 * 0.9


def test_play_errors_are_named(small_bag, tmp_path):
    from mapkd_ros.bag.play import parse_remap, play
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        play(tmp_path, log=None)
    with pytest.raises(BagError, match='/nope'):
        play(small_bag, topics=['/nope'], log=None)
    with pytest.raises(BagError, match='/nope'):
        play(small_bag, remap={'/nope': '/x'}, log=None)
    with pytest.raises(BagError, match='OLD:=NEW'):
        parse_remap(['/a=/b'])
    with pytest.raises(BagError, match='rate'):
        play(small_bag, rate=0, log=None)
    with pytest.raises(BagError, match='no subscriber'):
        play(small_bag, topics=['/CAM_BACK/camera_info'], remap={'/CAM_BACK/camera_info': NS + '/nobody'},
             wait_for_subscribers=0.3, log=None)


@pytest.mark.slow
def test_play_cli_in_another_process(small_bag):
    from sensor_msgs.msg import CompressedImage
    msgs, _ = read_bag(small_bag)
    n = len(msgs['/CAM_BACK/image_rect_compressed'])
    back = NS + '/cli/back'
    listener = Listener({back: CompressedImage})
    try:
        env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
        proc = subprocess.run(
            [sys.executable, '-m', 'mapkd_ros.bag.play', str(small_bag), '--rate', '10', '--topics',
             '/CAM_BACK/image_rect_compressed', '--remap', f'/CAM_BACK/image_rect_compressed:={back}',
             '--wait-for', back, '--wait-subscribers', '30', '--ros-args', '--log-level', 'warn'],
            capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        assert listener.wait_for({back: n})
    finally:
        listener.close()
    assert back in proc.stdout and f'sent {n} message(s)' in proc.stdout
