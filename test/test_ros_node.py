"""The student_node on real rclpy and Fast DDS over loopback: the real keyframe in, MarkerArray out; bad input; a slow
backend; the console script with a params file in its own process; the launch file and the RViz config.

Every test uses its own DDS domain (derived from the process id) and its own topic namespace, so that it neither
hears nor disturbs other ROS processes on the machine.
"""
import os
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64, UInt64  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from mapkd_core.constants import CAMERAS, CLASS_NAMES  # noqa: E402
from mapkd_core.geometry import scale_intrinsics  # noqa: E402
from mapkd_core.paths import config_path  # noqa: E402
from mapkd_ros.conversions import (bytes_to_compressed, camera_info_msg, ns_to_stamp, rgb_to_image,  # noqa: E402
                                   stamp_to_ns)
from mapkd_ros.markers import markers_to_vectors  # noqa: E402

pytestmark = [pytest.mark.filterwarnings('ignore:no ImageNet weights'),
              pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]

REPO = Path(__file__).resolve().parent.parent
DOMAIN = 20 + os.getpid() % 70  # 20..89: away from the default domain 0
RELIABLE = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
MS = 1_000_000
_counter = iter(range(1, 1000))


def wait_for(predicate, timeout=60.0, what='condition'):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def params_from_yaml(path, **extra) -> dict:
    """The flat parameter dict of a params file's student_node section (nested keys joined with dots)."""
    def flatten(d, prefix=''):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flatten(v, f'{prefix}{k}.'))
            else:
                out[f'{prefix}{k}'] = v
        return out
    params = flatten(yaml.safe_load(Path(path).read_text())['student_node']['ros__parameters'])
    params.update(extra)
    return params


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """The tiny edge student with random weights, except a semantic head that calls every BEV cell 'divider' and an
    embedding head that puts every cell in one instance: the vectorizer then deterministically returns one divider
    through the middle of the grid, whatever the images."""
    from mapkd_core.models import build_model, save_weights
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model('student_edge_tiny')
    heads = model.neck.heads
    with torch.no_grad():
        heads.semantic.weight.zero_()
        heads.semantic.bias.copy_(torch.tensor([0.0, 6.0, 0.0, 0.0]))
        heads.embedding.weight.zero_()
        heads.embedding.bias.zero_()
    return save_weights(model, tmp_path_factory.mktemp('weights') / 'student_edge_tiny.safetensors')


@pytest.fixture(scope='module')
def pipeline(weights):
    from mapkd_core.runtime import Pipeline
    return Pipeline(weights)


@pytest.fixture(scope='module')
def jpegs(keyframe):
    """camera -> (JPEG bytes of the real keyframe, intrinsics, (height, width), stamp in ns)."""
    return {c.channel: (c.path.read_bytes(), c.intrinsic, (c.height, c.width), c.timestamp * 1000)
            for c in keyframe.cameras}


class SlowPipeline:
    """A deliberately slow backend: sleeps, then returns a fixed prediction (no torch: timing is deterministic)."""

    def __init__(self, real, delay):
        self.cfg, self.cameras, self.delay = real.cfg, real.cameras, delay
        self.calls = []

    def __call__(self, images, intrinsics, cam_to_ego, stamp=None):
        from mapkd_core.data.vectors import MapVector
        from mapkd_core.runtime import MapPrediction
        assert len(images) == 6 and np.asarray(intrinsics).shape == (6, 3, 3)
        self.calls.append(stamp)
        time.sleep(self.delay)
        return MapPrediction([MapVector(1, [[0.0, 0.0], [10.0, 0.0]], 0.9)], stamp)


class Rig:
    """A StudentNode and a tester node (publishers of the six cameras, subscriber of the outputs) in one private
    context and DDS domain, spun by one executor in a background thread."""

    def __init__(self, pipeline, raw=(), stale_timeout=1.0, warn_period=0.5, **overrides):
        self.ns = f'/t{os.getpid()}_{next(_counter)}'
        self.raw = set(raw)
        self.image_topics = [f'{self.ns}/{c}/image_rect' + ('' if c in self.raw else '_compressed') for c in CAMERAS]
        self.info_topics = [f'{self.ns}/{c}/camera_info' for c in CAMERAS]
        params = params_from_yaml(config_path('student.yaml'), image_topics=self.image_topics,
                                  camera_info_topics=self.info_topics, stale_timeout=stale_timeout,
                                  warn_period=warn_period, **overrides)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN)
        from mapkd_ros.student_node import StudentNode
        self.node = StudentNode(pipeline=pipeline, context=self.context, namespace=self.ns,
                                parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.warnings = []
        original = self.node.warn

        def record(key, text):
            self.warnings.append((key, text))
            original(key, text)
        self.node.warn = record
        self.tester = Node('tester', context=self.context, namespace=self.ns)
        self.image_pubs = {c: self.tester.create_publisher(Image if c in self.raw else CompressedImage, t, RELIABLE)
                           for c, t in zip(CAMERAS, self.image_topics)}
        self.info_pubs = {c: self.tester.create_publisher(CameraInfo, t, RELIABLE)
                          for c, t in zip(CAMERAS, self.info_topics)}
        self.markers, self.latency, self.processing, self.dropped = [], [], [], []
        out = f'{self.ns}/student_node'
        self.subs = [self.tester.create_subscription(MarkerArray, f'{out}/map_markers', self.markers.append, RELIABLE),
                     self.tester.create_subscription(Float64, f'{out}/pipeline_latency_ms',
                                                     lambda m: self.latency.append(m.data), RELIABLE),
                     self.tester.create_subscription(Float64, f'{out}/processing_time_ms',
                                                     lambda m: self.processing.append(m.data), RELIABLE),
                     self.tester.create_subscription(UInt64, f'{out}/dropped_sets',
                                                     lambda m: self.dropped.append(m.data), RELIABLE)]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        node_pubs = [self.node.pub_markers, self.node.pub_latency, self.node.pub_processing, self.node.pub_dropped]
        wait_for(lambda: all(p.get_subscription_count() >= 1 for p in [*self.image_pubs.values(),
                                                                         *self.info_pubs.values(), *node_pubs])
                 and all(s.get_publisher_count() >= 1 for s in [*self.subs, *self.node._subs]), 30, 'discovery')

    def publish_infos(self, jpegs, cameras=CAMERAS):
        for c in cameras:
            _, k, hw, _ = jpegs[c]
            if c in self.raw:
                k, hw = scale_intrinsics(k, 0.25, 0.25), (hw[0] // 4, hw[1] // 4)
            self.info_pubs[c].publish(camera_info_msg(k, hw, frame_id=c))

    def image_msg(self, jpegs, camera):
        data, _, hw, _ = jpegs[camera]
        if camera not in self.raw:
            return bytes_to_compressed(data, 'jpeg', frame_id=camera)
        import cv2
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return rgb_to_image(cv2.resize(rgb, (hw[1] // 4, hw[0] // 4), interpolation=cv2.INTER_AREA), 'bgr8',
                            frame_id=camera)

    def publish_set(self, jpegs, stamps, replace=None, skip=()):
        """Publish one image per camera; ``stamps``: one ns stamp for all or camera -> ns; ``replace``: camera ->
        message to send instead of the good image."""
        replace = replace or {}
        for c in CAMERAS:
            if c in skip:
                continue
            msg = replace.get(c) or self.image_msg(jpegs, c)
            msg.header.stamp = ns_to_stamp(stamps[c] if isinstance(stamps, dict) else stamps)
            self.image_pubs[c].publish(msg)

    def now_ns(self):
        return self.tester.get_clock().now().nanoseconds

    def warned(self, *words):
        return [t for _, t in self.warnings if all(w in t for w in words)]

    def close(self):
        self.executor.shutdown(timeout_sec=5)
        self.spinner.join(10)
        self.node.destroy_node()
        self.tester.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def rig_factory():
    rigs = []

    def make(*args, **kwargs):
        rigs.append(Rig(*args, **kwargs))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()


def assert_markers_in_grid(array, stamp_ns, grid, frame_id='base_link'):
    first = array.markers[0]
    assert first.action == first.DELETEALL
    assert all(m.header.frame_id == frame_id and stamp_to_ns(m.header.stamp) == stamp_ns for m in array.markers)
    _, vectors = markers_to_vectors(array)
    lines = [(v.class_name, v.points) for v in vectors]
    assert lines, 'no polyline'
    assert len(lines) == len(array.markers) - 1  # every LINE_STRIP names a class
    for ns, pts in lines:
        assert ns in CLASS_NAMES[1:] and len(pts) >= 2 and np.all(np.isfinite(pts))
        assert np.all((pts[:, 0] >= grid.xbound[0]) & (pts[:, 0] <= grid.xbound[1]))
        assert np.all((pts[:, 1] >= grid.ybound[0]) & (pts[:, 1] <= grid.ybound[1]))
    return lines


# ------------------------------------------------------------------------------------------------------- tests
def test_keyframe_set_yields_one_marker_array_in_base_link(rig_factory, pipeline, jpegs):
    """The six real JPEGs with their real nuScenes stamps (spread over 43 ms, inside the 50 ms slop) give exactly one
    MarkerArray stamped with the set's newest stamp, with the divider the weights force, inside the BEV grid."""
    rig = rig_factory(pipeline)
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    stamps = {c: jpegs[c][3] for c in CAMERAS}
    rig.publish_set(jpegs, stamps)
    wait_for(lambda: rig.markers and rig.latency and rig.processing, 120, 'the MarkerArray')
    time.sleep(0.3)  # nothing else may follow
    assert len(rig.markers) == 1 and rig.node.stats['processed'] == 1
    lines = assert_markers_in_grid(rig.markers[0], max(stamps.values()), pipeline.grid)
    assert [ns for ns, _ in lines] == ['divider']
    assert rig.processing[0] > 0 and rig.latency[0] > 0
    assert rig.node.sync.stats()['dropped'] == 0 and not rig.warnings


def test_one_camera_200ms_off_is_not_fused(rig_factory, pipeline, jpegs):
    rig = rig_factory(pipeline)
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    t0 = rig.now_ns()
    rig.publish_set(jpegs, {c: t0 + (200 * MS if c == 'CAM_BACK' else 0) for c in CAMERAS})
    wait_for(lambda: rig.node.sync.stats()['queued'] == 6, 30, 'all six images at the node')
    assert rig.node.sync.sets == 0
    t1 = t0 + 500 * MS
    rig.publish_set(jpegs, t1)
    wait_for(lambda: rig.markers, 120, 'the MarkerArray of the good set')
    time.sleep(0.3)
    assert len(rig.markers) == 1 and stamp_to_ns(rig.markers[0].markers[0].header.stamp) == t1
    assert rig.node.sync.sets == 1 and rig.node.stats['processed'] == 1


def test_bad_input_is_skipped_with_clear_warnings_and_the_node_keeps_working(rig_factory, pipeline, jpegs):
    """Missing CameraInfo, a corrupt JPEG, a wrong encoding, a wrong size and a stamp going backwards are each
    skipped with a warning naming the camera and topic; then a good set is processed; a silent camera is reported."""
    rig = rig_factory(pipeline, raw=('CAM_FRONT',), stale_timeout=0.5)
    t = rig.now_ns()
    skipped = rig.node.stats

    # 1. no CameraInfo yet on CAM_BACK
    rig.publish_infos(jpegs, [c for c in CAMERAS if c != 'CAM_BACK'])
    wait_for(lambda: len(rig.node.infos) == 5, 30, 'CameraInfo')
    rig.publish_set(jpegs, t)
    wait_for(lambda: skipped['skipped'] == 1, 60, 'the set without CameraInfo to be skipped')
    assert rig.warned('CAM_BACK: no CameraInfo yet on', '/CAM_BACK/camera_info', 'set skipped')
    rig.publish_infos(jpegs, ['CAM_BACK'])
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')

    # 2. a corrupt JPEG
    rng = np.random.default_rng(0)
    corrupt = bytes_to_compressed(b'\xff\xd8\xff\xe0' + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    rig.publish_set(jpegs, t + 100 * MS, replace={'CAM_BACK': corrupt})
    wait_for(lambda: skipped['skipped'] == 2, 60, 'the corrupt set to be skipped')
    assert rig.warned('/CAM_BACK/image_rect_compressed: corrupt JPEG image', 'set skipped')

    # 3. a wrong encoding on the raw camera
    wrong = rig.image_msg(jpegs, 'CAM_FRONT')
    wrong.encoding = '16UC1'
    rig.publish_set(jpegs, t + 200 * MS, replace={'CAM_FRONT': wrong})
    wait_for(lambda: skipped['skipped'] == 3, 60, 'the mis-encoded set to be skipped')
    assert rig.warned('/CAM_FRONT/image_rect: unsupported image encoding', '16UC1')

    # 4. a wrong size (CameraInfo says 400x225)
    small = rgb_to_image(np.zeros((100, 200, 3), np.uint8), 'rgb8')
    rig.publish_set(jpegs, t + 300 * MS, replace={'CAM_FRONT': small})
    wait_for(lambda: skipped['skipped'] == 4, 60, 'the mis-sized set to be skipped')
    assert rig.warned('/CAM_FRONT/image_rect: image is 200x100 but its CameraInfo says 400x225')

    # 5. a stamp going backwards on one camera: refused by the synchroniser, no set
    rig.image_pubs['CAM_BACK_LEFT'].publish(_stamped(rig.image_msg(jpegs, 'CAM_BACK_LEFT'), t + 250 * MS))
    wait_for(lambda: rig.warned('CAM_BACK_LEFT: image stamp', 'older than the previous one'), 30, 'the warning')

    # 6. the node is alive and processes the next good set
    assert rig.markers == [] and rig.node._worker.is_alive() and rig.spinner.is_alive()
    good = t + 400 * MS
    rig.publish_set(jpegs, good)
    wait_for(lambda: rig.markers, 120, 'the MarkerArray of the good set')
    assert len(rig.markers) == 1
    assert_markers_in_grid(rig.markers[0], good, pipeline.grid)
    assert rig.node.stats['processed'] == 1 and rig.node.stats['skipped'] == 4

    # 7. the cameras stop publishing: reported (throttled) after stale_timeout
    wait_for(lambda: rig.warned('CAM_BACK_RIGHT: no image for', 's on', '/CAM_BACK_RIGHT/image_rect_compressed'),
             10, 'the silent-camera warning')
    assert rig.node._worker.is_alive()


def _stamped(msg, ns):
    msg.header.stamp = ns_to_stamp(ns)
    return msg


def test_slow_backend_drops_sets_and_latency_stays_bounded(rig_factory, pipeline, jpegs):
    """Cameras at 10 Hz, a backend that needs 0.5 s: the worker takes only the newest set each time, the others are
    counted as dropped (also on ~/dropped_sets), latency stays under two backend periods plus conversion, and the last
    set published is the last one processed."""
    slow = SlowPipeline(pipeline, delay=0.5)
    rig = rig_factory(slow, queue_size=3)
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    sent = []
    start = time.monotonic()
    for _ in range(20):  # 2 s of cameras at 10 Hz; an unbounded queue would end ~8 s behind
        sent.append(rig.now_ns())
        rig.publish_set(jpegs, sent[-1])
        time.sleep(0.1)
    publishing = time.monotonic() - start
    sync = rig.node.sync
    wait_for(lambda: sync.sets == 20 and not sync.pending and rig.node.stats['processed'] == sync.taken, 60,
             'the node to catch up')
    wait_for(lambda: len(rig.latency) == sync.taken and rig.dropped and rig.dropped[-1] == sync.dropped, 10,
             'the outputs')
    processed = rig.node.stats['processed']
    print(f'slow backend: 20 sets, {processed} processed, {sync.dropped} dropped, latency ms '
          f'{np.round(rig.latency).astype(int).tolist()}')
    assert sync.dropped > 0 and processed + sync.dropped == 20 and processed <= publishing / 0.5 + 2
    assert max(rig.latency) < 2 * 500 + 800
    assert stamp_to_ns(rig.markers[-1].markers[0].header.stamp) == sent[-1]
    assert [s * 1e9 for s in slow.calls] == pytest.approx(sorted(s * 1e9 for s in slow.calls))


def test_bad_parameters_are_refused_with_a_clear_error(pipeline):
    from mapkd_ros.student_node import ConfigurationError, StudentNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    try:
        base = params_from_yaml(config_path('student.yaml'))
        cases = [({'image_topics': ['/a', '/b']}, 'image_topics has 2 topics for 6 cameras'),
                 ({'extrinsics.CAM_BACK.rotation': [0.0, 0.0, 0.0, 0.0]}, 'extrinsics.CAM_BACK: extrinsic rotation'),
                 ({'qos': 'fast'}, "qos must be 'reliable' or 'sensor_data'"),
                 ({'compressed': [True, False]}, 'compressed must be'),
                 ({'cameras': list(CAMERAS[:5]) + ['CAM_TOP']}, "must name the model's cameras")]
        for change, message in cases:
            params = {k: v for k, v in base.items() if not k.startswith('extrinsics.CAM_TOP')}
            params.update(change)
            if 'cameras' in change:
                params['extrinsics.CAM_TOP.translation'] = [0.0, 0.0, 1.0]
                params['extrinsics.CAM_TOP.rotation'] = [1.0, 0.0, 0.0, 0.0]
            with pytest.raises(ConfigurationError, match=message):
                StudentNode(pipeline=pipeline, context=context, parameter_overrides=[
                    Parameter(k, value=v) for k, v in params.items()])
        no_extrinsics = {k: v for k, v in base.items() if not k.startswith('extrinsics.CAM_FRONT_RIGHT.')}
        with pytest.raises(ConfigurationError, match='no extrinsics for CAM_FRONT_RIGHT'):
            StudentNode(pipeline=pipeline, context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in no_extrinsics.items()])
        with pytest.raises(ConfigurationError, match='weights file not found: /nonexistent.safetensors'):
            StudentNode(context=context, parameter_overrides=[
                Parameter(k, value=v) for k, v in dict(base, model='/nonexistent.safetensors').items()])
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.slow
def test_console_script_applies_the_params_file(weights, jpegs, tmp_path):
    """``student_node --ros-args --params-file x.yaml`` in its own process: the file's frame_id, line width and topics
    show in the output, and its slop and queue size are the node's parameters (parameter service)."""
    from rcl_interfaces.srv import GetParameters
    ns = f'/p{os.getpid()}'
    doc = yaml.safe_load(config_path('student.yaml').read_text())
    p = doc['student_node']['ros__parameters']
    p.update(model=str(weights), frame_id='yaml_frame', line_width=0.37, slop=0.02, queue_size=3,
             image_topics=[f'{ns}/{c}/image_rect_compressed' for c in CAMERAS],
             camera_info_topics=[f'{ns}/{c}/camera_info' for c in CAMERAS])
    params_file = tmp_path / 'student.yaml'
    params_file.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONWARNINGS='ignore')
    exe = Path(sys.executable).parent / 'student_node'
    proc = subprocess.Popen([str(exe), '--ros-args', '--params-file', str(params_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    tester = Node('yaml_tester', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        markers = []
        sub = tester.create_subscription(MarkerArray, '/student_node/map_markers', markers.append, RELIABLE)
        pubs = {c: (tester.create_publisher(CompressedImage, f'{ns}/{c}/image_rect_compressed', RELIABLE),
                    tester.create_publisher(CameraInfo, f'{ns}/{c}/camera_info', RELIABLE)) for c in CAMERAS}
        wait_for(lambda: proc.poll() is not None or (
            all(a.get_subscription_count() and b.get_subscription_count() for a, b in pubs.values())
            and sub.get_publisher_count()), 120, 'the node process to subscribe')
        assert proc.poll() is None, proc.stdout.read()
        client = tester.create_client(GetParameters, '/student_node/get_parameters')
        assert client.wait_for_service(timeout_sec=30)
        future = client.call_async(GetParameters.Request(names=['slop', 'queue_size', 'frame_id', 'model']))
        wait_for(future.done, 30, 'the parameter service')
        values = future.result().values
        assert values[0].double_value == pytest.approx(0.02) and values[1].integer_value == 3
        assert values[2].string_value == 'yaml_frame' and values[3].string_value == str(weights)
        stamps = []
        for _ in range(10):  # again every 10 s, in case the node's outputs were not matched yet (it only reads)
            for c in CAMERAS:
                _, k, hw, _ = jpegs[c]
                pubs[c][1].publish(camera_info_msg(k, hw, frame_id=c))
            stamps.append(tester.get_clock().now().nanoseconds)
            for c in CAMERAS:
                msg = bytes_to_compressed(jpegs[c][0], frame_id=c)
                msg.header.stamp = ns_to_stamp(stamps[-1])
                pubs[c][0].publish(msg)
            try:
                wait_for(lambda: markers or proc.poll() is not None, 10, 'the MarkerArray from the node process')
                break
            except AssertionError:
                continue
        assert markers, proc.stdout.read()
        first = markers[0].markers
        assert first[0].header.frame_id == 'yaml_frame' and stamp_to_ns(first[0].header.stamp) in stamps
        assert len(first) >= 2 and first[1].scale.x == pytest.approx(0.37)
    finally:
        executor.shutdown(timeout_sec=5)
        tester.destroy_node()
        rclpy.shutdown(context=context)
        proc.send_signal(2)  # SIGINT: a clean shutdown
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert 'Traceback' not in out and 'CameraInfo received' in out, out


@pytest.mark.slow
def test_console_script_without_a_model_says_what_to_do(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), PYTHONWARNINGS='ignore')
    exe = Path(sys.executable).parent / 'student_node'
    done = subprocess.run([str(exe), '--ros-args', '--params-file', str(config_path('student.yaml')), '-p',
                           'model:=/nonexistent/w.safetensors'], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # bad input, as every mapkd command (mapkd_core.cli)
    assert 'weights file not found: /nonexistent/w.safetensors' in done.stderr + done.stdout
    assert 'Traceback' not in done.stderr


# ---------------------------------------------------------------------------------- launch file and RViz config
def _fake_launch_modules():
    """Minimal stand-ins for ``launch`` and ``launch_ros`` (not installable here) that record what they are given."""
    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Recorder):
        def perform(self, context):
            return context[self.args[0]]

    mods = {name: types.ModuleType(name) for name in ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
                                                      'launch_ros.actions', 'launch_ros.substitutions')}
    mods['launch'].LaunchDescription = Recorder
    for name in ('DeclareLaunchArgument', 'OpaqueFunction'):
        setattr(mods['launch.actions'], name, type(name, (Recorder,), {}))
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch.substitutions'].PathJoinSubstitution = type('PathJoinSubstitution', (Recorder,), {})
    mods['launch_ros.actions'].Node = type('Node', (Recorder,), {})
    mods['launch_ros.substitutions'].FindPackageShare = type('FindPackageShare', (Recorder,), {})
    return mods


def _load_launch_file():
    import importlib.util
    spec = importlib.util.spec_from_file_location('student_launch', REPO / 'launch' / 'student.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_imports_without_launch_and_describes_the_node(monkeypatch):
    for name in ('launch', 'launch_ros'):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = _load_launch_file()  # must not import launch at module level
    assert 'launch' not in sys.modules and 'launch_ros' not in sys.modules
    for name, mod in _fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    (entities,) = module.generate_launch_description().args
    declared = {e.args[0]: e.kwargs.get('default_value') for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    assert {'params_file', 'model', 'backend', 'device', 'frame_id', 'image_topics', 'camera_info_topics',
            'markers_topic', 'rviz'} <= set(declared)
    assert declared['params_file'].args[0][1:] == ['config', 'student.yaml']
    (opaque,) = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    values = dict.fromkeys(declared, '')
    values.update(model='/w.safetensors', device='cuda', image_topics='/a/image_rect_compressed, /b/image/compressed',
                  markers_topic='/map', rviz='false')
    (node,) = opaque.kwargs['function'](values)
    assert (node.kwargs['package'], node.kwargs['executable'], node.kwargs['name']) == ('mapkd_ros', 'student_node',
                                                                                        'student_node')
    params_file, overrides = node.kwargs['parameters']
    assert params_file.args[0] == 'params_file'
    assert overrides == {'model': '/w.safetensors', 'device': 'cuda',
                         'image_topics': ['/a/image_rect_compressed', '/b/image/compressed']}
    assert node.kwargs['remappings'] == [('~/map_markers', '/map')]
    # no argument given: the params file alone; with rviz, a republisher per compressed camera topic and RViz
    nodes = opaque.kwargs['function'](dict(dict.fromkeys(declared, ''), rviz='true'))
    assert nodes[0].kwargs['parameters'][1] == {} and nodes[0].kwargs['remappings'] == []
    republish = [n for n in nodes if n.kwargs['executable'] == 'republish']
    assert [n.kwargs['remappings'] for n in republish] == [
        [('in/compressed', f'/{c}/image_rect_compressed'), ('out', f'/{c}/image_rect')] for c in CAMERAS]
    (rviz,) = [n for n in nodes if n.kwargs['executable'] == 'rviz2']
    assert rviz.kwargs['arguments'][1].args[0][1:] == ['config', 'mapkd.rviz']
    assert module.raw_topic('/b/image/compressed') == '/b/image'


def test_rviz_config_shows_the_markers_and_the_six_cameras():
    rviz = yaml.safe_load((REPO / 'config' / 'mapkd.rviz').read_text())['Visualization Manager']
    assert rviz['Global Options']['Fixed Frame'] == 'base_link'
    displays = {d['Class']: [] for d in rviz['Displays']}
    for d in rviz['Displays']:
        displays[d['Class']].append(d)
    assert 'rviz_default_plugins/Grid' in displays
    (markers,) = displays['rviz_default_plugins/MarkerArray']
    assert markers['Topic']['Value'] == '/student_node/map_markers'
    # the Image displays read the raw topics that the launch file's republishers decode from the node's inputs
    params = params_from_yaml(config_path('student.yaml'))
    raw_topic = _load_launch_file().raw_topic
    assert [d['Topic']['Value'] for d in displays['rviz_default_plugins/Image']] == [
        raw_topic(t) for t in params['image_topics']]
    assert [d['Name'] for d in displays['rviz_default_plugins/Image']] == list(CAMERAS)
