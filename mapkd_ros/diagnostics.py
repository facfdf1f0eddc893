"""Health of the student_node as ``diagnostic_msgs/DiagnosticStatus`` entries on ``/diagnostics``.

One status per camera and one for the pipeline, with the levels of ``diagnostic_msgs`` (OK / WARN / ERROR), a one-line
message and key/values, in the style of Autoware's perception nodes (``<node>: <check>`` names):

* ``student_node: camera <CAM>`` (hardware_id: the camera name): ERROR when no image arrived for longer than
  ``stale_timeout`` (or never, once ``stale_timeout`` has passed since start-up; WARN before that) or when no valid
  CameraInfo is known (sets are skipped without it); WARN when, since the previous report, images were refused (stamp
  not newer than the previous one) or unusable (corrupt, wrong encoding or size), or the last CameraInfo was invalid
  (the previous valid one is still used); else OK with the image rate.
* ``student_node: pipeline`` (hardware_id: the node name): ERROR when processing one set took longer than
  ``processing_time_error_ms``, WARN above ``processing_time_warn_ms`` (the slowest set since the previous report, else
  the last one), when more than ``dropped_sets_warn_per_s`` complete sets per second were replaced before the worker
  took them, when sets were skipped since the previous report, or when no set has been processed yet; else OK.

The level logic is plain Python (:func:`camera_status`, :func:`pipeline_status`, tested without ROS);
:func:`to_array` builds the message.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: 'OK', WARN: 'WARN', ERROR: 'ERROR'}


@dataclass
class Status:
    name: str
    hardware_id: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class CameraFacts:
    """What the node knows about one camera at the moment of a report."""

    name: str
    topic: str
    info_topic: str
    age_s: float | None  # seconds since the last image; None: never received
    images: int = 0  # images received in total
    images_in_period: int = 0
    info_valid: bool = False  # a valid CameraInfo is known (and used)
    info_problem: str = ''  # why the latest CameraInfo was refused ('' when it was fine)
    info_size: tuple[int, int] | None = None  # (height, width) of the CameraInfo in use
    refused_in_period: int = 0  # images whose stamp was not newer than the previous one
    unusable_in_period: int = 0  # corrupt, mis-encoded or mis-sized images


@dataclass
class PipelineFacts:
    backend: str
    device: str
    processed: int = 0
    skipped: int = 0
    skipped_in_period: int = 0
    processing_ms: float | None = None  # slowest since the previous report, else the last one
    latency_ms: float | None = None
    dropped: int = 0
    dropped_per_s: float = 0.0


def _worst(problems: list[tuple[int, str]]) -> int:
    return max((level for level, _ in problems), default=OK)


def camera_status(node: str, f: CameraFacts, stale_timeout: float, since_start_s: float, period_s: float) -> Status:
    problems: list[tuple[int, str]] = []
    starting = since_start_s <= stale_timeout
    if f.age_s is None:
        problems.append((WARN if starting else ERROR,
                         f'{"waiting for the first image" if starting else "no image received"} on {f.topic}'))
    elif f.age_s > stale_timeout:
        problems.append((ERROR, f'stale: no image for {f.age_s:.1f} s on {f.topic}'))
    if not f.info_valid:
        what = f'invalid CameraInfo on {f.info_topic}: {f.info_problem}' if f.info_problem else \
            f'no CameraInfo on {f.info_topic}'
        problems.append((WARN if starting and not f.info_problem else ERROR, what))
    elif f.info_problem:
        problems.append((WARN, f'last CameraInfo refused, the previous one is used: {f.info_problem}'))
    if f.refused_in_period:
        problems.append((WARN, f'{f.refused_in_period} image(s) refused: stamp not newer than the previous one'))
    if f.unusable_in_period:
        problems.append((WARN, f'{f.unusable_in_period} unusable image(s) (see the log)'))
    rate = f.images_in_period / period_s if period_s > 0 else 0.0
    message = '; '.join(text for _, text in problems) or f'receiving at {rate:.1f} Hz, CameraInfo valid'
    values = {'image_topic': f.topic, 'camera_info_topic': f.info_topic,
              'receiving': str(f.age_s is not None and f.age_s <= stale_timeout).lower(),
              'stale': str(f.age_s is not None and f.age_s > stale_timeout).lower(),
              'camera_info_valid': str(f.info_valid).lower(),
              'last_image_age_s': 'never' if f.age_s is None else f'{f.age_s:.3f}',
              'image_rate_hz': f'{rate:.2f}', 'images_received': str(f.images),
              'camera_info_size': f'{f.info_size[1]}x{f.info_size[0]}' if f.info_size else '',
              'images_refused': str(f.refused_in_period), 'images_unusable': str(f.unusable_in_period),
              'stale_timeout_s': f'{stale_timeout:g}'}
    return Status(f'{node}: camera {f.name}', f.name, _worst(problems), message, values)


def pipeline_status(node: str, f: PipelineFacts, warn_ms: float, error_ms: float, dropped_warn_per_s: float) -> Status:
    problems: list[tuple[int, str]] = []
    if f.processing_ms is not None and f.processing_ms > error_ms:
        problems.append((ERROR, f'processing time {f.processing_ms:.0f} ms > {error_ms:g} ms'))
    elif f.processing_ms is not None and f.processing_ms > warn_ms:
        problems.append((WARN, f'processing time {f.processing_ms:.0f} ms > {warn_ms:g} ms'))
    if f.dropped_per_s > dropped_warn_per_s:
        problems.append((WARN, f'{f.dropped_per_s:.1f} sets/s dropped > {dropped_warn_per_s:g}/s (the model is '
                               'slower than the cameras)'))
    if f.skipped_in_period:
        problems.append((WARN, f'{f.skipped_in_period} set(s) skipped (see the log)'))
    if f.processed == 0:
        problems.append((WARN, 'no camera set processed yet'))
    message = '; '.join(text for _, text in problems) or \
        f'{f.processed} sets processed, last in {f.processing_ms:.0f} ms'
    ms = (lambda v: '' if v is None else f'{v:.1f}')
    values = {'backend': f.backend, 'device': f.device, 'sets_processed': str(f.processed),
              'sets_skipped': str(f.skipped), 'processing_time_ms': ms(f.processing_ms),
              'pipeline_latency_ms': ms(f.latency_ms), 'sets_dropped': str(f.dropped),
              'sets_dropped_per_s': f'{f.dropped_per_s:.2f}', 'processing_time_warn_ms': f'{warn_ms:g}',
              'processing_time_error_ms': f'{error_ms:g}', 'dropped_sets_warn_per_s': f'{dropped_warn_per_s:g}'}
    return Status(f'{node}: pipeline', node, _worst(problems), message, values)


class Counters:
    """Thread-safe event counts (key, kind) -> n, in total and since the last :meth:`take_period`, and the
    processing times since then. The subscription callbacks and the worker thread count; the report takes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._total: dict = defaultdict(int)
        self._period: dict = defaultdict(int)
        self._times: list[float] = []
        self.last_ms: float | None = None
        self.last_latency_ms: float | None = None

    def add(self, key, kind: str, n: int = 1) -> None:
        with self._lock:
            self._total[key, kind] += n
            self._period[key, kind] += n

    def processed(self, processing_ms: float, latency_ms: float) -> None:
        with self._lock:
            self._total[None, 'processed'] += 1
            self._times.append(processing_ms)
            self.last_ms, self.last_latency_ms = processing_ms, latency_ms

    def total(self, key, kind: str) -> int:
        with self._lock:
            return self._total.get((key, kind), 0)

    def take_period(self) -> tuple[dict, float | None]:
        """(counts since the previous call, the slowest processing time since then or the last one) and reset."""
        with self._lock:
            period, self._period = dict(self._period), defaultdict(int)
            times, self._times = self._times, []
            return period, (max(times) if times else self.last_ms)


def to_array(statuses: list[Status], stamp):
    """diagnostic_msgs/DiagnosticArray of ``statuses`` stamped ``stamp`` (builtin_interfaces/Time)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    array = DiagnosticArray()
    array.header.stamp = stamp
    for s in statuses:
        array.status.append(DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message,
                                             hardware_id=s.hardware_id,
                                             values=[KeyValue(key=k, value=v) for k, v in s.values.items()]))
    return array
