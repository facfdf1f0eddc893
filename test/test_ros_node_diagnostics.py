"""The student_node's health reporting: /diagnostics (diagnostic_msgs/DiagnosticArray) on real rclpy over loopback,
the one-line "waiting for cameras" log, the level rules without ROS, and the extrinsics' tf2 lookup (with a stand-in
tf2_ros module: tf2 is not installable here).
"""
import os
import re
import sys
import time
import types

import numpy as np
import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from mapkd_core.constants import CAMERAS  # noqa: E402
from mapkd_core.paths import config_path  # noqa: E402
from mapkd_ros import diagnostics as diag  # noqa: E402
from mapkd_ros.sync import ApproximateTimeSync  # noqa: E402
from test_ros_node import RELIABLE, jpegs, params_from_yaml, rig_factory, wait_for  # noqa: E402,F401

pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]

NODE = 'student_node'


class FakePipeline:
    """A backend that sleeps ``delay`` seconds and returns one divider (no torch: timing is deterministic). Its input
    size is the edge student's, so the JPEGs are decoded at 1/4 as with the real model."""
    cameras = tuple(CAMERAS)
    cfg = types.SimpleNamespace(image=types.SimpleNamespace(height=128, width=352))

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = 0

    def __call__(self, images, intrinsics, cam_to_ego, stamp=None):
        from mapkd_core.data.vectors import MapVector
        from mapkd_core.runtime import MapPrediction
        assert len(images) == 6 and np.asarray(cam_to_ego).shape == (6, 4, 4)
        self.calls += 1
        time.sleep(self.delay)
        return MapPrediction([MapVector(1, [[0.0, 0.0], [10.0, 0.0]], 0.9)], stamp)


class DiagnosticsListener:
    """Subscribes the rig's tester node to /diagnostics and keeps every array."""

    def __init__(self, rig):
        self.arrays = []
        self.sub = rig.tester.create_subscription(DiagnosticArray, '/diagnostics', self.arrays.append, RELIABLE)
        wait_for(lambda: self.sub.get_publisher_count() >= 1, 30, 'the /diagnostics publisher')

    def levels(self, array) -> dict:
        """name -> level (int) of the node's statuses in one array."""
        return {s.name: s.level[0] for s in array.status if s.name.startswith(f'{NODE}: ')}

    def wait_until(self, predicate, timeout, what):
        """Spin (the rig's executor thread does) until an array that arrived after the call satisfies
        ``predicate(levels, array)``; return that array."""
        start = len(self.arrays)
        found = []

        def check():
            for array in self.arrays[start:]:
                if predicate(self.levels(array), array):
                    found.append(array)
                    return True
            return False
        wait_for(check, timeout, what)
        return found[0]


def camera_names():
    return [f'{NODE}: camera {c}' for c in CAMERAS]


def status(array, name) -> DiagnosticStatus:
    (s,) = [s for s in array.status if s.name == name]
    return s


def values(s: DiagnosticStatus) -> dict:
    return {kv.key: kv.value for kv in s.values}


# ----------------------------------------------------------------------------------------------- /diagnostics
def test_diagnostics_error_without_cameras_then_ok_with_images_and_camera_info(rig_factory, jpegs):
    rig = rig_factory(FakePipeline(), stale_timeout=0.5, diagnostics_period=0.2)
    listener = DiagnosticsListener(rig)

    # no camera publishes: after stale_timeout every camera is ERROR, the pipeline WARN (nothing processed)
    array = listener.wait_until(lambda lv, a: all(lv.get(n) == diag.ERROR for n in camera_names()), 20,
                                'every camera ERROR')
    levels = listener.levels(array)
    assert len(levels) == 7 and levels[f'{NODE}: pipeline'] == diag.WARN
    front = status(array, f'{NODE}: camera CAM_FRONT')
    assert front.hardware_id == 'CAM_FRONT'
    assert 'no image received on' in front.message and 'no CameraInfo on' in front.message
    v = values(front)
    assert v['receiving'] == 'false' and v['camera_info_valid'] == 'false' and v['last_image_age_s'] == 'never'
    assert v['image_topic'] == f'{rig.ns}/CAM_FRONT/image_rect_compressed'
    pipe = status(array, f'{NODE}: pipeline')
    assert pipe.hardware_id == NODE and 'no camera set processed yet' in pipe.message
    assert values(pipe)['backend'] == 'torch' and values(pipe)['sets_processed'] == '0'

    # CameraInfo and images at ~10 Hz: every status OK
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    stop = []

    def publishing():
        while not stop:
            rig.publish_set(jpegs, rig.now_ns())
            time.sleep(0.1)
    import threading
    publisher = threading.Thread(target=publishing, daemon=True)
    publisher.start()
    try:
        array = listener.wait_until(lambda lv, a: len(lv) == 7 and set(lv.values()) == {diag.OK}, 60,
                                    'every status OK')
    finally:
        stop.append(True)
        publisher.join(5)
    front = status(array, f'{NODE}: camera CAM_FRONT')
    assert front.message.startswith('receiving at') and 'CameraInfo valid' in front.message
    v = values(front)
    assert v['receiving'] == 'true' and v['stale'] == 'false' and v['camera_info_valid'] == 'true'
    assert float(v['image_rate_hz']) > 0 and int(v['images_received']) > 0 and v['camera_info_size'] == '1600x900'
    pipe = values(status(array, f'{NODE}: pipeline'))
    assert int(pipe['sets_processed']) >= 1 and float(pipe['processing_time_ms']) < 500

    # the cameras stop: stale -> ERROR again, with the silence in the message
    array = listener.wait_until(lambda lv, a: all(lv.get(n) == diag.ERROR for n in camera_names()), 20,
                                'every camera ERROR (stale)')
    front = status(array, f'{NODE}: camera CAM_FRONT')
    assert front.message.startswith('stale: no image for') and values(front)['stale'] == 'true'


def test_diagnostics_pipeline_warn_when_processing_is_slower_than_the_threshold(rig_factory, jpegs):
    rig = rig_factory(FakePipeline(delay=0.3), diagnostics_period=0.2, processing_time_warn_ms=100.0,
                      processing_time_error_ms=5000.0)
    listener = DiagnosticsListener(rig)
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    rig.publish_set(jpegs, rig.now_ns())
    array = listener.wait_until(lambda lv, a: lv.get(f'{NODE}: pipeline') == diag.WARN
                                and 'processing time' in status(a, f'{NODE}: pipeline').message, 30,
                                'the pipeline WARN')
    pipe = status(array, f'{NODE}: pipeline')
    assert re.search(r'processing time \d+ ms > 100 ms', pipe.message), pipe.message
    v = values(pipe)
    assert float(v['processing_time_ms']) >= 300 and v['processing_time_warn_ms'] == '100'
    assert v['sets_processed'] == '1' and rig.node.stats['processed'] == 1


# ------------------------------------------------------------------------------------- the waiting-for log line
def _node_warnings(text, ns):
    """(seconds, message) of the node's WARN lines in captured stderr (rcutils: [WARN] [time] [name]: message)."""
    out = []
    for line in text.splitlines():
        m = re.match(r'\[WARN\] \[(\d+\.\d+)\] \[([^\]]+)\]: (.*)$', line)
        if m and m.group(2) == f'{ns.strip("/")}.{NODE}':
            out.append((float(m.group(1)), m.group(3)))
    return out


def test_waiting_for_cameras_is_one_line_at_most_every_warn_period(rig_factory, capfd):
    """No camera publishes for ~3.5 s with warn_period 1 s: the log says it in one line that lists every missing
    image and CameraInfo, about once a second (before: two warnings per camera each time, twelve lines)."""
    capfd.readouterr()
    rig = rig_factory(FakePipeline(), stale_timeout=0.2, warn_period=1.0)
    err = []

    def captured():
        err.append(capfd.readouterr().err)
        return _node_warnings(''.join(err), rig.ns)
    wait_for(lambda: len(captured()) >= 3, 20, 'three WARN lines of the node on stderr')
    time.sleep(0.5)
    lines = captured()
    waiting = [(t, m) for t, m in lines if m.startswith('waiting for cameras:')]
    assert len(waiting) >= 3 and len(lines) == len(waiting), [m for _, m in lines]  # nothing else warned
    for _, message in waiting:
        for c in CAMERAS:
            assert f'{c} ({rig.ns}/{c}/image_rect_compressed)' in message
            assert f'{c} ({rig.ns}/{c}/camera_info)' in message
        assert 'suppressed' not in message
    gaps = np.diff([t for t, _ in waiting])
    assert np.all(gaps >= 0.95), gaps  # at most one per warn_period
    assert np.all(gaps <= 2.5), gaps  # and restated while still waiting


def test_waiting_line_lists_only_what_is_still_missing(rig_factory, jpegs):
    rig = rig_factory(FakePipeline(), stale_timeout=0.2, warn_period=0.5)
    rig.publish_infos(jpegs, [c for c in CAMERAS if c != 'CAM_BACK'])
    wait_for(lambda: len(rig.node.infos) == 5, 30, 'CameraInfo')
    start = len(rig.warnings)
    wait_for(lambda: any(t.startswith('waiting for cameras') for _, t in rig.warnings[start:]), 10, 'a waiting line')
    (line,) = [t for _, t in rig.warnings[start:] if t.startswith('waiting for cameras')][:1]
    no_info = line.split('no CameraInfo yet from ', 1)[1]
    assert no_info == f'CAM_BACK ({rig.ns}/CAM_BACK/camera_info)'
    assert all(c in line.split(';')[0] for c in CAMERAS)  # still no image from any camera


# ------------------------------------------------------------------------------------------ the level rules
def _camera(**kw):
    base = dict(name='CAM_FRONT', topic='/img', info_topic='/info', age_s=0.05, images=10, images_in_period=10,
                info_valid=True, info_size=(900, 1600))
    base.update(kw)
    return diag.CameraFacts(**base)


def test_camera_status_levels():
    s = diag.camera_status(NODE, _camera(), stale_timeout=1.0, since_start_s=10, period_s=1.0)
    assert (s.level, s.message, s.name, s.hardware_id) == (diag.OK, 'receiving at 10.0 Hz, CameraInfo valid',
                                                          'student_node: camera CAM_FRONT', 'CAM_FRONT')
    assert s.values['camera_info_size'] == '1600x900'
    never = _camera(age_s=None, images=0, images_in_period=0, info_valid=False, info_size=None)
    assert diag.camera_status(NODE, never, 1.0, since_start_s=0.5, period_s=1.0).level == diag.WARN  # starting up
    s = diag.camera_status(NODE, never, 1.0, since_start_s=1.5, period_s=1.0)
    assert s.level == diag.ERROR and s.message == 'no image received on /img; no CameraInfo on /info'
    s = diag.camera_status(NODE, _camera(age_s=2.5), 1.0, 10, 1.0)
    assert s.level == diag.ERROR and s.message == 'stale: no image for 2.5 s on /img' and s.values['stale'] == 'true'
    s = diag.camera_status(NODE, _camera(info_valid=False, info_problem='/info: CameraInfo K is all zeros'), 1.0,
                           0.1, 1.0)
    assert s.level == diag.ERROR and 'invalid CameraInfo on /info' in s.message  # invalid: ERROR even at start
    s = diag.camera_status(NODE, _camera(info_problem='K is all zeros'), 1.0, 10, 1.0)
    assert s.level == diag.WARN and 'the previous one is used' in s.message
    s = diag.camera_status(NODE, _camera(refused_in_period=2, unusable_in_period=1), 1.0, 10, 1.0)
    assert s.level == diag.WARN and '2 image(s) refused' in s.message and '1 unusable' in s.message


def test_pipeline_status_levels():
    def status_of(**kw):
        facts = diag.PipelineFacts(backend='torch', device='cpu', processed=5, processing_ms=50.0, **kw)
        return diag.pipeline_status(NODE, facts, warn_ms=100.0, error_ms=200.0, dropped_warn_per_s=2.0)
    assert status_of().level == diag.OK and status_of().message == '5 sets processed, last in 50 ms'
    s = diag.pipeline_status(NODE, diag.PipelineFacts('torch', 'cpu', processed=1, processing_ms=150.0), 100.0,
                             200.0, 2.0)
    assert s.level == diag.WARN and s.message == 'processing time 150 ms > 100 ms'
    s = diag.pipeline_status(NODE, diag.PipelineFacts('torch', 'cpu', processed=1, processing_ms=250.0), 100.0,
                             200.0, 2.0)
    assert s.level == diag.ERROR and s.message == 'processing time 250 ms > 200 ms'
    s = status_of(dropped=30, dropped_per_s=3.0)
    assert s.level == diag.WARN and '3.0 sets/s dropped > 2/s' in s.message and s.values['sets_dropped'] == '30'
    assert status_of(dropped_per_s=2.0).level == diag.OK  # at the threshold
    assert status_of(skipped=1, skipped_in_period=1).level == diag.WARN
    assert status_of(skipped=1, skipped_in_period=0).level == diag.OK  # skipped long ago
    idle = diag.pipeline_status(NODE, diag.PipelineFacts('torch', 'cpu'), 100.0, 200.0, 2.0)
    assert idle.level == diag.WARN and idle.message == 'no camera set processed yet'


def test_counters_period_and_processing_time():
    c = diag.Counters()
    c.add('CAM_FRONT', 'images', 3)
    c.processed(120.0, 200.0)
    c.processed(80.0, 150.0)
    period, slowest = c.take_period()
    assert period[('CAM_FRONT', 'images')] == 3 and slowest == 120.0
    period, slowest = c.take_period()
    assert period == {} and slowest == 80.0  # nothing new: the last one
    assert c.total('CAM_FRONT', 'images') == 3 and c.total(None, 'processed') == 2 and c.last_latency_ms == 150.0


def test_to_array_builds_the_message():
    s = diag.Status('student_node: pipeline', 'student_node', diag.ERROR, 'x', {'a': '1'})
    array = diag.to_array([s], TransformStamped().header.stamp)
    (m,) = array.status
    assert m.level == DiagnosticStatus.ERROR and m.name == s.name and m.hardware_id == 'student_node'
    assert [(kv.key, kv.value) for kv in m.values] == [('a', '1')]


def test_sync_ages():
    sync = ApproximateTimeSync(['a', 'b'])
    sync.add('a', 1, None, arrival=100.0)
    assert sync.ages(now=102.5) == {'a': 2.5, 'b': None}


# ------------------------------------------------------------------------------------------ tf2 extrinsics
class _TransformException(Exception):
    pass


class _LookupException(_TransformException):
    pass


def _fake_tf2(answers):
    """A stand-in ``tf2_ros``: Buffer.lookup_transform pops ``answers`` (an exception is raised, else returned)."""
    mod = types.ModuleType('tf2_ros')
    calls = []

    class Buffer:
        def lookup_transform(self, target, source, time):
            calls.append((target, source))
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    mod.Buffer, mod.TransformListener = Buffer, lambda buffer, node: None
    mod.TransformException, mod.LookupException = _TransformException, _LookupException
    return mod, calls


def test_tf_extrinsics_only_the_lookup_is_guarded(monkeypatch):
    import rclpy
    from mapkd_ros.student_node import ExtrinsicsUnavailable, StudentNode
    transform = TransformStamped()
    transform.transform.translation.x = 1.5
    transform.transform.rotation.w = 1.0
    answers = [_LookupException('"base_link" passed to lookupTransform argument target_frame does not exist'),
               RuntimeError('a bug, not a missing transform'), transform]
    mod, calls = _fake_tf2(answers)
    monkeypatch.setitem(sys.modules, 'tf2_ros', mod)
    params = {k: v for k, v in params_from_yaml(config_path('student.yaml')).items()
              if not k.startswith('extrinsics.CAM_BACK.')}
    params['extrinsics_source'] = 'tf'
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=20 + os.getpid() % 70)
    try:
        node = StudentNode(pipeline=FakePipeline(), context=context,
                           parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        try:
            assert 'CAM_BACK' not in node.extrinsics and len(node.extrinsics) == 5
            info = (None, None, (900, 1600), 'cam_back_optical')
            with pytest.raises(ExtrinsicsUnavailable, match='CAM_BACK: no transform cam_back_optical -> base_link: '
                                                            '"base_link" passed'):
                node._extrinsic('CAM_BACK', info)
            with pytest.raises(RuntimeError, match='a bug'):  # not swallowed as "no transform"
                node._extrinsic('CAM_BACK', info)
            m = node._extrinsic('CAM_BACK', info)
            assert m[0, 3] == 1.5 and np.allclose(m[:3, :3], np.eye(3))
            assert node._extrinsic('CAM_BACK', info) is m and len(calls) == 3  # looked up once, then cached
            assert calls[0] == ('base_link', 'cam_back_optical')
            assert node._extrinsic('CAM_FRONT', info) is node.extrinsics['CAM_FRONT']  # parameters: no lookup
            assert len(calls) == 3
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_tf_lookup_failure_skips_the_set_with_a_warning(monkeypatch, rig_factory, jpegs):
    """Through the worker: a set whose camera has no transform yet is skipped with a warning naming the camera and
    the frames; the next set, once tf2 has the transform, is processed."""
    transform = TransformStamped()
    transform.transform.rotation.w = 1.0
    mod, calls = _fake_tf2([_LookupException('frame does not exist')] + [transform])
    monkeypatch.setitem(sys.modules, 'tf2_ros', mod)
    rig = rig_factory(FakePipeline(), extrinsics_source='tf')
    rig.node.extrinsics.pop('CAM_BACK')  # as if no parameters were given for it
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    t = rig.now_ns()
    rig.publish_set(jpegs, t)
    wait_for(lambda: rig.node.stats['skipped'] == 1, 30, 'the set to be skipped')
    assert rig.warned('CAM_BACK: no transform CAM_BACK -> base_link: frame does not exist', 'set skipped')
    rig.publish_set(jpegs, t + 100_000_000)
    wait_for(lambda: rig.markers, 30, 'the MarkerArray')
    assert rig.node.stats['processed'] == 1 and len(calls) == 2 and 'CAM_BACK' in rig.node.extrinsics
