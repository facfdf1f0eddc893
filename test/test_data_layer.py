"""The nuScenes data layer on the real bundled keyframe: index, LiDAR, map ground truth, Dataset, bad inputs."""
import dataclasses
import json
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import read_table, write_table
from mapkd_core.config import DataConfig, DatasetConfig, replace
from mapkd_core.constants import BOUNDARY, CAMERAS, CLASS_NAMES, DIVIDER
from mapkd_core.data.dataset import MapDataset, collate
from mapkd_core.data.images import load_camera, read_image, resize_image
from mapkd_core.data.index import NuScenesIndex, read_split_file
from mapkd_core.data.lidar import load_lidar, pad_or_trim
from mapkd_core.data.map_gt import MapGroundTruth, load_nusc_map
from mapkd_core.data.rasterize import direction_onehot, rasterize_map
from mapkd_core.errors import (CorruptSensorFileError, DatasetNotFoundError, IncompleteSampleError,
                               MissingSensorFileError, SplitError, UnknownMapError)
from mapkd_core.geometry import invert_transform, project_points, transform_points, yaw_of

KEYFRAME = 'ca9a282c9e77460f8360f564131a8af5'
DILATE_2PX = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


# ---------------------------------------------------------------------------------------------------------------
# index


def test_index_of_the_real_keyframe(keyframe, bundled_index):
    assert len(bundled_index) == 1
    assert keyframe.token == KEYFRAME
    assert keyframe.scene_name == 'scene-0061' and keyframe.city == 'singapore-onenorth'
    assert keyframe.camera_names == CAMERAS
    for cam in keyframe.cameras:
        assert cam.path.is_file() and cam.channel in cam.path.name
        assert cam.intrinsic.shape == (3, 3) and cam.intrinsic[0, 0] > 500  # ~1260 px (CAM_BACK, wider: ~800 px)
        assert (cam.width, cam.height) == (1600, 900)
    # CAM_FRONT looks forward: its optical axis (camera z) is the ego +x axis
    front = keyframe.cameras[CAMERAS.index('CAM_FRONT')]
    assert front.cam_to_ego[:3, 2] @ np.array([1.0, 0, 0]) > 0.99
    back = keyframe.cameras[CAMERAS.index('CAM_BACK')]
    assert back.cam_to_ego[:3, 2] @ np.array([-1.0, 0, 0]) > 0.99
    assert keyframe.lidar[0].path.name.endswith('.pcd.bin')
    assert keyframe.intrinsics.shape == (6, 3, 3) and keyframe.cam_to_ego.shape == (6, 4, 4)


def test_official_split_and_split_file(tmp_path, bundled_cfg):
    ds = bundled_cfg.dataset
    # scene-0061 belongs to the official mini_train split, not to mini_val
    assert len(NuScenesIndex(ds.dataroot, ds.version, 'mini_train')) == 1
    with pytest.raises(SplitError, match="split 'mini_val' selects 2 scene"):
        NuScenesIndex(ds.dataroot, ds.version, 'mini_val')
    with pytest.raises(SplitError, match="unknown split 'training'"):
        NuScenesIndex(ds.dataroot, ds.version, 'training')
    yml = tmp_path / 'splits.yaml'
    yml.write_text('train: [scene-0061]\nval: [scene-0103]\n')
    assert len(NuScenesIndex(ds.dataroot, ds.version, 'train', split_file=str(yml))) == 1
    with pytest.raises(SplitError, match="split 'test' is not in split file"):
        NuScenesIndex(ds.dataroot, ds.version, 'test', split_file=str(yml))
    txt = tmp_path / 'scenes.txt'
    txt.write_text('# my scenes\nscene-0061\n')
    assert read_split_file(txt, 'anything') == ['scene-0061']
    assert len(NuScenesIndex(ds.dataroot, ds.version, 'all')) == 1


def test_dataroot_names_resolve_without_generating(tmp_path, monkeypatch):
    from mapkd_core.data.dataroot import resolve_data_path
    from mapkd_core.paths import bundled_dataroot
    assert resolve_data_path('bundled') == bundled_dataroot()
    assert resolve_data_path('bundled/osm') == bundled_dataroot() / 'osm'
    assert resolve_data_path('splits.yaml', base=tmp_path) == tmp_path / 'splits.yaml'
    assert resolve_data_path(str(tmp_path / 'x'), base='/elsewhere') == tmp_path / 'x'
    monkeypatch.setenv('HOME', str(tmp_path))
    assert resolve_data_path('~/data') == tmp_path / 'data'


def test_missing_dataroot_and_version_are_named(tmp_path, bundled_cfg):
    with pytest.raises(DatasetNotFoundError, match='dataroot not found: .*nowhere'):
        NuScenesIndex(tmp_path / 'nowhere', 'v1.0-mini')
    with pytest.raises(DatasetNotFoundError, match=r"version 'v1.0-trainval' not found .*present: \['v1.0-mini'\]"):
        NuScenesIndex(bundled_cfg.dataset.dataroot, 'v1.0-trainval', 'mini_train')


def test_sample_without_all_six_cameras_is_named(tmp_dataroot):
    rows = read_table(tmp_dataroot, 'sample_data')
    write_table(tmp_dataroot, 'sample_data', [r for r in rows if 'CAM_BACK_LEFT' not in r['filename']])
    with pytest.raises(IncompleteSampleError, match=f'sample {KEYFRAME} .*has no CAM_BACK_LEFT'):
        NuScenesIndex(tmp_dataroot, 'v1.0-mini', 'mini_train')
    # asking only for the cameras that exist works
    idx = NuScenesIndex(tmp_dataroot, 'v1.0-mini', 'mini_train', cameras=('CAM_FRONT', 'CAM_BACK'))
    assert idx[0].camera_names == ('CAM_FRONT', 'CAM_BACK')


def test_missing_and_corrupt_sensor_files_are_named(tmp_dataroot, bundled_cfg):
    cfg = replace(bundled_cfg, dataset=replace(bundled_cfg.dataset, dataroot=str(tmp_dataroot)))
    ds = MapDataset(cfg)
    cam = ds.frames[0].cameras[CAMERAS.index('CAM_BACK_RIGHT')]
    cam.path.unlink()
    with pytest.raises(MissingSensorFileError, match='camera image missing: .*' + re.escape(cam.path.name)):
        ds[0]
    cam.path.write_bytes(b'\xff\xd8 not really a jpeg')
    with pytest.raises(CorruptSensorFileError, match='cannot be decoded: .*' + re.escape(cam.path.name)):
        ds[0]
    cam.path.write_bytes(b'')
    with pytest.raises(CorruptSensorFileError, match=re.escape(cam.path.name)):
        ds[0]
    lidar = ds.frames[0].lidar[0].path
    lidar.write_bytes(b'\x00' * 7)
    with pytest.raises(CorruptSensorFileError, match=re.escape(lidar.name)):
        load_lidar(ds.frames[0])
    lidar.unlink()
    with pytest.raises(MissingSensorFileError, match='LiDAR file missing: .*' + re.escape(lidar.name)):
        load_lidar(ds.frames[0])


def test_unknown_city_map_is_named(tmp_path, bundled_index, bundled_cfg):
    gt = MapGroundTruth(bundled_index.dataroot, bundled_cfg.grid, bundled_cfg.map_gt)
    with pytest.raises(UnknownMapError, match=r"city 'atlantis'.*maps present: \['boston-seaport'"):
        gt.vectors('atlantis', np.eye(4))
    (tmp_path / 'maps' / 'expansion').mkdir(parents=True)
    with pytest.raises(UnknownMapError, match='maps present: none'):
        load_nusc_map(tmp_path, 'boston-seaport')


# ---------------------------------------------------------------------------------------------------------------
# LiDAR


def test_lidar_projects_onto_the_road_in_cam_front(keyframe):
    pts = load_lidar(keyframe, min_distance=2.2)
    assert pts.shape[1] == 5 and pts.dtype == np.float32
    assert np.all(pts[:, 4] == 0.0)  # the keyframe sweep has no time lag
    cam = keyframe.cameras[CAMERAS.index('CAM_FRONT')]
    uv, depth = project_points(pts[:, :3], cam.intrinsic, cam.cam_to_ego)
    inside = (depth > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < 1600) & (uv[:, 1] >= 0) & (uv[:, 1] < 900)
    assert inside.sum() > 500
    # ground returns (ego z near 0: the ego frame sits on the road) must land below the horizon, in the road region
    ground = inside & (np.abs(pts[:, 2]) < 0.3)
    assert ground.sum() > 300
    assert np.all(uv[ground, 1] > cam.intrinsic[1, 2])
    # and the road is where the image is grey asphalt-ish: not sky-bright, not saturated
    img = cv2.imread(str(cam.path))
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    g_uv = uv[ground].astype(int)
    sat = hsv[g_uv[:, 1], g_uv[:, 0], 1]
    assert np.median(sat) < 60


def test_close_points_are_removed_in_the_sensor_frame(keyframe):
    pts = load_lidar(keyframe, min_distance=2.2)
    sweep = keyframe.lidar[0]
    in_sensor = transform_points(invert_transform(keyframe.ego_to_global @ np.eye(4)) @ keyframe.ego_to_global
                                 @ invert_transform(sweep.sensor_to_ego) @ np.eye(4), pts[:, :3])
    assert not np.any((np.abs(in_sensor[:, 0]) < 2.2) & (np.abs(in_sensor[:, 1]) < 2.2))
    assert len(load_lidar(keyframe, min_distance=0.0)) > len(pts)


def test_previous_sweeps_move_into_the_keyframe_ego_frame(tmp_dataroot):
    """Add a previous sweep 50 ms earlier with the ego 1 m further back along global x; check the time-lag channel
    and that its points arrive shifted by exactly that motion expressed in the keyframe's ego frame."""
    sd = read_table(tmp_dataroot, 'sample_data')
    poses = read_table(tmp_dataroot, 'ego_pose')
    key = next(r for r in sd if 'LIDAR_TOP' in r['filename'])
    key_pose = next(p for p in poses if p['token'] == key['ego_pose_token'])
    sweep_file = 'sweeps/LIDAR_TOP/prev.pcd.bin'
    (tmp_dataroot / 'sweeps' / 'LIDAR_TOP').mkdir(parents=True)
    (tmp_dataroot / sweep_file).write_bytes((tmp_dataroot / key['filename']).read_bytes())
    prev_pose = dict(key_pose, token='prevpose', timestamp=key['timestamp'] - 50000,
                     translation=[key_pose['translation'][0] - 1.0, *key_pose['translation'][1:]])
    prev = dict(key, token='prevsweep', ego_pose_token='prevpose', timestamp=key['timestamp'] - 50000,
                filename=sweep_file, is_key_frame=False, next=key['token'], prev='')
    key['prev'] = 'prevsweep'
    write_table(tmp_dataroot, 'sample_data', sd + [prev])
    write_table(tmp_dataroot, 'ego_pose', poses + [prev_pose])

    idx = NuScenesIndex(tmp_dataroot, 'v1.0-mini', 'mini_train', lidar_sweeps=3)
    frame = idx[0]
    assert len(frame.lidar) == 2  # only one previous sweep exists: no padding with fake sweeps
    pts = load_lidar(frame, min_distance=2.2)
    n = len(pts) // 2
    cur, old = pts[:n], pts[n:]
    assert np.allclose(old[:, 4], 0.05) and np.all(cur[:, 4] == 0)
    shift = invert_transform(frame.ego_to_global)[:3, :3] @ np.array([-1.0, 0.0, 0.0])
    assert np.allclose(old[:, :3] - cur[:, :3], shift, atol=1e-3)
    padded, mask = pad_or_trim(pts, 1000)
    assert padded.shape == (1000, 5) and mask.all() and np.array_equal(padded, pts[:1000])
    padded, mask = pad_or_trim(pts, len(pts) + 10)
    assert mask.sum() == len(pts) and not padded[~mask].any()


# ---------------------------------------------------------------------------------------------------------------
# map ground truth


@pytest.fixture(scope='module')
def map_gt(bundled_index, bundled_cfg):
    return MapGroundTruth(bundled_index.dataroot, bundled_cfg.grid, bundled_cfg.map_gt)


def _devkit_masks(keyframe, grid, layers, half_cell=False):
    """The devkit's get_map_mask for our patch. Its polygon masks round vertices to integer pixel coordinates
    (pixel centres at xmin + i * res) while its lines truncate (cell i covers [xmin + i res, xmin + (i+1) res), our
    convention); ``half_cell`` shifts the patch by half a cell so that polygon masks sample our cell centres."""
    nusc_map = load_nusc_map(keyframe.cameras[0].path.parents[2], keyframe.city)
    x, y = keyframe.ego_to_global[:2, 3]
    if half_cell:
        x, y = np.array([x, y]) + keyframe.ego_to_global[:2, :2] @ np.array([grid.xbound[2], grid.ybound[2]]) / 2
    return nusc_map.get_map_mask((x, y, grid.y_extent, grid.x_extent), np.degrees(yaw_of(keyframe.ego_to_global)),
                                 layers, canvas_size=(grid.H, grid.W))


def test_divider_raster_agrees_with_devkit_get_map_mask(keyframe, map_gt, bundled_cfg):
    vecs = map_gt.vectors(keyframe.city, keyframe.ego_to_global)
    dividers = [v for v in vecs if v.cls == DIVIDER]
    assert len(dividers) >= 2
    # the devkit draws lines 2 px thick: compare our divider geometry drawn the same way
    ours = rasterize_map(dividers, bundled_cfg.grid, dataclasses.replace(bundled_cfg.map_gt, line_width=2))
    dev = _devkit_masks(keyframe, bundled_cfg.grid, ['road_divider', 'lane_divider'])
    dev = (dev[0] | dev[1]).astype(np.uint8)
    assert dev.sum() > 1000
    score = iou(cv2.dilate(ours.semantic[DIVIDER], DILATE_2PX), cv2.dilate(dev, DILATE_2PX))
    assert score > 0.9, score


def test_boundary_agrees_with_the_edge_of_the_devkit_drivable_area(keyframe, map_gt, bundled_cfg):
    grid = bundled_cfg.grid
    vecs = map_gt.vectors(keyframe.city, keyframe.ego_to_global)
    bounds = [v for v in vecs if v.cls == BOUNDARY]
    assert len(bounds) >= 2
    ours = rasterize_map(bounds, grid, dataclasses.replace(bundled_cfg.map_gt, line_width=1)).semantic[BOUNDARY]
    area = _devkit_masks(keyframe, grid, ['drivable_area'], half_cell=True)[0].astype(np.uint8)
    edge = area - cv2.erode(area, np.ones((3, 3), np.uint8))  # the area's own 1 px rim (not at the canvas border)
    inner = np.zeros_like(area)
    inner[3:-3, 3:-3] = 1  # our boundary stops 0.2 m inside the patch on purpose (the patch cut is not a boundary)
    a, b = cv2.dilate(ours, DILATE_2PX) & inner, cv2.dilate(edge, DILATE_2PX) & inner
    assert iou(a, b) > 0.9, iou(a, b)
    ours = ours & inner
    assert (ours & b).sum() / ours.sum() > 0.99  # every boundary pixel of ours lies on the devkit's edge


def test_raster_rules_on_the_real_keyframe(keyframe, map_gt, bundled_cfg):
    r = map_gt.raster(keyframe.city, keyframe.ego_to_global)
    h, w = bundled_cfg.grid.shape
    assert r.semantic.shape == (len(CLASS_NAMES), h, w) and r.instance.shape == (h, w)
    assert r.direction.shape == (2, h, w)
    assert np.all(r.semantic.sum(0) == 1)  # exactly one class per pixel (background included)
    assert r.semantic[DIVIDER].sum() > 1000 and r.semantic[BOUNDARY].sum() > 1000
    assert r.semantic[2].sum() == 0  # singapore-onenorth has no ped crossings in the map expansion
    # instance ids are drawn exactly where a class is
    assert np.array_equal(r.instance > 0, r.semantic[0] == 0)
    # direction bins exist wherever a line is, and the two-hot target sums to 1 everywhere
    fg = r.semantic[0] == 0
    assert np.all(r.direction[0][fg] > 0) and np.all(r.direction[:, ~fg] == 0)
    onehot = direction_onehot(torch.from_numpy(r.direction)[None], 37)[0]
    assert onehot.shape == (37, h, w) and torch.allclose(onehot.sum(0), torch.ones(h, w))
    # forward and backward bins are opposite headings: 18 bins apart, except near polyline joints and corners
    # where the segment drawn last wins (the later one going forward, the earlier one going backward)
    f, b = r.direction[0][fg].astype(int), r.direction[1][fg].astype(int)
    gap = (b - f - 18) % 36
    assert np.mean(gap == 0) > 0.9 and np.mean(np.isin(gap, [0, 1, 35])) > 0.97
    # vectors are resampled every metre (end point kept)
    for v in map_gt.vectors(keyframe.city, keyframe.ego_to_global):
        steps = np.linalg.norm(np.diff(v.points, axis=0), axis=1)
        assert np.all(steps <= 1.0 + 1e-6)  # chords of 1 m arcs: shorter only at bends
        if len(steps) > 2:
            assert np.median(steps[:-1]) > 0.99


def test_boston_map_has_ped_crossings_as_two_edges(map_gt):
    """Boston has ped crossings: placed on one, the ground truth has pairs of crossing lines."""
    city = map_gt.city('boston-seaport')
    centre = np.asarray(city.ped_edges.geoms[0].centroid.coords[0])
    pose = np.eye(4)
    pose[:2, 3] = centre
    vecs = map_gt.vectors('boston-seaport', pose)
    peds = [v for v in vecs if v.class_name == 'ped_crossing']
    assert len(peds) >= 2
    r = rasterize_map(vecs, map_gt.grid, map_gt.cfg)
    assert r.semantic[2].sum() > 100


# ---------------------------------------------------------------------------------------------------------------
# images and the Dataset


def test_reduced_jpeg_decode_matches_full_decode(keyframe):
    cam = keyframe.cameras[1]
    img, k = load_camera(cam.path, cam.intrinsic, (900, 1600), (128, 352))
    full, factor = read_image(cam.path)
    assert factor == 1 and full.shape == (900, 1600, 3)
    ref = resize_image(full, (128, 352))
    assert img.shape == ref.shape == (128, 352, 3)
    assert np.abs(img.astype(int) - ref.astype(int)).mean() < 3.0
    # the intrinsics equal a one-step resize from 1600x900 (1600 and 900 are multiples of the factor 4)
    from mapkd_core.data.images import resized_intrinsics
    assert np.allclose(k, resized_intrinsics(cam.intrinsic, (900, 1600), (128, 352)))


def test_dataset_item_and_collate(bundled_cfg):
    ds = MapDataset(bundled_cfg)
    assert len(ds) == 1
    item = ds[0]
    h, w = bundled_cfg.grid.shape
    assert item['images'].shape == (6, 3, 128, 352) and item['images'].dtype == torch.float32
    assert -3.0 < float(item['images'].mean()) < 3.0
    assert item['intrinsics'].shape == (6, 3, 3)
    assert item['intrinsics'][1, 0, 0] == pytest.approx(1266.4 * 352 / 1600, rel=1e-3)
    assert item['cam_to_ego'].shape == (6, 4, 4)
    assert item['lidar'].shape == (81920, 5) and item['lidar_mask'].sum() > 10000
    assert item['semantic'].shape == (4, h, w) and item['instance'].shape == (h, w)
    assert item['direction'].shape == (2, h, w) and item['sd_prior'].shape == (1, h, w)
    assert item['token'] == KEYFRAME and item['city'] == 'singapore-onenorth'
    batch = collate([item, item])
    assert batch['images'].shape == (2, 6, 3, 128, 352) and batch['token'] == [KEYFRAME, KEYFRAME]
    assert batch['semantic'].shape == (2, 4, h, w)


def test_dataset_follows_the_config(bundled_cfg):
    cfg = DataConfig(grid=dataclasses.replace(bundled_cfg.grid, xbound=(-15.0, 45.0, 0.3), ybound=(-9.0, 9.0, 0.3)),
                     image=dataclasses.replace(bundled_cfg.image, height=64, width=176, cameras=('CAM_FRONT',)),
                     dataset=DatasetConfig(dataroot='bundled', version='v1.0-mini', split='mini_train',
                                           load_lidar=False, load_sd_prior=False))
    item = MapDataset(cfg)[0]
    assert item['images'].shape == (1, 3, 64, 176)
    assert item['semantic'].shape == (4, 60, 200)
    assert 'lidar' not in item and 'sd_prior' not in item
    assert item['semantic'][DIVIDER].sum() > 100


def test_dataloader_with_workers(bundled_cfg):
    cfg = replace(bundled_cfg, dataset=replace(bundled_cfg.dataset, load_lidar=False))
    loader = torch.utils.data.DataLoader(MapDataset(cfg), batch_size=1, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch['images'].shape[0] == 1 and json.dumps(batch['token'])
