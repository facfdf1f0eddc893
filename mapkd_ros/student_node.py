"""The ``student_node``: six synchronised cameras in, map polylines (MarkerArray) out.

Subscribes to each camera's image (``sensor_msgs/CompressedImage`` or ``Image``, chosen per topic) and CameraInfo,
synchronises the images by header stamp (:mod:`mapkd_ros.sync`), converts them without cv_bridge
(:mod:`mapkd_ros.conversions`), runs :class:`mapkd_core.runtime.Pipeline` in a worker thread and publishes
(:mod:`mapkd_ros.markers`):

* ``~/map_markers`` (visualization_msgs/MarkerArray): DELETEALL, then one LINE_STRIP per polyline, in ``frame_id``,
  stamped with the camera set's stamp;
* ``~/processing_time_ms`` and ``~/pipeline_latency_ms`` (std_msgs/Float64): worker time for one set, and the time
  from the set's stamp to publication;
* ``~/dropped_sets`` (std_msgs/UInt64): complete sets replaced by a newer one before the worker could take them;
* ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, every ``diagnostics_period``): one status per camera and one for
  the pipeline (:mod:`mapkd_ros.diagnostics`).

Every parameter is declared from ``config/student_node.schema.yaml`` (:mod:`mapkd_ros.params`); a bad value stops
the node with one error line naming the parameter.

The callbacks only file messages; the worker always takes the newest complete set, so nothing queues without bound
when inference is slower than the cameras. Bad input (corrupt or mis-encoded image, wrong size, missing or invalid
CameraInfo, a stamp going backwards, a silent camera) is logged with a throttled warning that names the camera and
topic, the set is skipped, and the node keeps running. While cameras are missing the log says so in one line that
lists them, at most once per ``warn_period``.

    student_node --ros-args --params-file config/student.yaml [-p model:=weights.safetensors]
"""
from __future__ import annotations

import functools
import threading
import traceback
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64, UInt64
from visualization_msgs.msg import MarkerArray

from mapkd_core.cli import EXIT_BAD_INPUT, debug_enabled, one_line
from mapkd_core.constants import CAMERAS
from mapkd_core.errors import MapkdError

from . import DEMO_WEIGHTS
from . import diagnostics as diag
from . import params as schema
from .conversions import (camera_info_to_k, check_image_size, compressed_to_rgb, extrinsic_matrix, image_to_rgb,
                          intrinsics_for, jpeg_reduction, ns_to_stamp, stamp_to_ns, transform_to_matrix)
from .markers import prediction_to_markers
from .params import ConfigurationError
from .sync import ApproximateTimeSync, KeyedThrottle

NODE_NAME = schema.node_name()
#: seconds the worker waits for a missing CameraInfo before it skips a set
INFO_GRACE_S = 0.5
#: warning keys whose repeats restate a state (not new events): no "N more suppressed" count
STATE_KEYS = ('waiting', 'silent')

__all__ = ['ConfigurationError', 'NODE_NAME', 'StudentNode', 'main']


class ExtrinsicsUnavailable(Exception):
    """tf2 has no transform for a camera (yet): the set is skipped with a warning."""


class StudentNode(Node):
    """``pipeline`` (keyword): an object called like :class:`mapkd_core.runtime.Pipeline` (tests inject a slow one);
    by default one is built from the ``model`` / ``backend`` / ``device`` / ``fp16`` / ``onnx`` parameters. Other
    keywords go to ``rclpy.node.Node`` (``context``, ``cli_args``, ``parameter_overrides``, ...)."""

    def __init__(self, pipeline=None, node_name: str = NODE_NAME, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        p = self._params = self._declare_parameters()
        self.cameras = list(p['cameras'])
        self.frame_id = p['frame_id']
        self.image_topics = self._topic_list('image_topics')
        self.info_topics = self._topic_list('camera_info_topics')
        self.compressed = self._compressed_flags(p['compressed'])
        self.extrinsics = self._read_extrinsics()
        qos = self._qos(p['qos'], p['queue_size'])
        try:
            self.sync = ApproximateTimeSync(self.cameras, slop=p['slop'], queue_size=p['queue_size'])
        except ValueError as exc:
            raise ConfigurationError(f'parameters cameras / slop / queue_size: {exc}') from None
        if p['processing_time_error_ms'] < p['processing_time_warn_ms']:
            raise ConfigurationError(f'parameter processing_time_error_ms ({p["processing_time_error_ms"]:g}) must be '
                                     f'at least processing_time_warn_ms ({p["processing_time_warn_ms"]:g})')
        self.pipeline = pipeline if pipeline is not None else self._build_pipeline()
        model_cameras = list(getattr(self.pipeline, 'cameras', CAMERAS))
        if sorted(model_cameras) != sorted(self.cameras):
            raise ConfigurationError(f'parameter cameras {self.cameras} must name the model\'s cameras '
                                     f'{model_cameras}')
        self.model_cameras = model_cameras
        cfg = getattr(self.pipeline, 'cfg', None)
        self.model_hw = (cfg.image.height, cfg.image.width) if cfg is not None else None

        self.throttle = KeyedThrottle(p['warn_period'])
        self.infos: dict[str, tuple] = {}
        self._info_problem: dict[str, str] = {}  # camera -> why its latest CameraInfo was refused
        self.counters = diag.Counters()
        self.stats = {'processed': 0, 'skipped': 0, 'last_latency_ms': None, 'last_processing_ms': None,
                      'last_stamp_ns': None}
        self._started = time.monotonic()
        self._tf_buffer = self._tf_listener = None
        self._tf_errors: tuple = ()
        if p['extrinsics_source'] == 'tf':
            self._start_tf()

        self.pub_markers = self.create_publisher(MarkerArray, '~/map_markers', 5)
        self.pub_processing = self.create_publisher(Float64, '~/processing_time_ms', 10)
        self.pub_latency = self.create_publisher(Float64, '~/pipeline_latency_ms', 10)
        self.pub_dropped = self.create_publisher(UInt64, '~/dropped_sets', 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._subs = []
        for name, topic, info_topic, comp in zip(self.cameras, self.image_topics, self.info_topics, self.compressed):
            self._subs.append(self.create_subscription(CompressedImage if comp else Image, topic,
                                                       functools.partial(self._on_image, name), qos))
            self._subs.append(self.create_subscription(CameraInfo, info_topic,
                                                       functools.partial(self._on_info, name), qos))
        self._health_timer = self.create_timer(1.0, self._check_health)
        self._last_report = (time.monotonic(), 0)  # (when, dropped sets then) of the previous diagnostics
        self._diagnostics_timer = self.create_timer(p['diagnostics_period'], self.publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='student_node_worker', daemon=True)
        self._worker.start()
        kinds = ', '.join(f'{t} ({"CompressedImage" if c else "Image"})'
                          for t, c in zip(self.image_topics, self.compressed))
        self.get_logger().info(f'ready: {len(self.cameras)} cameras [{kinds}], slop {p["slop"]} s, '
                               f'queue {p["queue_size"]}, qos {p["qos"]}, frame {self.frame_id}; '
                               f'waiting for every CameraInfo')

    # ----------------------------------------------------------------------------------------------- parameters
    def _declare(self, spec, name: str | None = None):
        """Declare one parameter from its schema entry and return its value, checked against the schema."""
        name = name or spec.name
        default = spec.default if spec.has_default else None
        try:
            value = self.declare_parameter(name, default, schema.descriptor(spec, name)).value
        except (InvalidParameterTypeException, InvalidParameterValueException):
            # rclpy refused the value (type or range): say it the schema's way, with the value given
            given = getattr(self, '_parameter_overrides', {}).get(name)
            raise ConfigurationError(f'parameter {name} {spec.requirement()}, got '
                                     f'{given.value if given is not None else "a value of another type"!r}') from None
        if value is None and not spec.has_default:
            return None  # not given (the per-camera extrinsics): the caller says what to set
        return spec.check(value, name)

    def _declare_parameters(self) -> dict:
        """Every parameter of the schema except the per-camera ones (declared once the cameras are known)."""
        return {spec.name: self._declare(spec) for spec in schema.load_schema() if not spec.per_camera}

    def _topic_list(self, name: str) -> list[str]:
        topics = list(self._params[name])
        if len(topics) != len(self.cameras):
            raise ConfigurationError(f'parameter {name} has {len(topics)} topics for {len(self.cameras)} cameras '
                                     f'{self.cameras}: give one per camera, in the same order')
        return topics

    def _compressed_flags(self, value) -> list[bool]:
        n = len(self.cameras)
        if isinstance(value, str) and value.lower() == 'auto':
            return [t.rstrip('/').endswith('compressed') for t in self.image_topics]
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return [value.lower() == 'true'] * n
        if isinstance(value, bool):
            return [value] * n
        if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, bool) for v in value):
            return list(value)
        raise ConfigurationError(f"parameter compressed must be 'auto', true, false or {n} bools, got {value!r}")

    def _read_extrinsics(self) -> dict:
        """camera -> 4x4 camera-to-frame_id from extrinsics.<camera>.translation / .rotation (w, x, y, z)."""
        out = {}
        source = self._params['extrinsics_source']
        specs = schema.specs_by_name()
        for cam in self.cameras:
            values = {}
            for part in ('translation', 'rotation'):
                value = self._declare(specs[f'extrinsics.{{camera}}.{part}'], f'extrinsics.{cam}.{part}')
                values[part] = None if value is None else list(value)
            if source == 'tf' and values['translation'] is None and values['rotation'] is None:
                continue
            missing = [k for k, v in values.items() if v is None]
            if missing:
                raise ConfigurationError(
                    f'no extrinsics for {cam}: set extrinsics.{cam}.{" and .".join(missing)} (camera -> '
                    f'{self._params["frame_id"]}, as config/student.yaml does) or extrinsics_source:=tf')
            try:
                out[cam] = extrinsic_matrix(values['translation'], values['rotation'], f'extrinsics.{cam}')
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        return out

    def _build_pipeline(self):
        from mapkd_core.runtime import Pipeline
        p = self._params
        model = p['model'] or (str(DEMO_WEIGHTS) if DEMO_WEIGHTS.is_file() else '')
        if not model:
            raise ConfigurationError('no model: pass the weights with -p model:=<file.safetensors> (or model: in the '
                                     f'params file); the demo weights {DEMO_WEIGHTS} are not installed')
        if not Path(model).expanduser().is_file():
            raise ConfigurationError(f'parameter model: weights file not found: {model}')
        self.get_logger().info(f'loading {model} ({p["backend"]} on {p["device"]}{", fp16" if p["fp16"] else ""})')
        from mapkd_core.errors import MapkdError
        try:
            pipeline = Pipeline(Path(model).expanduser(), backend=p['backend'], device=p['device'], fp16=p['fp16'],
                                onnx=p['onnx'] or None, frame_id=self.frame_id, log=self.get_logger().info)
        except (MapkdError, FileNotFoundError, ValueError) as exc:  # corrupt weights, no GPU, foreign ONNX file
            raise ConfigurationError(f'cannot load the model {model}: {exc}') from None
        # before subscribing: the first camera set must not pay for lazy initialisation (allocators, CUDA kernels)
        t0 = time.perf_counter()
        pipeline.warmup()
        self.get_logger().info(f'model ready (warm-up {1e3 * (time.perf_counter() - t0):.0f} ms)')
        return pipeline

    @staticmethod
    def _qos(name: str, depth: int):
        # the schema allows exactly these two names
        if name == 'sensor_data':
            return qos_profile_sensor_data
        return QoSProfile(depth=max(1, int(depth)), history=HistoryPolicy.KEEP_LAST,
                          reliability=ReliabilityPolicy.RELIABLE)

    def _start_tf(self) -> None:
        try:
            from tf2_ros import Buffer, TransformException, TransformListener
        except ImportError:
            raise ConfigurationError('extrinsics_source is tf but tf2_ros is not installed: use the extrinsics.* '
                                     'parameters (config/student.yaml)') from None
        # tf2's lookup errors (LookupException, ConnectivityException, ExtrapolationException, ... derive from it)
        self._tf_errors = (TransformException,)
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)

    # ------------------------------------------------------------------------------------------------ callbacks
    def warn(self, key, text: str) -> None:
        """A warning limited to one per ``warn_period`` per key (kind of problem, camera)."""
        if self.throttle(key):
            more = self.throttle.take_suppressed(key)
            if key[0] in STATE_KEYS:
                more = 0  # a restated state, not a count of events
            self.get_logger().warning(text + (f' ({more} more like this suppressed)' if more else ''))

    def _on_image(self, name: str, msg) -> None:
        self.counters.add(name, 'images')
        status = self.sync.add(name, stamp_to_ns(msg.header.stamp), msg)
        if status in ('backwards', 'duplicate'):
            self.counters.add(name, 'refused')
            topic = self.image_topics[self.cameras.index(name)]
            self.warn(('stamp', name), f'{name}: image stamp {stamp_to_ns(msg.header.stamp) / 1e9:.3f} s on {topic} '
                                       f'is {"the same as" if status == "duplicate" else "older than"} the previous '
                                       'one: message dropped')
        elif status == 'reset':
            self.warn(('reset', name), f'{name}: image stamps jumped back by more than 1 s (bag restarted?): '
                                       'synchronisation restarted for this camera')

    def _on_info(self, name: str, msg) -> None:
        key = (tuple(msg.k), msg.height, msg.width, msg.header.frame_id)
        cached = self.infos.get(name)
        if cached is not None and cached[0] == key:
            self._info_problem.pop(name, None)
            return
        topic = self.info_topics[self.cameras.index(name)]
        try:
            k, hw = camera_info_to_k(msg, topic)
        except ValueError as exc:
            self._info_problem[name] = str(exc)
            self.warn(('info', name), f'{name}: {exc}; this CameraInfo is ignored')
            return
        self._info_problem.pop(name, None)
        if cached is None:
            self.get_logger().info(f'{name}: CameraInfo received on {topic} ({hw[1]}x{hw[0]})')
        self.infos[name] = (key, k, hw, msg.header.frame_id)

    def camera_facts(self) -> list[diag.CameraFacts]:
        """What is known about each camera now (the log and /diagnostics both report from this)."""
        ages = self.sync.ages()
        return [diag.CameraFacts(name=name, topic=topic, info_topic=info_topic, age_s=ages[name],
                                 images=self.counters.total(name, 'images'), info_valid=name in self.infos,
                                 info_problem=self._info_problem.get(name, ''),
                                 info_size=self.infos[name][2] if name in self.infos else None)
                for name, topic, info_topic in zip(self.cameras, self.image_topics, self.info_topics)]

    def _check_health(self) -> None:
        """Once a second: one warning line for the cameras still missing (no image or no CameraInfo yet), one for
        the cameras that went silent; each at most once per ``warn_period``."""
        timeout = self._params['stale_timeout']
        if time.monotonic() - self._started > timeout:
            facts = self.camera_facts()
            no_image = [f'{f.name} ({f.topic})' for f in facts if f.age_s is None]
            no_info = [f'{f.name} ({f.info_topic})' for f in facts if not f.info_valid]
            if no_image or no_info:
                missing = [f'no image yet from {", ".join(no_image)}' if no_image else '',
                           f'no CameraInfo yet from {", ".join(no_info)}' if no_info else '']
                self.warn(('waiting',), f'waiting for cameras: {"; ".join(m for m in missing if m)}')
            silent = [f'{f.name}: no image for {f.age_s:.1f} s on {f.topic}' for f in facts
                      if f.age_s is not None and f.age_s > timeout]
            if silent:
                self.warn(('silent',), '; '.join(silent) + ': no map until '
                          + ('it publishes' if len(silent) == 1 else 'they publish') + ' again')
        self.pub_dropped.publish(UInt64(data=self.sync.dropped))

    def diagnostic_statuses(self) -> list[diag.Status]:
        """The per-camera and pipeline statuses since the previous call (:mod:`mapkd_ros.diagnostics`)."""
        p = self._params
        now = time.monotonic()
        (last_time, last_dropped), dropped = self._last_report, self.sync.dropped
        elapsed = max(now - last_time, 1e-6)
        self._last_report = (now, dropped)
        period, processing_ms = self.counters.take_period()
        statuses = []
        for f in self.camera_facts():
            f.images_in_period = period.get((f.name, 'images'), 0)
            f.refused_in_period = period.get((f.name, 'refused'), 0)
            f.unusable_in_period = period.get((f.name, 'unusable'), 0)
            statuses.append(diag.camera_status(self.get_name(), f, p['stale_timeout'], now - self._started, elapsed))
        pipe = diag.PipelineFacts(backend=p['backend'], device=p['device'], processed=self.stats['processed'],
                                  skipped=self.stats['skipped'], skipped_in_period=period.get((None, 'skipped'), 0),
                                  processing_ms=processing_ms, latency_ms=self.counters.last_latency_ms,
                                  dropped=dropped, dropped_per_s=(dropped - last_dropped) / elapsed)
        statuses.append(diag.pipeline_status(self.get_name(), pipe, p['processing_time_warn_ms'],
                                             p['processing_time_error_ms'], p['dropped_sets_warn_per_s']))
        return statuses

    def publish_diagnostics(self) -> None:
        self.pub_diagnostics.publish(diag.to_array(self.diagnostic_statuses(), self.get_clock().now().to_msg()))

    # --------------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            synced = self.sync.take(timeout=0.2)
            if synced is None or self._stop.is_set():
                continue
            try:
                self._process(synced)
            except Exception as exc:  # never let one set kill the worker
                self.stats['skipped'] += 1
                self.counters.add(None, 'skipped')
                self.warn(('error', type(exc).__name__), f'set at {synced.stamp_ns / 1e9:.3f} s failed: '
                                                         f'{type(exc).__name__}: {exc}')

    def _skip(self, key, text: str) -> None:
        self.stats['skipped'] += 1
        self.counters.add(None, 'skipped')
        self.warn(key, text + '; set skipped')

    def _camera_input(self, name: str, msg, info):
        """(RGB image, K at its size) of one camera; ValueError naming the topic when it is unusable."""
        i = self.cameras.index(name)
        topic = self.image_topics[i]
        _, k, hw, _ = info
        if self.compressed[i]:
            rgb, factor = compressed_to_rgb(msg, topic, jpeg_reduction(hw, self.model_hw))
        else:
            rgb, factor = image_to_rgb(msg, topic), 1
        check_image_size(rgb.shape[:2], hw, factor, topic)
        return rgb, intrinsics_for(k, factor)

    def _extrinsic(self, name: str, info):
        """Camera -> frame_id 4x4: from the parameters, or looked up once in tf2 (static). ExtrinsicsUnavailable
        when tf2 has no transform yet; ValueError when the transform is not a valid rigid transform."""
        if name in self.extrinsics:
            return self.extrinsics[name]
        from rclpy.time import Time
        camera_frame = info[3]
        try:
            tf = self._tf_buffer.lookup_transform(self.frame_id, camera_frame, Time())
        except self._tf_errors as exc:
            raise ExtrinsicsUnavailable(f'{name}: no transform {camera_frame} -> {self.frame_id}: {exc}') from None
        self.extrinsics[name] = transform_to_matrix(tf.transform)
        return self.extrinsics[name]

    def _process(self, synced) -> None:
        t0 = time.perf_counter()
        images, ks, exts = [], [], []
        # a CameraInfo sent with the first images may still be in flight: give it a moment before skipping the set
        deadline = time.monotonic() + INFO_GRACE_S
        while any(n not in self.infos for n in self.model_cameras) and time.monotonic() < deadline:
            time.sleep(0.01)
        for name in self.model_cameras:
            info = self.infos.get(name)
            if info is None:
                topic = self.info_topics[self.cameras.index(name)]
                self._skip(('no_info', name), f'{name}: no CameraInfo yet on {topic}')
                return
            try:
                rgb, k = self._camera_input(name, synced.payloads[name], info)
            except ValueError as exc:
                self.counters.add(name, 'unusable')
                self._skip(('image', name), str(exc))
                return
            try:
                ext = self._extrinsic(name, info)
            except ExtrinsicsUnavailable as exc:
                self._skip(('tf', name), str(exc))
                return
            except ValueError as exc:  # a transform that is not a valid rotation
                self._skip(('tf', name), f'{name}: transform {info[3]} -> {self.frame_id}: {exc}')
                return
            images.append(rgb)
            ks.append(k)
            exts.append(ext)
        try:
            prediction = self.pipeline(images, ks, exts, stamp=synced.stamp_ns / 1e9)
        except ValueError as exc:
            self._skip(('pipeline', 'input'), f'pipeline refused the set: {exc}')
            return
        markers = prediction_to_markers(prediction, ns_to_stamp(synced.stamp_ns), self.frame_id,
                                        self._params['line_width'])
        if self._stop.is_set():
            return
        self.pub_markers.publish(markers)
        processing_ms = 1e3 * (time.perf_counter() - t0)
        latency_ms = (self.get_clock().now().nanoseconds - synced.stamp_ns) / 1e6
        self.pub_processing.publish(Float64(data=processing_ms))
        self.pub_latency.publish(Float64(data=latency_ms))
        self.pub_dropped.publish(UInt64(data=self.sync.dropped))
        self.stats.update(processed=self.stats['processed'] + 1, last_latency_ms=latency_ms,
                          last_processing_ms=processing_ms, last_stamp_ns=synced.stamp_ns)
        self.counters.processed(processing_ms, latency_ms)

    def destroy_node(self):
        # also called by the context's shutdown, possibly on a node whose __init__ raised part-way
        if getattr(self, '_worker', None) is not None:
            self._stop.set()
            self.sync.close()
            if self._worker.is_alive():
                self._worker.join(timeout=10.0)
        return super().destroy_node()


def main(args=None) -> int:
    from rclpy.executors import ExternalShutdownException
    from rclpy.logging import get_logger
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = StudentNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except MapkdError as exc:
        # bad parameters, weights or calibration: one line (the ROS logger's), exit code 2 like every mapkd command
        # (mapkd_core.cli); MAPKD_DEBUG=1 adds the traceback
        if debug_enabled():
            traceback.print_exc()
        get_logger(NODE_NAME).error(one_line(exc))
        code = EXIT_BAD_INPUT
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    raise SystemExit(main())
