"""Message conversions without cv_bridge, CameraInfo and extrinsics, markers, and the node's params file
(no DDS traffic: messages are built and read in memory)."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from mapkd_core.constants import CAMERAS, CLASS_NAMES
from mapkd_core.data.images import load_camera
from mapkd_core.data.vectors import MapVector
from mapkd_core.geometry import scale_intrinsics
from mapkd_core.paths import config_path
from mapkd_core.runtime import MapPrediction
from mapkd_ros.conversions import (ENCODINGS, bytes_to_compressed, camera_info_msg, camera_info_to_k,
                                   check_image_size, compressed_to_rgb, extrinsic_matrix, image_to_rgb,
                                   intrinsics_for, jpeg_reduction, ns_to_stamp, rgb_to_compressed, rgb_to_image,
                                   stamp_to_ns, transform_to_matrix)
from mapkd_core.constants import CLASS_COLORS, GT_ALPHA, class_bgr8
from mapkd_ros.markers import markers_to_vectors, prediction_to_markers


@pytest.fixture(scope='module')
def rgb():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
    img[10:20, 10:40] = (255, 0, 0)  # a red patch: channel order mistakes show
    return img


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_raw_encodings_convert_to_rgb(rgb, encoding):
    msg = rgb_to_image(rgb, encoding)
    assert msg.encoding == encoding and (msg.height, msg.width) == rgb.shape[:2]
    out = image_to_rgb(msg, '/cam/image')
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags['C_CONTIGUOUS']
    if encoding == 'mono8':
        assert np.abs(out[..., 0].astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).max() == 0
        assert (out[..., 0] == out[..., 1]).all()
    else:
        assert np.array_equal(out, rgb)
        assert tuple(out[15, 20]) == (255, 0, 0)


def test_padded_rows_and_plain_objects(rgb):
    h, w, _ = rgb.shape
    step = w * 3 + 7  # rows padded to a larger stride
    data = np.zeros((h, step), np.uint8)
    data[:, :w * 3] = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).reshape(h, -1)
    msg = SimpleNamespace(encoding='bgr8', height=h, width=w, step=step, data=data.tobytes())
    assert np.array_equal(image_to_rgb(msg), rgb)


def test_raw_image_errors_name_the_topic_and_the_problem(rgb):
    msg = rgb_to_image(rgb, 'bgr8')
    msg.encoding = 'yuv422'
    with pytest.raises(ValueError, match=r"/CAM_FRONT/image_rect: unsupported image encoding 'yuv422'"):
        image_to_rgb(msg, '/CAM_FRONT/image_rect')
    msg = rgb_to_image(rgb, 'bgr8')
    msg.height += 5  # data too short for the claimed size
    with pytest.raises(ValueError, match=r'/cam: 10800 data bytes for a 80x50 bgr8 image with step 240'):
        image_to_rgb(msg, '/cam')
    msg = rgb_to_image(rgb, 'rgb8')
    msg.step = 10
    with pytest.raises(ValueError, match='step 10 is smaller than width x channels'):
        image_to_rgb(msg, '/cam')
    with pytest.raises(ValueError, match='empty image'):
        image_to_rgb(SimpleNamespace(encoding='rgb8', height=0, width=0, step=0, data=b''), '/cam')


def test_compressed_jpeg_and_png(rgb):
    png = compressed_to_rgb(rgb_to_compressed(rgb, 'png'), '/cam/compressed')
    assert png[1] == 1 and np.array_equal(png[0], rgb)
    smooth = cv2.GaussianBlur(rgb, (0, 0), 4)  # JPEG is for photographs, not for noise
    smooth[10:20, 10:40] = (255, 0, 0)
    jpg, factor = compressed_to_rgb(rgb_to_compressed(smooth, 'jpeg', quality=95), '/cam/compressed')
    assert factor == 1 and jpg.shape == rgb.shape and np.abs(jpg.astype(int) - smooth).mean() < 4
    assert tuple(jpg[15, 25] // 64) == (3, 0, 0)  # still red: RGB order
    # a PNG is never decoded at reduced size
    assert compressed_to_rgb(rgb_to_compressed(rgb, 'png'), reduce=4)[1] == 1


def test_corrupt_and_foreign_compressed_images_are_clear_errors(rgb):
    rng = np.random.default_rng(1)
    corrupt = bytes_to_compressed(b'\xff\xd8\xff\xe0' + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r'/CAM_BACK/image_rect/compressed: corrupt JPEG image \(5004 bytes'):
        compressed_to_rgb(corrupt, '/CAM_BACK/image_rect/compressed')
    with pytest.raises(ValueError, match='neither JPEG nor PNG'):
        compressed_to_rgb(bytes_to_compressed(b'GIF89a' + bytes(100), 'gif'), '/cam')
    with pytest.raises(ValueError, match='empty compressed image'):
        compressed_to_rgb(bytes_to_compressed(b''), '/cam')


def test_reduced_jpeg_decode_matches_the_training_loader(keyframe):
    """A 1600x900 JPEG needed at 176x64 is decoded at 1/8; with K scaled by intrinsics_for, resizing to the model's
    size gives the same image and intrinsics as the Dataset's loader."""
    cam = keyframe.cameras[1]
    info = camera_info_msg(cam.intrinsic, (cam.height, cam.width))
    k, hw = camera_info_to_k(info, '/CAM_FRONT/camera_info')
    assert hw == (900, 1600) and np.allclose(k, cam.intrinsic)
    factor = jpeg_reduction(hw, (64, 176))
    assert factor == 8 and jpeg_reduction(hw, (128, 352)) == 4 and jpeg_reduction(hw, (900, 1600)) == 1
    assert jpeg_reduction((0, 0), (64, 176)) == 1
    img, used = compressed_to_rgb(bytes_to_compressed(cam.path.read_bytes()), '/CAM_FRONT', factor)
    assert used == 8 and img.shape == (113, 200, 3)
    check_image_size(img.shape[:2], hw, used, '/CAM_FRONT')
    k_img = intrinsics_for(k, used)
    ref_img, ref_k = load_camera(cam.path, cam.intrinsic, (cam.height, cam.width), (64, 176))
    from mapkd_core.data.images import resize_image
    assert np.array_equal(resize_image(img, (64, 176)), ref_img)
    assert np.allclose(scale_intrinsics(k_img, 176 / img.shape[1], 64 / img.shape[0]), ref_k)


def test_image_size_must_match_camera_info():
    check_image_size((900, 1600), (900, 1600))
    check_image_size((113, 200), (900, 1600), 8)
    check_image_size((10, 10), (0, 0))  # CameraInfo without a size accepts any image
    with pytest.raises(ValueError, match='/cam: image is 800x450 but its CameraInfo says 1600x900'):
        check_image_size((450, 800), (900, 1600), 1, '/cam')


def test_camera_info_errors():
    k = np.array([[1000.0, 0, 800], [0, 1000, 450], [0, 0, 1]])
    ok = camera_info_msg(k, (900, 1600))
    assert np.array_equal(camera_info_to_k(ok)[0], k)
    zeros = camera_info_msg(np.zeros((3, 3)), (900, 1600))
    with pytest.raises(ValueError, match='/CAM_BACK/camera_info: CameraInfo K is all zeros'):
        camera_info_to_k(zeros, '/CAM_BACK/camera_info')
    nan = SimpleNamespace(k=[float('nan')] * 9, height=900, width=1600)
    with pytest.raises(ValueError, match='not finite'):
        camera_info_to_k(nan, '/cam')
    negative = SimpleNamespace(k=[-5.0, 0, 1, 0, 5, 1, 0, 0, 1], height=9, width=16)
    with pytest.raises(ValueError, match='fx, fy > 0'):
        camera_info_to_k(negative, '/cam')


def test_stamps_round_trip():
    ns = 1_532_402_927_647_423_000
    stamp = ns_to_stamp(ns)
    assert (stamp.sec, stamp.nanosec) == (1_532_402_927, 647_423_000) and stamp_to_ns(stamp) == ns


def test_params_file_holds_the_bundled_rig(keyframe):
    """config/student.yaml's extrinsics are the bundled real keyframe's calibrated_sensor rows, and every node
    parameter has a value there."""
    params = yaml.safe_load(config_path('student.yaml').read_text())['student_node']['ros__parameters']
    assert params['cameras'] == list(CAMERAS) and params['frame_id'] == 'base_link'
    assert len(params['image_topics']) == len(params['camera_info_topics']) == 6
    for cam in keyframe.cameras:
        e = params['extrinsics'][cam.channel]
        m = extrinsic_matrix(e['translation'], e['rotation'], cam.channel)
        assert np.allclose(m, cam.cam_to_ego, atol=1e-9), cam.channel
    from mapkd_ros import student_node
    assert student_node.__doc__  # importable without DDS


def test_extrinsics_errors_and_tf_transforms():
    with pytest.raises(ValueError, match='extrinsics.CAM_FRONT: extrinsic translation needs 3 values'):
        extrinsic_matrix([1, 2], [1, 0, 0, 0], 'extrinsics.CAM_FRONT')
    with pytest.raises(ValueError, match='quaternion of 4 values'):
        extrinsic_matrix([1, 2, 3], [1, 0, 0], 'cam')
    with pytest.raises(ValueError, match='quaternion is zero'):
        extrinsic_matrix([1, 2, 3], [0, 0, 0, 0], 'cam')
    with pytest.raises(ValueError, match='must be finite'):
        extrinsic_matrix([1, float('inf'), 3], [1, 0, 0, 0], 'cam')
    with pytest.raises(ValueError, match='must be numbers'):
        extrinsic_matrix(['a', 2, 3], [1, 0, 0, 0], 'cam')
    # a tf2 Transform (x, y, z, w order) -> the same matrix as nuScenes' (w, x, y, z)
    q = np.array([0.5, -0.5, 0.5, -0.5])
    tf = SimpleNamespace(translation=SimpleNamespace(x=1.7, y=0.0, z=1.5),
                         rotation=SimpleNamespace(w=q[0], x=q[1], y=q[2], z=q[3]))
    assert np.allclose(transform_to_matrix(tf), extrinsic_matrix([1.7, 0, 1.5], q))
    # camera z (optical axis) points forward: the base_link x axis
    assert np.allclose(extrinsic_matrix([0, 0, 0], q)[:3, 2], [1, 0, 0])


def test_markers_delete_all_then_one_line_strip_per_polyline():
    polylines = [MapVector(1, [[0, 0], [10, 0.5], [20, 1]], 0.9), MapVector(2, [[5, -3], [5, 3]], 0.8),
                 MapVector(3, [[-10, 7], [10, 7]], 0.7), MapVector(3, [[1, 1]], 0.5)]  # one point: not drawable
    stamp = ns_to_stamp(12 * 10 ** 9 + 5)
    array = prediction_to_markers(MapPrediction(polylines, 12.0), stamp, 'base_link', line_width=0.3)
    first, *rest = array.markers
    assert first.action == first.DELETEALL and first.header.frame_id == 'base_link'
    assert len(rest) == 3 and [m.ns for m in rest] == ['divider', 'ped_crossing', 'boundary']
    assert len({m.id for m in rest}) == 3
    for m in array.markers:
        assert m.header.frame_id == 'base_link' and stamp_to_ns(m.header.stamp) == 12 * 10 ** 9 + 5
    for m, vec in zip(rest, polylines):
        assert m.type == m.LINE_STRIP and m.action == m.ADD and m.scale.x == pytest.approx(0.3)
        assert m.pose.orientation.w == 1.0
        assert (m.color.r, m.color.g, m.color.b, m.color.a) == pytest.approx(CLASS_COLORS[vec.class_name])
        assert all(p.z == 0.0 for p in m.points)
    stamp_ns, got = markers_to_vectors(array)
    assert stamp_ns == 12 * 10 ** 9 + 5
    assert [v.class_name for v in got] == ['divider', 'ped_crossing', 'boundary']
    assert np.allclose(got[0].points, polylines[0].points)
    assert [v.score for v in got] == pytest.approx([v.score for v in polylines[:3]])  # carried in text
    assert set(CLASS_COLORS) == set(CLASS_NAMES[1:]) and len(set(CLASS_COLORS.values())) == 3
    empty = prediction_to_markers(MapPrediction([], 0.0), stamp, 'map')
    assert len(empty.markers) == 1 and empty.markers[0].header.frame_id == 'map'



def test_node_markers_bag_markers_and_pictures_share_one_colour_per_class():
    """One colour table: the node's markers (rclpy), a converted bag's ground-truth markers (rosbags types, at
    GT_ALPHA) and the BEV pictures draw each class in the same colour; the bag's markers read back as the map."""
    from mapkd_core.config import GridConfig
    from mapkd_core.eval.pictures import vector_picture
    from mapkd_ros.bag.convert import _Msgs
    from mapkd_ros.bag.topics import TopicMap

    polylines = [MapVector(1, [[0, 0], [10, 0.5]], 0.9), MapVector(2, [[5, -3], [5, 3]], 0.8),
                 MapVector(3, [[-10, 7], [10, 7]], 0.7)]
    node = prediction_to_markers(MapPrediction(polylines, 1.0), ns_to_stamp(10 ** 9), 'base_link').markers[1:]
    msgs = _Msgs(TopicMap())
    raw = msgs.markers(10 ** 9, polylines)
    bag = msgs.ts.deserialize_cdr(raw, 'visualization_msgs/msg/MarkerArray')
    assert [m.ns for m in bag.markers[1:]] == [m.ns for m in node] == ['divider', 'ped_crossing', 'boundary']
    for n, b in zip(node, bag.markers[1:]):
        r, g, bl, a = CLASS_COLORS[n.ns]
        assert (n.color.r, n.color.g, n.color.b, n.color.a) == pytest.approx((r, g, bl, a))
        assert (b.color.r, b.color.g, b.color.b) == pytest.approx((r, g, bl))
        assert b.color.a == pytest.approx(a * GT_ALPHA) and b.scale.x == pytest.approx(n.scale.x)
    _, back = markers_to_vectors(bag)
    assert [v.cls for v in back] == [1, 2, 3] and np.allclose(back[2].points, polylines[2].points)
    grid = GridConfig(xbound=(-30.0, 30.0, 0.5), ybound=(-15.0, 15.0, 0.5))
    for vec in polylines:
        pic = vector_picture([vec], grid, scale=1)
        colours = {tuple(int(c) for c in px) for px in pic.reshape(-1, 3)}
        assert class_bgr8(vec.cls) in colours, vec.class_name
