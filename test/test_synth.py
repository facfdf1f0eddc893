"""The synthetic nuScenes-format dataset: readable by the devkit and our loader, painted where the map says,
LiDAR bright on markings, deterministic for a seed."""
import hashlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mapkd_core.config import DataConfig, DatasetConfig
from mapkd_core.constants import CAMERAS, DIVIDER, PED_CROSSING
from mapkd_core.data.index import NuScenesIndex
from mapkd_core.data.map_gt import MapGroundTruth, load_nusc_map
from mapkd_core.data.synth import SynthConfig, generate
from mapkd_core.data.synth.cache import cache_key, synthetic_dataroot
from mapkd_core.data.synth.generate import SceneRenderer, keyframe_times
from mapkd_core.data.synth.lidar_sim import BOX_INTENSITY, INTENSITY
from mapkd_core.data.synth.tracks import load_scene_tracks
from mapkd_core.data.synth.world import LANE_PAINT, PAINT_CLASSES, ROAD, ROAD_DIVIDER_PAINT
from mapkd_core.errors import DatasetNotFoundError, OutputExistsError, UsageError
from mapkd_core.geometry import in_grid, invert_transform, metres_to_index, transform_points, yaw_of
from mapkd_core.paths import bundled_dataroot

#: one Singapore scene (no ped crossings in its map) and the two official mini_val scenes (Boston, Queenstown)
SCENES = ('scene-0061', 'scene-0103', 'scene-0916')
CFG = SynthConfig(scenes=SCENES, limit=3)
DILATE_2PX = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@pytest.fixture(scope='module')
def root():
    return synthetic_dataroot(CFG, progress=False)


@pytest.fixture(scope='module')
def data_cfg(root):
    return DataConfig(dataset=DatasetConfig(dataroot=str(root), version='v1.0-mini', split='mini_val'))


@pytest.fixture(scope='module')
def renderer():
    return SceneRenderer(CFG, bundled_dataroot())


def test_devkit_loads_the_tables_and_maps(root):
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version='v1.0-mini', dataroot=str(root), verbose=False)
    assert sorted(s['name'] for s in nusc.scene) == list(SCENES)
    assert len(nusc.sample) == 3 * len(SCENES)
    sample = nusc.sample[0]
    assert set(CAMERAS) | {'LIDAR_TOP'} <= set(sample['data'])
    # the devkit's own accessors work: calibration, ego pose, file paths, prev/next chains
    path, _, k = nusc.get_sample_data(sample['data']['CAM_FRONT'])
    assert path.endswith('.jpg') and k.shape == (3, 3)
    scene = nusc.scene[0]
    first = nusc.get('sample', scene['first_sample_token'])
    assert first['prev'] == '' and nusc.get('sample', first['next'])['prev'] == first['token']
    nusc_map = load_nusc_map(root, 'boston-seaport')
    assert len(nusc_map.ped_crossing) > 100


def test_our_loader_reads_it_with_the_official_mini_splits(root, data_cfg):
    val = NuScenesIndex(root, 'v1.0-mini', 'mini_val', lidar_sweeps=3)
    assert sorted({f.scene_name for f in val}) == ['scene-0103', 'scene-0916']
    assert {f.city for f in val} == {'boston-seaport', 'singapore-queenstown'}  # both have ped crossings
    train = NuScenesIndex(root, 'v1.0-mini', 'mini_train')
    assert [f.scene_name for f in train] == ['scene-0061'] * 3
    f = val[1]
    assert f.camera_names == CAMERAS and all(c.path.is_file() for c in f.cameras)
    assert (f.cameras[0].width, f.cameras[0].height) == (800, 450)
    # cameras fire before the LiDAR keyframe at the real nuScenes offsets (up to ~45 ms)
    offsets = [(c.timestamp - f.timestamp) / 1e3 for c in f.cameras]
    assert all(-50 < o <= 0 for o in offsets)
    from mapkd_core.data.dataset import MapDataset
    item = MapDataset(data_cfg)[0]
    assert item['images'].shape == (6, 3, 128, 352) and item['semantic'][PED_CROSSING].sum() >= 0
    assert item['lidar_mask'].sum() > 10000


def _keyframe(renderer, root, scene, k):
    index = NuScenesIndex(root, 'v1.0-mini', 'all')
    frames = [f for f in index if f.scene_name == scene]
    t_key = keyframe_times(renderer.tracks[scene], 0)[k]
    rendered = {ch: (img, labels, pose) for ch, j, t, pose, img, labels in renderer.render(scene, k, t_key)}
    return frames[k], rendered


def _ground_points(uv, k, cam_to_ego):
    """Intersect the rays through pixels uv with the ground plane z = 0 of the ego frame."""
    rays = np.column_stack([uv, np.ones(len(uv))]) @ np.linalg.inv(k).T @ cam_to_ego[:3, :3].T
    origin = cam_to_ego[:3, 3]
    s = -origin[2] / rays[:, 2]
    return origin + s[:, None] * rays


@pytest.mark.parametrize('scene, k', [('scene-0061', 1), ('scene-0103', 2), ('scene-0916', 0)])
def test_painted_dividers_land_on_ground_truth_dividers(renderer, root, scene, k):
    """Take the CAM_FRONT pixels the renderer painted as dividers, check they are bright in the JPEG, project them to
    the ground with the calibration and ego poses read back from the tables, and look them up in the map ground
    truth: more than 90 % must fall on (2 px dilated) divider cells."""
    frame, rendered = _keyframe(renderer, root, scene, k)
    cam = frame.cameras[CAMERAS.index('CAM_FRONT')]
    _, labels, _ = rendered['CAM_FRONT']
    jpeg = cv2.cvtColor(cv2.imread(str(cam.path)), cv2.COLOR_BGR2GRAY).astype(float)
    paint = np.isin(labels, (LANE_PAINT, ROAD_DIVIDER_PAINT))
    assert paint.sum() > 200
    assert np.median(jpeg[paint]) > np.median(jpeg[labels == ROAD]) + 40  # the paint is really in the image
    v, u = np.nonzero(paint)
    ground = _ground_points(np.column_stack([u, v]).astype(float), cam.intrinsic, cam.cam_to_ego)
    # camera-time ego frame -> global -> keyframe ego frame
    pts = transform_points(invert_transform(frame.ego_to_global) @ cam.ego_to_global, ground)
    mgt = MapGroundTruth(root, DataConfig().grid)
    raster = mgt.raster(frame.city, frame.ego_to_global)
    divider = cv2.dilate(raster.semantic[DIVIDER], DILATE_2PX)
    rows, cols = metres_to_index(mgt.grid, pts[:, 0], pts[:, 1])
    inside = in_grid(mgt.grid, rows, cols)
    assert inside.sum() > 200
    hit = divider[rows[inside], cols[inside]] > 0
    assert hit.mean() > 0.9, hit.mean()


def _marking_cells(root, frame, grid):
    """Ground-truth divider and ped-crossing cells (dilated 2 px) plus the crossing polygons (their zebra bars: the
    crossing's ground truth is only its two edges), from the devkit's map mask sampled at our cell centres."""
    sem = MapGroundTruth(root, grid).raster(frame.city, frame.ego_to_global).semantic
    marks = cv2.dilate(((sem[DIVIDER] + sem[PED_CROSSING]) > 0).astype(np.uint8), DILATE_2PX)
    if frame.city != 'singapore-onenorth':  # the only city without ped-crossing polygons
        x, y = frame.ego_to_global[:2, 3]
        off = frame.ego_to_global[:2, :2] @ np.array([grid.xbound[2], grid.ybound[2]]) / 2
        crossings = load_nusc_map(root, frame.city).get_map_mask(
            (x + off[0], y + off[1], grid.y_extent, grid.x_extent), np.degrees(yaw_of(frame.ego_to_global)),
            ['ped_crossing'], canvas_size=grid.shape)[0]
        marks |= crossings.astype(np.uint8)
    return marks


@pytest.mark.parametrize('scene', SCENES)
def test_bright_lidar_points_fall_on_markings(root, scene):
    """LiDAR points brighter than any non-paint surface must lie on marking cells (see _marking_cells)."""
    grid = DataConfig().grid
    non_paint_max = max([hi for c, (lo, hi) in INTENSITY.items() if c not in PAINT_CLASSES] + [BOX_INTENSITY[1]])
    hits, medians = [], []
    for frame in (f for f in NuScenesIndex(root, 'v1.0-mini', 'all') if f.scene_name == scene):
        sweep = frame.lidar[0]
        raw = np.fromfile(sweep.path, dtype=np.float32).reshape(-1, 5)
        medians.append(np.median(raw[:, 3]))
        bright = raw[raw[:, 3] > non_paint_max]
        ego = transform_points(sweep.sensor_to_ego, bright[:, :3])  # the keyframe sweep: the sample's ego frame
        rows, cols = metres_to_index(grid, ego[:, 0], ego[:, 1])
        inside = in_grid(grid, rows, cols)
        hits.append(_marking_cells(root, frame, grid)[rows[inside], cols[inside]] > 0)
    hit = np.concatenate(hits)
    assert len(hit) > 50
    assert hit.mean() > 0.9, hit.mean()
    assert max(medians) < 30  # most returns (asphalt, off-road) are dark


def test_same_seed_gives_identical_bytes_serial_or_parallel(tmp_path):
    cfg = SynthConfig(scenes=('scene-0061',), limit=2, seed=7)
    a = generate(tmp_path / 'a', cfg, progress=False)
    b = generate(tmp_path / 'b', SynthConfig(scenes=('scene-0061',), limit=2, seed=7, workers=2), progress=False)
    c = generate(tmp_path / 'c', SynthConfig(scenes=('scene-0061',), limit=2, seed=8), progress=False)

    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob('*')) if p.is_file()}
    da, db, dc = digest(a), digest(b), digest(c)
    assert len(da) > 20 and da == db
    jpgs = [k for k in da if k.endswith('.jpg')]
    assert all(da[k] != dc[k] for k in jpgs)  # another seed varies every image
    assert [k for k in da if k.endswith('.json')] == [k for k in dc if k.endswith('.json')]


def test_sweeps_and_resolution_options(tmp_path):
    root = generate(tmp_path / 's', SynthConfig(scenes=('scene-0061',), limit=1, width=320, camera_sweeps=True,
                                                lidar_sweeps=True), progress=False)
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version='v1.0-mini', dataroot=str(root), verbose=False)
    cams = [sd for sd in nusc.sample_data if 'CAM_FRONT/' in sd['filename'] or 'CAM_FRONT__' in sd['filename']]
    lidar = [sd for sd in nusc.sample_data if sd['fileformat'] == 'pcd']
    assert sum(sd['is_key_frame'] for sd in cams) == 1 and len(cams) == 6  # 12 Hz between 2 Hz keyframes
    assert sum(sd['is_key_frame'] for sd in lidar) == 1 and len(lidar) == 10  # 20 Hz
    img = cv2.imread(str(root / cams[0]['filename']))
    assert img.shape == (180, 320, 3)
    assert all((root / sd['filename']).is_file() for sd in cams + lidar)
    frame = NuScenesIndex(root, 'v1.0-mini', 'all', lidar_sweeps=3)[0]
    assert len(frame.lidar) == 1  # no earlier sweeps before the first keyframe


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(UsageError, match=r"--scenes: unknown scene\(s\) \['scene-9999'\]"):
        generate(tmp_path / 'x', SynthConfig(scenes=('scene-9999',)), progress=False)
    with pytest.raises(UsageError, match='--width must be a multiple of 16 .* got 801'):
        generate(tmp_path / 'y', SynthConfig(width=801), progress=False)
    with pytest.raises(UsageError, match='--limit must be >= 0, got -1'):
        SynthConfig(limit=-1).validate()
    with pytest.raises(UsageError, match='--val-keyframes must be >= 0, got -5'):
        SynthConfig(drives=True, val_keyframes=-5).validate()
    with pytest.raises(UsageError, match='scene_seconds must be >= 6, got 3'):
        SynthConfig(drives=True, scene_seconds=3).validate()
    SynthConfig(drives=False, scene_seconds=3).validate()  # the drive options only count with drives
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'f').write_text('x')
    with pytest.raises(OutputExistsError, match='full exists and is not empty'):
        generate(tmp_path / 'full', SynthConfig(scenes=('scene-0061',), limit=1), progress=False)
    # the built-in bases stay, for callers that catch those
    assert issubclass(UsageError, ValueError) and issubclass(OutputExistsError, FileExistsError)


def test_missing_tracks_file_is_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='scene tracks file not found: .*nowhere.scenes.json.gz'):
        load_scene_tracks(tmp_path / 'nowhere' / 'scenes.json.gz')
    with pytest.raises(DatasetNotFoundError, match='scenes.json.gz'):  # a source without the tracks
        generate(tmp_path / 'out', SynthConfig(source=str(tmp_path / 'nowhere')), progress=False)


def test_synth_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from mapkd_core.tools.synth_cli import main
    assert main(['--out', str(tmp_path / 'o'), '--width', '801', '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'mapkd-synth: error: --width must be a multiple of 16 in [64, 3200], got 801'


def test_cache_key_follows_the_parameters():
    assert cache_key(SynthConfig(limit=3)) == cache_key(SynthConfig(limit=3, workers=2))
    assert cache_key(SynthConfig(limit=3)) != cache_key(SynthConfig(limit=4))


def test_picture_script_writes_six_cameras_and_bev(root, tmp_path):
    out = tmp_path / 'pics'
    r = subprocess.run([sys.executable, '-m', 'mapkd_core.tools.inspect_data', '--dataroot', str(root), '--split',
                        'mini_val', '--limit', '1', '--out', str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'ped_crossing' in r.stdout and 'CAM_BACK_RIGHT' in r.stdout
    pics = list(out.glob('*.png'))
    assert len(pics) == 1
    img = cv2.imread(str(pics[0]))
    assert img.shape[0] > 400 and img.shape[1] >= 1200
