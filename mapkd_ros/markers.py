"""Map polylines <-> visualization_msgs/MarkerArray: one description, two message libraries.

``polyline_markers`` describes the MarkerArray of a set of polylines once, as plain values: a DELETEALL, then one
LINE_STRIP per polyline with at least two finite points, namespace = class name (RViz can toggle classes), colour
from ``mapkd_core.constants.CLASS_COLORS`` (the same in every picture), points on the ground (z = 0) in ``frame_id``,
the confidence in ``text``. The node builds rclpy messages from it (``prediction_to_markers``) and the bag converter
rosbags messages (``mapkd_ros.bag.convert``); ``markers_to_vectors`` reads either back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapkd_core.constants import CLASS_COLORS, CLASS_NAMES

#: visualization_msgs/Marker constants (the rosbags message classes used to read bags do not carry them)
LINE_STRIP, ADD, DELETEALL = 4, 0, 3


@dataclass(frozen=True)
class MarkerSpec:
    """One marker of a map MarkerArray, independent of the message library."""
    ns: str
    id: int
    type: int
    action: int
    width: float
    rgba: tuple[float, float, float, float]
    points: list  # [(x, y), ...] in metres, z = 0
    text: str


def polyline_markers(vectors, line_width: float = 0.2, alpha: float = 1.0, scores: bool = True) -> list[MarkerSpec]:
    """The markers of a map: ``[DELETEALL, LINE_STRIP per polyline]``; ``alpha`` scales the class colour's alpha
    (ground truth: ``GT_ALPHA``); ``scores`` writes each polyline's confidence into ``text``."""
    out = [MarkerSpec('', 0, LINE_STRIP, DELETEALL, 0.0, (0.0, 0.0, 0.0, 0.0), [], '')]
    for i, vec in enumerate(vectors):
        pts = np.asarray(vec.points, dtype=np.float64)
        if len(pts) < 2 or not np.all(np.isfinite(pts)):
            continue
        name = CLASS_NAMES[vec.cls]
        r, g, b, a = CLASS_COLORS[name]
        out.append(MarkerSpec(name, i, LINE_STRIP, ADD, float(line_width), (r, g, b, a * alpha),
                              [(float(x), float(y)) for x, y in pts[:, :2].tolist()],
                              f'{float(vec.score):.3f}' if scores else ''))
    return out


def prediction_to_markers(prediction, stamp, frame_id: str = 'base_link', line_width: float = 0.2):
    """The node's MarkerArray (rclpy messages) for one prediction; ``stamp`` is a builtin_interfaces/Time. The
    confidence in ``text`` is unused by RViz for LINE_STRIPs and read by mapkd-demo."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    markers = []
    for spec in polyline_markers(prediction.polylines, line_width):
        m = Marker(ns=spec.ns, id=spec.id, type=spec.type, action=spec.action, text=spec.text)
        m.header.frame_id = frame_id
        m.header.stamp = stamp
        m.pose.orientation.w = 1.0
        m.scale.x = spec.width
        m.color = ColorRGBA(r=spec.rgba[0], g=spec.rgba[1], b=spec.rgba[2], a=spec.rgba[3])
        m.points = [Point(x=x, y=y, z=0.0) for x, y in spec.points]
        markers.append(m)
    return MarkerArray(markers=markers)


def markers_to_vectors(array) -> tuple[int | None, list]:
    """(stamp ns of the first marker, MapVectors) of a MarkerArray, an rclpy message or one read from a bag with
    rosbags: one MapVector per LINE_STRIP whose ``ns`` is a class name, its score from ``text`` (1.0 when absent,
    as in the ground-truth markers of a converted bag)."""
    from mapkd_core.data.vectors import MapVector

    from .conversions import stamp_to_ns
    stamp = stamp_to_ns(array.markers[0].header.stamp) if array.markers else None
    out = []
    for m in array.markers:
        if m.type == LINE_STRIP and m.action == ADD and m.ns in CLASS_NAMES[1:] and len(m.points) >= 2:
            try:
                score = float(m.text) if m.text else 1.0
            except ValueError:
                score = 1.0
            out.append(MapVector(CLASS_NAMES.index(m.ns), [[p.x, p.y] for p in m.points], score))
    return stamp, out
