"""ROS messages <-> numpy, without cv_bridge: camera images, CameraInfo, stamps and extrinsics.

Past this module the node holds no ROS types: images are RGB uint8 (H, W, 3), intrinsics 3x3, extrinsics 4x4
camera -> base_link. Functions read message fields by name only (duck typing), so they are tested with plain objects;
the few that build messages import the message packages when called.

Every error names the topic (or camera) and what is wrong, so the node can log it as is: a :class:`MessageError`
for an image that cannot be used, a ``CalibrationError`` for intrinsics / extrinsics, a ``UsageError`` for a bad
argument; all three are ``MapkdError`` and ``ValueError``.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from mapkd_core.errors import CalibrationError, MapkdError, UsageError
from mapkd_core.geometry import make_transform, scale_intrinsics, validate_calibration

NS = 1_000_000_000


class MessageError(MapkdError, ValueError):
    """An image message cannot be used: unsupported encoding, sizes that do not add up, bytes that do not decode,
    an image whose size differs from its CameraInfo's (the topic is named)."""


#: Raw encodings we convert: name -> (channels, OpenCV conversion to RGB or None when already RGB).
ENCODINGS = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
}
_JPEG_MAGIC = b'\xff\xd8'
_PNG_MAGIC = b'\x89PNG'
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


# ------------------------------------------------------------------------------------------------------- stamps
def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time
    ns = int(ns)
    return Time(sec=ns // NS, nanosec=ns % NS)


# ------------------------------------------------------------------------------------------------------- images
def _buffer(data) -> np.ndarray:
    """uint8 view of a message's ``data`` (array.array('B'), bytes, a list or a numpy array)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_rgb(msg, topic: str = 'image') -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8) -> RGB uint8 (H, W, 3). Rows may be padded (``step``).

    Raises MessageError naming the topic for an unknown encoding or a size that does not add up."""
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise MessageError(f'{topic}: unsupported image encoding {msg.encoding!r} (supported: '
                           f'{", ".join(ENCODINGS)}; compressed images go on a CompressedImage topic)')
    channels, code = ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise MessageError(f'{topic}: empty image ({w}x{h}, {encoding})')
    if step < w * channels:
        raise MessageError(f'{topic}: step {step} is smaller than width x channels = {w} x {channels} ({encoding})')
    data = _buffer(msg.data)
    if data.size < step * h:
        raise MessageError(f'{topic}: {data.size} data bytes for a {w}x{h} {encoding} image with step {step} '
                           f'(expected {step * h})')
    img = data[:step * h].reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    if code is None:
        return np.ascontiguousarray(img)
    if channels == 1:
        img = img[:, :, 0]
    return cv2.cvtColor(img, code)


def rgb_to_image(rgb: np.ndarray, encoding: str = 'rgb8', stamp=None, frame_id: str = ''):
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image in ``encoding`` (for tests, the benchmark and tools)."""
    import array

    from sensor_msgs.msg import Image
    rgb = np.asarray(rgb, dtype=np.uint8)
    back = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'mono8': cv2.COLOR_RGB2GRAY, 'rgba8': cv2.COLOR_RGB2RGBA,
            'bgra8': cv2.COLOR_RGB2BGRA}
    if encoding not in back:
        raise UsageError(f'cannot encode {encoding!r}: use one of {", ".join(back)}')
    img = rgb if back[encoding] is None else cv2.cvtColor(rgb, back[encoding])
    img = np.ascontiguousarray(img)
    msg = Image(height=img.shape[0], width=img.shape[1], encoding=encoding, is_bigendian=0,
                step=img.shape[1] * (1 if img.ndim == 2 else img.shape[2]))
    msg.data = array.array('B', img.tobytes())
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def jpeg_reduction(original_hw: tuple[int, int] | None, target_hw: tuple[int, int] | None) -> int:
    """The largest libjpeg DCT reduction (1, 2, 4, 8) that keeps an ``original_hw`` image at least ``target_hw``."""
    if not original_hw or not target_hw or min(original_hw) <= 0:
        return 1
    for f in (8, 4, 2):
        if original_hw[0] // f >= target_hw[0] and original_hw[1] // f >= target_hw[1]:
            return f
    return 1


def compressed_to_rgb(msg, topic: str = 'image', reduce: int = 1) -> tuple[np.ndarray, int]:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> (RGB uint8 (H, W, 3), reduction factor used).

    A JPEG is decoded directly at 1/``reduce`` size (libjpeg's DCT scaling maps pixel u to (u + 0.5) / f - 0.5, so
    the intrinsics scale by exactly 1/f); a PNG always at full size. Raises MessageError naming the topic for bytes that
    do not decode."""
    data = _buffer(msg.data)
    if data.size == 0:
        raise MessageError(f'{topic}: empty compressed image (format {msg.format!r})')
    head = data[:4].tobytes()
    is_jpeg = head.startswith(_JPEG_MAGIC)
    if not is_jpeg and not head.startswith(_PNG_MAGIC):
        raise MessageError(f'{topic}: compressed image is neither JPEG nor PNG (format {msg.format!r}, first bytes '
                           f'{head.hex()})')
    factor = reduce if is_jpeg and reduce in _REDUCED else 1
    img = cv2.imdecode(data, _REDUCED[factor])
    if img is None or img.size == 0:
        raise MessageError(f'{topic}: corrupt {"JPEG" if is_jpeg else "PNG"} image ({data.size} bytes, format '
                           f'{msg.format!r}): it does not decode')
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), factor
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), factor


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90, stamp=None, frame_id: str = ''):
    """RGB uint8 -> sensor_msgs/CompressedImage (for tests, the benchmark and tools)."""
    ext = {'jpeg': '.jpg', 'jpg': '.jpg', 'png': '.png'}[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == '.jpg' else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise UsageError(f'cannot encode the image as {fmt}')
    return bytes_to_compressed(buf.tobytes(), 'png' if ext == '.png' else 'jpeg', stamp, frame_id)


def bytes_to_compressed(data: bytes, fmt: str = 'jpeg', stamp=None, frame_id: str = ''):
    """Encoded image bytes (e.g. a JPEG file as stored by nuScenes) -> sensor_msgs/CompressedImage."""
    import array

    from sensor_msgs.msg import CompressedImage
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', data)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


# ---------------------------------------------------------------------------------------------------- calibration
def camera_info_to_k(msg, topic: str = 'camera_info') -> tuple[np.ndarray, tuple[int, int]]:
    """sensor_msgs/CameraInfo -> (K 3x3 float64, (height, width)); (0, 0) when the size is not given.

    Raises CalibrationError naming the topic when K is all zeros (an uncalibrated camera), not finite or not a pinhole
    matrix (fx, fy > 0, last row 0 0 1)."""
    k = np.asarray(list(msg.k), dtype=np.float64)
    if k.size != 9:
        raise CalibrationError(f'{topic}: CameraInfo K must have 9 values, got {k.size}')
    k = k.reshape(3, 3)
    if not np.all(np.isfinite(k)):
        raise CalibrationError(f'{topic}: CameraInfo K is not finite: {k.tolist()}')
    if not np.any(k):
        raise CalibrationError(f'{topic}: CameraInfo K is all zeros (camera not calibrated)')
    try:
        validate_calibration(k, np.eye(4), topic)
    except CalibrationError as exc:
        raise CalibrationError(f'{exc} (CameraInfo)') from None
    return k, (int(msg.height), int(msg.width))


def camera_info_msg(k: np.ndarray, hw: tuple[int, int], stamp=None, frame_id: str = ''):
    """A sensor_msgs/CameraInfo with intrinsics ``k`` for an image of size ``hw`` (no distortion: rectified)."""
    from sensor_msgs.msg import CameraInfo
    k = np.asarray(k, dtype=np.float64)
    p = np.zeros((3, 4))
    p[:, :3] = k
    msg = CameraInfo(height=int(hw[0]), width=int(hw[1]), distortion_model='plumb_bob', d=[0.0] * 5,
                     k=k.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(), p=p.reshape(-1).tolist())
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def check_image_size(image_hw: tuple[int, int], info_hw: tuple[int, int], factor: int = 1,
                     topic: str = 'image') -> None:
    """Raise MessageError when an image (decoded at 1/``factor``) does not have its CameraInfo's size.

    A CameraInfo without a size ((0, 0)) accepts any image."""
    if not info_hw or info_hw[0] <= 0 or info_hw[1] <= 0:
        return
    expected = (math.ceil(info_hw[0] / factor), math.ceil(info_hw[1] / factor))
    if tuple(image_hw[:2]) != expected:
        full = (image_hw[0] * factor, image_hw[1] * factor)
        raise MessageError(f'{topic}: image is {full[1]}x{full[0]} but its CameraInfo says {info_hw[1]}x{info_hw[0]}')


def intrinsics_for(k: np.ndarray, factor: int) -> np.ndarray:
    """K of an image decoded at 1/``factor`` of the size that ``k`` was calibrated at."""
    return scale_intrinsics(k, 1.0 / factor, 1.0 / factor) if factor > 1 else np.asarray(k, dtype=np.float64)


def extrinsic_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float], name: str = 'camera') -> np.ndarray:
    """Camera -> base_link 4x4 from a translation (x, y, z) metres and a quaternion (w, x, y, z), as nuScenes'
    calibrated_sensor. Raises CalibrationError naming the camera for wrong lengths, non-finite values or a zero
    quaternion."""
    try:
        t = [float(v) for v in translation]
        q = [float(v) for v in rotation_wxyz]
    except (TypeError, ValueError):
        raise CalibrationError(f'{name}: extrinsic translation and rotation must be numbers, got {translation!r} '
                               f'and {rotation_wxyz!r}') from None
    if len(t) != 3:
        raise CalibrationError(f'{name}: extrinsic translation needs 3 values (x, y, z), got {len(t)}: {t}')
    if len(q) != 4:
        raise CalibrationError(f'{name}: extrinsic rotation needs a quaternion of 4 values (w, x, y, z), '
                               f'got {len(q)}: {q}')
    if not all(math.isfinite(v) for v in t + q):
        raise CalibrationError(f'{name}: extrinsic values must be finite, got translation {t}, rotation {q}')
    if math.sqrt(sum(v * v for v in q)) < 1e-6:
        raise CalibrationError(f'{name}: extrinsic rotation quaternion is zero')
    m = make_transform(np.asarray(q), np.asarray(t))
    validate_calibration(np.eye(3), m, name)
    return m


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform (translation x, y, z; rotation x, y, z, w) -> 4x4 (e.g. from a tf2 lookup)."""
    tr, r = transform.translation, transform.rotation
    return extrinsic_matrix((tr.x, tr.y, tr.z), (r.w, r.x, r.y, r.z), 'tf')
