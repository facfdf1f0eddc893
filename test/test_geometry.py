"""Geometry conventions: REP-103 ego frame, the BEV index <-> metre mapping, transforms and intrinsics."""
import numpy as np
import pytest

from mapkd_core.config import GridConfig
from mapkd_core.constants import CAMERAS, CLASS_INDEX, CLASS_NAMES
from mapkd_core.geometry import (bev_affine, cell_centres, in_grid, index_to_metres, invert_transform,
                                 make_transform, matrix_to_quaternion, metres_to_index, metres_to_pixel,
                                 project_points, quaternion_to_matrix, scale_intrinsics, validate_calibration)


def test_class_order_is_pinned_by_name():
    assert CLASS_NAMES == ('background', 'divider', 'ped_crossing', 'boundary')
    assert CLASS_INDEX['divider'] == 1 and CLASS_INDEX['ped_crossing'] == 2 and CLASS_INDEX['boundary'] == 3


def test_camera_order_is_fixed():
    assert CAMERAS == ('CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_LEFT', 'CAM_BACK',
                       'CAM_BACK_RIGHT')


def test_point_10m_ahead_5m_left_lands_in_the_expected_cell():
    g = GridConfig()  # x in [-30, 30] (columns), y in [-15, 15] (rows), 0.15 m
    row, col = metres_to_index(g, 10.0, 5.0)
    # column: (10 - (-30)) / 0.15 = 266.67 -> cell 266; row: (5 - (-15)) / 0.15 = 133.33 -> cell 133
    assert (int(row), int(col)) == (133, 266)
    x, y = index_to_metres(g, row, col)
    # the centre of that cell: x = -30 + 266.5 * 0.15 = 9.975, y = -15 + 133.5 * 0.15 = 5.025
    assert x == pytest.approx(9.975) and y == pytest.approx(5.025)


def test_rep103_orientation_forward_and_left_are_increasing_indices():
    g = GridConfig()
    r0, c0 = metres_to_index(g, 0.0, 0.0)
    r_fwd, c_fwd = metres_to_index(g, 5.0, 0.0)
    r_left, c_left = metres_to_index(g, 0.0, 5.0)
    assert c_fwd > c0 and r_fwd == r0      # forward (+x) -> larger column
    assert r_left > r0 and c_left == c0    # left (+y) -> larger row
    assert (int(r0), int(c0)) == (100, 200)  # the ego sits at the centre of the 200 x 400 grid


def test_index_metre_round_trip_on_a_non_default_grid():
    g = GridConfig(xbound=(-10.0, 50.0, 0.25), ybound=(-20.0, 20.0, 0.5))
    rows, cols = np.meshgrid(np.arange(g.H), np.arange(g.W), indexing='ij')
    x, y = index_to_metres(g, rows, cols)
    r2, c2 = metres_to_index(g, x, y)
    assert np.array_equal(r2, rows) and np.array_equal(c2, cols)
    assert cell_centres(g).shape == (g.H, g.W, 2)
    assert not in_grid(g, *metres_to_index(g, -10.1, 0.0))
    assert in_grid(g, *metres_to_index(g, -9.9, 0.0))
    # pixel coordinates put the centre of cell (0, 0) at (u, v) = (0, 0)
    u, v = metres_to_pixel(g, -10.0 + 0.125, -20.0 + 0.25)
    assert (u, v) == pytest.approx((0.0, 0.0))
    assert bev_affine(g)[0, 0] == pytest.approx(4.0)


def test_quaternion_matrix_round_trip_and_inverse():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        r = quaternion_to_matrix(q)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1.0)
        assert np.allclose(matrix_to_quaternion(r), q, atol=1e-9)
        t = make_transform(q, rng.normal(size=3))
        assert np.allclose(invert_transform(t) @ t, np.eye(4), atol=1e-12)
    # yaw of 90 degrees about z maps x onto y
    r = quaternion_to_matrix([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    assert np.allclose(r @ [1, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError, match='invalid quaternion'):
        quaternion_to_matrix([0, 0, 0, 0])


def test_scaled_intrinsics_project_consistently():
    k = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1.0]])
    sx, sy = 352 / 1600, 128 / 900
    k2 = scale_intrinsics(k, sx, sy)
    cam_to_ego = make_transform([0.5, -0.5, 0.5, -0.5], [1.7, 0.0, 1.5])  # optical z -> ego x
    pts = np.array([[10.0, 1.0, 0.0], [20.0, -3.0, 1.0], [5.0, 0.5, -1.0]])
    uv, depth = project_points(pts, k, cam_to_ego)
    uv2, _ = project_points(pts, k2, cam_to_ego)
    assert np.all(depth > 0)
    # a resize maps pixel u to (u + 0.5) * s - 0.5
    assert np.allclose(uv2[:, 0], (uv[:, 0] + 0.5) * sx - 0.5)
    assert np.allclose(uv2[:, 1], (uv[:, 1] + 0.5) * sy - 0.5)


def test_validate_calibration_names_the_camera():
    good_k = np.array([[1000.0, 0, 800], [0, 1000, 450], [0, 0, 1]])
    validate_calibration(good_k, np.eye(4), 'CAM_FRONT')
    with pytest.raises(ValueError, match='CAM_BACK: intrinsic'):
        validate_calibration(np.zeros((3, 3)), np.eye(4), 'CAM_BACK')
    bad = np.eye(4)
    bad[:3, :3] *= 2
    with pytest.raises(ValueError, match='CAM_FRONT_LEFT: extrinsic rotation'):
        validate_calibration(good_k, bad, 'CAM_FRONT_LEFT')
