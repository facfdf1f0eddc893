"""MapPrediction -> visualization_msgs/MarkerArray: a DELETEALL, then one LINE_STRIP per polyline.

Namespace and colour follow the class (divider orange, ped_crossing blue, boundary red), so RViz can toggle classes;
points lie on the ground (z = 0) in ``frame_id`` (base_link); every marker carries the camera set's stamp.
"""
from __future__ import annotations

import numpy as np

from mapkd_core.constants import CLASS_NAMES

#: RGBA per class name.
CLASS_COLORS = {
    'divider': (1.0, 0.55, 0.0, 1.0),
    'ped_crossing': (0.15, 0.45, 1.0, 1.0),
    'boundary': (0.9, 0.1, 0.1, 1.0),
}
_FALLBACK_COLOR = (0.8, 0.8, 0.8, 1.0)


def prediction_to_markers(prediction, stamp, frame_id: str = 'base_link', line_width: float = 0.2):
    """One MarkerArray for one prediction: ``markers[0]`` is DELETEALL (clears the previous set), then one LINE_STRIP
    per polyline with at least two points, its confidence in ``text``. ``stamp`` is a builtin_interfaces/Time."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    clear = Marker(action=Marker.DELETEALL)
    clear.header.frame_id = frame_id
    clear.header.stamp = stamp
    markers = [clear]
    colors = {name: ColorRGBA(r=c[0], g=c[1], b=c[2], a=c[3]) for name, c in CLASS_COLORS.items()}
    for i, vec in enumerate(prediction.polylines):
        pts = np.asarray(vec.points, dtype=np.float64)
        if len(pts) < 2 or not np.all(np.isfinite(pts)):
            continue
        name = CLASS_NAMES[vec.cls]
        m = Marker(ns=name, id=i, type=Marker.LINE_STRIP, action=Marker.ADD)
        m.header.frame_id = frame_id
        m.header.stamp = stamp
        m.pose.orientation.w = 1.0
        m.scale.x = float(line_width)
        m.color = colors.get(name) or ColorRGBA(r=_FALLBACK_COLOR[0], g=_FALLBACK_COLOR[1], b=_FALLBACK_COLOR[2],
                                                a=_FALLBACK_COLOR[3])
        m.points = [Point(x=x, y=y, z=0.0) for x, y in pts.tolist()]
        m.text = f'{float(vec.score):.3f}'  # the confidence (unused by RViz for LINE_STRIPs; read by mapkd-demo)
        markers.append(m)
    return MarkerArray(markers=markers)


#: visualization_msgs/Marker constants (the rosbags message classes used to read bags do not carry them)
LINE_STRIP, ADD = 4, 0


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
