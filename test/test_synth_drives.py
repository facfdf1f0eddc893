"""Virtual drives over the whole bundled maps (issue 13): the plan (splits, coverage, plausible driving), the
written dataroot (devkit, our loader, geo splits, same seed same bytes, resume after a kill) and paint that lands on
the ground truth in all four cities."""
import gzip
import hashlib
import importlib
import json

import cv2
import numpy as np
import pytest
import shapely
from scipy.spatial import cKDTree

from mapkd_core.config import DataConfig, DatasetConfig
from mapkd_core.constants import CAMERAS, DIVIDER
from mapkd_core.data.index import NuScenesIndex
from mapkd_core.data.map_gt import MapGroundTruth, load_nusc_map, map_polygons
from mapkd_core.data.synth import SynthConfig, generate
from mapkd_core.data.synth.drives import CITIES, VAL_SCENES, DrivePlanConfig, plan_drives
from mapkd_core.data.synth.generate import SceneRenderer, ego_pose_2d, keyframe_times
from mapkd_core.data.synth.lanes import lane_centerline
from mapkd_core.data.synth.tracks import load_scene_tracks
from mapkd_core.data.synth.world import LANE_PAINT, ROAD, ROAD_DIVIDER_PAINT
from mapkd_core.geometry import invert_transform, transform_points
from mapkd_core.paths import bundled_dataroot

generate_module = importlib.import_module('mapkd_core.data.synth.generate')  # the module, not the function

#: a small drives dataroot: one real-track scene and a few short drives, 3 keyframes each
SMALL = SynthConfig(scenes=('scene-0061',), limit=3, width=352, drives=True, train_keyframes=60, val_keyframes=30,
                    cover_crossings=False)


@pytest.fixture(scope='module')
def plan():
    """The default plan (what `dataroot: synthetic_drives` renders): about 30 s to compute."""
    return plan_drives(bundled_dataroot(), DrivePlanConfig())


def _keyframes(plan, split=None):
    return [(d, p) for d in plan.drives if split in (None, d.split) for p in d.keyframe_poses()]


def _patch(x, y, yaw):
    """The 60 x 30 m BEV patch of a keyframe, written independently of the planner's helper."""
    box = shapely.box(-30, -15, 30, 15)
    return shapely.affinity.translate(shapely.affinity.rotate(box, yaw, origin=(0, 0), use_radians=True), x, y)


def test_the_default_plan_has_the_size_and_the_held_out_split(plan):
    train, val = _keyframes(plan, 'geo_train'), _keyframes(plan, 'geo_val')
    assert len(train) >= 6000 and len(val) >= 1000
    assert {d.scene.city for d, _ in train} == set(CITIES)  # all four cities in train
    tracks = load_scene_tracks(bundled_dataroot() / 'scenes.json.gz')
    for city in CITIES:
        tr = np.array([p[:2] for d, p in train if d.scene.city == city])
        va = np.array([p[:2] for d, p in val if d.scene.city == city])
        val_track = [tracks[s].ego.xy for s in VAL_SCENES if tracks[s].city == city]
        if len(va):
            # val keyframes lie within 250 m of the city's mini_val track, train keyframes outside that region
            assert val_track and cKDTree(np.vstack(val_track)).query(va)[0].max() <= 250.0
            # no train keyframe's patch can overlap a val keyframe's: more than 70 m between ego positions
            assert cKDTree(va).query(tr)[0].min() > 70.0
        if val_track:
            assert cKDTree(np.vstack(val_track)).query(tr)[0].min() > 250.0
    # the scene lists are disjoint and every drive is in exactly one
    names = plan.split_names()
    assert not set(names['geo_train']) & set(names['geo_val'])
    assert len(names['geo_train']) + len(names['geo_val']) == len(plan.drives)


def test_every_bundled_ped_crossing_is_seen_by_a_keyframe(plan):
    for city in CITIES:
        crossings = map_polygons(load_nusc_map(bundled_dataroot(), city), 'ped_crossing')
        if not crossings:
            assert city == 'singapore-onenorth'  # the only city without crossings in the bundled maps
            continue
        patches = [_patch(*p) for d, p in _keyframes(plan) if d.scene.city == city]
        tree = shapely.STRtree(patches)
        unseen = [i for i, c in enumerate(crossings) if not len(tree.query(c, predicate='intersects'))]
        assert not unseen, f'{city}: {len(unseen)} of {len(crossings)} crossings in no keyframe patch'


def test_drives_are_plausible_and_not_only_straight_roads(plan):
    speeds, turning = [], 0
    for d in plan.drives:
        ego = d.scene.ego
        v = np.hypot(*np.diff(ego.xy, axis=0).T) / np.diff(ego.t)
        speeds.append(v)
        # the heading follows the direction of travel
        step = np.diff(ego.xy, axis=0)
        moving = np.hypot(*step.T) > 0.05
        travel = np.arctan2(step[moving, 1], step[moving, 0])
        err = (ego.heading[:-1][moving] - travel + np.pi) % (2 * np.pi) - np.pi
        assert np.percentile(np.abs(err), 95) < np.radians(10), d.name
        turning += np.ptp(ego.heading) > np.radians(45)
        assert d.scene.agents, d.name  # every drive has traffic
        assert {a.type for a in d.scene.agents} <= {'VEHICLE', 'PEDESTRIAN'}
    v = np.concatenate(speeds)
    assert v.max() <= 15.01 and np.median(v) >= 3.0
    assert turning >= 0.2 * len(plan.drives)  # at least a fifth of the drives turn by 45 degrees or more
    peds = sum(a.type == 'PEDESTRIAN' for d in plan.drives for a in d.scene.agents)
    assert peds > len(plan.drives)


def test_lane_centre_line_runs_between_the_end_edges():
    # a 20 m x 3.5 m lane whose ring starts at a corner; the centre line goes from one end edge's middle to the other
    poly = shapely.Polygon([(0, 0), (10, 0), (20, 0), (20, 3.5), (10, 3.5), (0, 3.5)])
    line = lane_centerline(poly)
    ends = sorted(map(tuple, np.round(line[[0, -1]], 2)))
    assert ends == [(0.0, 1.75), (20.0, 1.75)]
    assert np.allclose(line[:, 1], 1.75, atol=0.05)
    assert lane_centerline(shapely.box(0, 0, 3, 3)) is None  # no clear axis


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def small_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('drives') / 'root', SMALL, progress=False)


def test_devkit_and_loader_read_the_geo_splits(small_root):
    from nuscenes.nuscenes import NuScenes
    nusc = NuScenes(version='v1.0-mini', dataroot=str(small_root), verbose=False)
    names = {s['name'] for s in nusc.scene}
    assert 'scene-0061' in names and any(n.startswith('drive-') for n in names)
    train = NuScenesIndex(small_root, 'v1.0-mini', 'geo_train')
    val = NuScenesIndex(small_root, 'v1.0-mini', 'geo_val')
    assert train.scene_names and val.scene_names
    assert all(n.startswith('drive-') for n in train.scene_names + val.scene_names)
    assert not set(train.scene_names) & set(val.scene_names)
    assert [f.scene_name for f in NuScenesIndex(small_root, 'v1.0-mini', 'mini_train')] == ['scene-0061'] * 3
    f = val[0]
    assert f.camera_names == CAMERAS and all(c.path.is_file() for c in f.cameras)
    assert (f.cameras[0].width, f.cameras[0].height) == (352, 198)
    from mapkd_core.data.dataset import MapDataset
    item = MapDataset(DataConfig(dataset=DatasetConfig(dataroot=str(small_root), version='v1.0-mini',
                                                       split='geo_val')))[0]
    assert item['images'].shape == (6, 3, 128, 352) and item['lidar_mask'].sum() > 10000
    with gzip.open(small_root / 'drives.json.gz', 'rt') as fh:
        table = json.load(fh)
    rows = {(r['scene'], r['k']) for r in table['keyframes']}
    frames = {}
    for f in list(train) + list(val):
        frames.setdefault(f.scene_name, []).append(f)
    assert rows == {(n, k) for n, fs in frames.items() for k in range(len(fs))}  # one row per written keyframe
    assert table['summary']['min_train_val_distance_m'] > 70.0


def test_same_seed_same_bytes_and_a_killed_run_resumes(small_root, tmp_path, monkeypatch):
    """A run killed after 4 keyframes, then run again, writes exactly the bytes of the uninterrupted run (which used
    a worker pool; this one renders in-process)."""
    cfg = SynthConfig(**{**SMALL.__dict__, 'workers': 1})
    out = tmp_path / 'root'
    real = generate_module._run_task
    calls = []

    def dying(task):
        if len(calls) == 4:
            raise KeyboardInterrupt('killed')
        calls.append(task)
        return real(task)

    monkeypatch.setattr(generate_module, '_run_task', dying)
    with pytest.raises(KeyboardInterrupt):
        generate(out, cfg, progress=False)
    assert not out.exists() and len(list((tmp_path / 'root.partial' / 'records').iterdir())) == 4
    monkeypatch.setattr(generate_module, '_run_task', lambda task: (calls.append(task), real(task))[1])
    generate(out, cfg, progress=False)
    total = len(list((small_root / 'samples' / 'LIDAR_TOP').iterdir()))
    assert len(calls) == total  # 4 before the kill, the rest after it: nothing rendered twice
    assert not (tmp_path / 'root.partial').exists()
    assert _digest(out) == _digest(small_root)


def test_a_subset_holds_the_same_frames_as_the_full_dataset(small_root, tmp_path):
    """``subset``: only the frames ``spread`` picks from each drive split, the same bytes (cameras, LiDAR with its
    two previous keyframes as sweeps, poses), the real-track scenes whole, and far fewer keyframes rendered."""
    from mapkd_core.data.dataset import spread
    from mapkd_core.data.lidar import load_lidar
    # SMALL has two drives of three keyframes per split: 3 of geo_train's 6 are k = 0, 2 of one drive and k = 1 of
    # the other, so two LiDAR-only keyframes (k = 1 and k = 0 before them) are rendered as their sweeps
    cfg = SynthConfig(**{**SMALL.__dict__, 'subset': (('geo_train', 3), ('geo_val', 2))})
    sub = generate(tmp_path / 'sub', cfg, progress=False)
    for split, count in cfg.subset:
        full = NuScenesIndex(small_root, 'v1.0-mini', split, lidar_sweeps=3)
        part = NuScenesIndex(sub, 'v1.0-mini', split, lidar_sweeps=3)
        picked = spread(list(full), count)
        assert len(full) > count and [f.token for f in part] == [f.token for f in picked]
        # every train limit the full dataset could be read with picks the same frames here
        assert [f.token for f in spread(list(part), count)] == [f.token for f in picked]
        for a, b in zip(picked, part):
            assert [c.path.read_bytes() for c in a.cameras] == [c.path.read_bytes() for c in b.cameras]
            assert len(a.lidar) == len(b.lidar) and [s.timestamp for s in a.lidar] == [s.timestamp for s in b.lidar]
            assert np.array_equal(load_lidar(a), load_lidar(b))
            assert np.array_equal(a.ego_to_global, b.ego_to_global)
    assert [f.token for f in NuScenesIndex(sub, 'v1.0-mini', 'mini_train')] == \
        [f.token for f in NuScenesIndex(small_root, 'v1.0-mini', 'mini_train')]
    keyframes = len(list((sub / 'samples' / 'LIDAR_TOP').iterdir()))
    assert keyframes == 3 + 2 + 3 < len(list((small_root / 'samples' / 'LIDAR_TOP').iterdir()))
    assert len(list((sub / 'sweeps' / 'LIDAR_TOP').iterdir())) == 2 and not (sub / 'sweeps' / 'CAM_FRONT').exists()
    # the table and the splits name what the dataroot holds (the devkit loads it)
    with gzip.open(sub / 'drives.json.gz', 'rt') as fh:
        rows = {(r['scene'], r['k']) for r in json.load(fh)['keyframes']}
    held = [f.scene_name for split in ('geo_train', 'geo_val') for f in NuScenesIndex(sub, 'v1.0-mini', split)]
    assert len(rows) == len(held) == 5 and {n for n, _ in rows} == set(held)
    import yaml
    splits = yaml.safe_load((sub / 'splits.yaml').read_text())
    assert set(splits['geo_train'] + splits['geo_val']) == set(held)


def test_a_subset_is_named_and_checked():
    from mapkd_core.data.dataroot import parse_subset
    from mapkd_core.errors import UsageError
    assert parse_subset('synthetic_drives[geo_train=1200,geo_val=300]') == (('geo_train', 1200), ('geo_val', 300))
    assert parse_subset('synthetic_drives[geo_val=0]') == (('geo_val', 0),)
    for bad in ('synthetic_drives[geo_tr=5]', 'synthetic_drives[geo_train=-1]', 'synthetic_drives[geo_train]',
                'synthetic_drives[geo_train=5,geo_train=6]', 'synthetic_drives[geo_train=5'):
        with pytest.raises(UsageError, match='synthetic_drives'):
            parse_subset(bad)
    with pytest.raises(UsageError, match='drives'):
        SynthConfig(subset=(('geo_train', 5),)).validate()
    with pytest.raises(UsageError, match='subset'):
        SynthConfig(drives=True, subset=(('mini_val', 5),)).validate()


def test_mapkd_synth_subset_option_rejects_bad_values(tmp_path, capsys):
    main = generate_module.main
    assert main(['--out', str(tmp_path / 'a'), '--drives', '--subset', 'geo_tr=5', '--quiet']) == 2
    assert "'geo_tr', 5" in capsys.readouterr().err  # the bad item named
    assert main(['--out', str(tmp_path / 'b'), '--subset', 'geo_train=5', '--quiet']) == 2  # no drives to subset
    assert 'drives' in capsys.readouterr().err
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def _has_dividers(drive) -> bool:
    mgt = MapGroundTruth(bundled_dataroot(), DataConfig().grid)
    key_pose = ego_pose_2d(drive.scene, keyframe_times(drive.scene, 0)[2])
    sem = mgt.raster(drive.scene.city, key_pose).semantic[DIVIDER]
    return sem[:, sem.shape[1] // 2:].sum() > 300  # dividers ahead of the ego


@pytest.mark.parametrize('city', CITIES)
def test_painted_dividers_land_on_ground_truth_in_every_city(plan, city):
    """Render keyframe 2 of virtual drives in each city; the CAM_FRONT pixels painted as dividers are bright in the
    image and, projected to the ground with the calibration and the ego poses, lie within 0.3 m of the ground-truth
    dividers: more than 90 % of them, pooled over four keyframes that see paint."""
    candidates = [d for d in plan.drives if d.scene.city == city and d.split == 'geo_train'
                  and len(d.keyframe_poses()) > 10 and _has_dividers(d)][:8]
    renderer = SceneRenderer(SynthConfig(width=704, drives=True), bundled_dataroot(),
                             {d.name: d.scene for d in candidates})
    mgt = MapGroundTruth(bundled_dataroot(), DataConfig().grid)
    k = renderer.rig.intrinsic['CAM_FRONT']
    cam_to_ego = renderer.rig.sensor_to_ego['CAM_FRONT']
    hits, used = [], 0
    for drive in candidates:
        t_key = keyframe_times(drive.scene, 0)[2]
        out = {ch: (img, labels, pose) for ch, j, t, pose, img, labels in renderer.render(drive.name, 2, t_key)}
        img, labels, cam_pose = out['CAM_FRONT']
        paint = np.isin(labels, (LANE_PAINT, ROAD_DIVIDER_PAINT))
        if paint.sum() < 100:  # hidden by traffic or worn away
            continue
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float)
        assert np.median(grey[paint]) > np.median(grey[labels == ROAD]) + 40  # the paint is really in the image
        v, u = np.nonzero(paint)
        rays = np.column_stack([u, v, np.ones(len(u))]) @ np.linalg.inv(k).T @ cam_to_ego[:3, :3].T
        ground = cam_to_ego[:3, 3] - (cam_to_ego[2, 3] / rays[:, 2])[:, None] * rays
        key_pose = ego_pose_2d(drive.scene, t_key)
        pts = transform_points(invert_transform(key_pose) @ cam_pose, ground)
        # distance to the divider polylines of the vector ground truth (not the raster: the HDMapNet protocol
        # resamples lines every metre and drops the last partial metre, where a painted dash can sit)
        lines = shapely.MultiLineString([v.points for v in mgt.vectors(city, key_pose) if v.cls == DIVIDER])
        inside = (np.abs(pts[:, 0]) < 30) & (np.abs(pts[:, 1]) < 15)
        hits.append(shapely.distance(shapely.points(pts[inside, :2]), lines) < 0.3)
        used += 1
        if used == 4:
            break
    hit = np.concatenate(hits)
    assert used >= 2 and len(hit) > 500
    assert hit.mean() > 0.9, hit.mean()
