"""Topic names and frame ids of the bags that ``mapkd-bag-convert`` writes, and the YAML override loader.

The defaults follow the convention of Foxglove's nuScenes converters (``nuscenes2mcap`` / ``nuscenes2bag``)::

    /CAM_FRONT/image_rect_compressed   sensor_msgs/msg/CompressedImage   (one per camera channel)
    /CAM_FRONT/camera_info             sensor_msgs/msg/CameraInfo
    /LIDAR_TOP                         sensor_msgs/msg/PointCloud2
    /tf                                tf2_msgs/msg/TFMessage            map -> base_link, one per ego pose
    /tf_static                         tf2_msgs/msg/TFMessage            base_link -> each sensor, once per scene

and adds ``/map_gt/markers`` (visualization_msgs/msg/MarkerArray, the ground-truth map per keyframe in
``base_link``). Frames: ``map`` (the nuScenes global frame), ``base_link`` (the nuScenes ego frame, REP-103: x
forward, y left, z up) and one frame per sensor named after its channel (``CAM_FRONT``, ``LIDAR_TOP``). A camera
frame is the nuScenes camera frame (x right, y down, z forward), which is the ROS optical-frame convention
(REP-103 ``*_optical_frame``), so ``CAM_FRONT`` can be used as-is by anything that expects an optical frame.

A YAML file given with ``--topics`` overrides any subset of the keys of ``config/bag_topics.yaml``. Camera and
LiDAR topics are templates in which ``{channel}`` is replaced by the channel name. A topic set to ``null`` (or an
empty string) is not written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import yaml

from mapkd_core.errors import ConfigError, ConfigNotFoundError

#: ROS 2 topic-name rule for the fully qualified names we write (after ``{channel}`` substitution).
_TOPIC_RE = re.compile(r'^(/[A-Za-z_][A-Za-z0-9_]*)+$')
_FRAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_/]*$')


@dataclass(frozen=True)
class TopicMap:
    """Where each stream of a converted bag goes; ``None`` disables a stream."""

    camera_image: Optional[str] = '/{channel}/image_rect_compressed'
    camera_info: Optional[str] = '/{channel}/camera_info'
    lidar: Optional[str] = '/{channel}'
    tf: Optional[str] = '/tf'
    tf_static: Optional[str] = '/tf_static'
    map_gt: Optional[str] = '/map_gt/markers'
    #: frame ids: the global (map) frame and the ego frame; sensor frames are their channel names
    global_frame: str = 'map'
    ego_frame: str = 'base_link'

    def image_topic(self, channel: str) -> Optional[str]:
        return self.camera_image.format(channel=channel) if self.camera_image else None

    def info_topic(self, channel: str) -> Optional[str]:
        return self.camera_info.format(channel=channel) if self.camera_info else None

    def lidar_topic(self, channel: str) -> Optional[str]:
        return self.lidar.format(channel=channel) if self.lidar else None

    def validate(self, where: str, channels=('CAM_FRONT', 'LIDAR_TOP')) -> None:
        """Check every name; ``where`` prefixes the messages (the file)."""
        topic_keys = ('camera_image', 'camera_info', 'lidar', 'tf', 'tf_static', 'map_gt')
        resolved: dict[str, str] = {}
        for key in topic_keys:
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(f'{where}{key}: expected a topic name (string) or null, got {value!r}')
            templated = key in ('camera_image', 'camera_info', 'lidar')
            if key in ('camera_image', 'camera_info') and '{channel}' not in value:
                raise ConfigError(f'{where}{key}: must contain {{channel}} (one topic per camera), got {value!r}')
            if not templated and '{' in value:
                raise ConfigError(f'{where}{key}: only camera and LiDAR topics may use {{channel}}, got {value!r}')
            if key == 'lidar':
                names = [c for c in channels if c.startswith('LIDAR')] or ['LIDAR_TOP']
            elif templated:
                names = [c for c in channels if not c.startswith('LIDAR')] or ['CAM_FRONT']
            else:
                names = ['']
            for ch in names:
                try:
                    name = value.format(channel=ch)
                except (KeyError, IndexError, ValueError) as exc:
                    raise ConfigError(f'{where}{key}: bad template {value!r} (only {{channel}} is known): '
                                      f'{exc}') from None
                if not _TOPIC_RE.match(name):
                    raise ConfigError(f'{where}{key}: {name!r} is not a valid absolute ROS 2 topic name '
                                      '(start with "/", then letters, digits and "_" separated by "/")')
                if name in resolved:
                    raise ConfigError(f'{where}{key}: topic {name!r} is also used by {resolved[name]}')
                resolved[name] = key
        for key in ('global_frame', 'ego_frame'):
            value = getattr(self, key)
            if not isinstance(value, str) or not _FRAME_RE.match(value):
                raise ConfigError(f'{where}{key}: expected a frame id (letters, digits, "_"), got {value!r}')
        if self.global_frame == self.ego_frame:
            raise ConfigError(f'{where}global_frame and ego_frame must differ, both are {self.ego_frame!r}')


DEFAULT_TOPICS = TopicMap()


def load_topic_map(path: str | os.PathLike | None = None, channels=('CAM_FRONT', 'LIDAR_TOP')) -> TopicMap:
    """The default :class:`TopicMap`, with the keys of a YAML file (if given) laid over it.

    Raises :class:`~mapkd_core.errors.ConfigError` naming the file and key for a missing file, bad YAML, an unknown
    key, a wrong type, an invalid or duplicated topic name.
    """
    if path is None:
        tm = DEFAULT_TOPICS
        tm.validate('default topics: ', channels)
        return tm
    path = Path(path)
    where = f'{path}: '
    if not path.is_file():
        raise ConfigNotFoundError(f'topic mapping file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as exc:
        raise ConfigError(f'{where}not valid YAML: {exc}') from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{where}expected a mapping of stream name -> topic, got {type(data).__name__}')
    known = [f.name for f in fields(TopicMap)]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f'{where}unknown key(s) {unknown}; known keys: {known}')
    values = {k: (None if v == '' else v) for k, v in data.items()}
    for key in ('global_frame', 'ego_frame'):
        if key in values and values[key] is None:
            raise ConfigError(f'{where}{key}: a frame id is required, got null')
    tm = replace(DEFAULT_TOPICS, **values)
    tm.validate(where, channels)
    return tm
