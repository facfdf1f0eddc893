"""SD-map prior: the real keyframe, alignment of the OSM roads with the nuScenes map frame, the ego frame of the
raster (synthetic shapefiles) and the errors."""
import gzip
import json
import math

import geopandas
import numpy as np
import pytest
import shapely
from nuscenes.scripts.export_poses import REFERENCE_COORDINATES, get_coordinate
from scipy.spatial import cKDTree
from shapely.geometry import LineString

from mapkd_core.config import GridConfig, SdPriorConfig
from mapkd_core.constants import CITIES
from mapkd_core.data.sd_prior import SdPrior, lonlat_to_map, read_osm_roads
from mapkd_core.errors import ConfigError, DatasetNotFoundError, OsmFormatError, UnknownMapError
from mapkd_core.geometry import make_transform, metres_to_index
from mapkd_core.data.dataroot import resolve_data_path

GRID = GridConfig()
KEYFRAME_CITY = 'singapore-onenorth'
#: Bounds from the measurements in the sd_prior docstring (local projection), with margin:
#: keyframe ego -> nearest road 1.31 m; per-city median track distance <= 2.71 m; inside-drivable-area fraction
#: 0.875 in Boston (pmapnet 0.776, WGS84 ellipsoid 0.761) and >= 0.776 in Singapore (WGS84 ellipsoid <= 0.536).
KEYFRAME_MAX_DISTANCE = 3.0
TRACK_MEDIAN_MAX_DISTANCE = 3.5
MIN_INSIDE_DRIVABLE = {'boston-seaport': 0.83}
MIN_INSIDE_DRIVABLE_DEFAULT = 0.70


@pytest.fixture(scope='module')
def root():
    return resolve_data_path('bundled')


@pytest.fixture(scope='module')
def prior():
    return SdPrior(SdPriorConfig(), GRID)


@pytest.fixture(scope='module')
def keyframe_pose(root):
    """ego_to_global of the bundled keyframe's LIDAR_TOP sample_data."""
    sample_data = json.loads((root / 'v1.0-mini' / 'sample_data.json').read_text())
    token = next(r['ego_pose_token'] for r in sample_data if '/LIDAR_TOP/' in r['filename'])
    pose = next(p for p in json.loads((root / 'v1.0-mini' / 'ego_pose.json').read_text()) if p['token'] == token)
    return make_transform(pose['rotation'], pose['translation'])


@pytest.fixture(scope='module')
def ego_tracks(root):
    """city -> (N, 2) ego positions of every bundled scene in that city (global map frame)."""
    with gzip.open(root / 'scenes.json.gz', 'rt') as fh:
        scenes = json.load(fh)
    out = {}
    for scene in scenes.values():
        out.setdefault(scene['city'], []).append(np.asarray(scene['ego']['xy'], dtype=np.float64))
    return {city: np.concatenate(xy) for city, xy in out.items()}


def _drivable_area(root, city):
    """Union of the map expansion's drivable-area polygons (global map frame)."""
    expansion = json.loads((root / 'maps' / 'expansion' / f'{city}.json').read_text())
    nodes = {n['token']: (n['x'], n['y']) for n in expansion['node']}
    polygons = {p['token']: p for p in expansion['polygon']}

    def polygon(token):
        p = polygons[token]
        return shapely.Polygon([nodes[t] for t in p['exterior_node_tokens']],
                               [[nodes[t] for t in h['node_tokens']] for h in p['holes']])
    return shapely.union_all([polygon(t) for area in expansion['drivable_area'] for t in area['polygon_tokens']])


# --------------------------------------------------------------------------------------------------------------
# real data


def test_keyframe_raster(prior, keyframe_pose):
    raster = prior.raster(KEYFRAME_CITY, keyframe_pose)
    assert raster.shape == (1, GRID.H, GRID.W) == (1, 200, 400)
    assert raster.dtype == np.float32
    assert set(np.unique(raster).tolist()) == {-1.0, 1.0}
    assert 0.01 < (raster > 0).mean() < 0.5
    vectors = prior.vectors(KEYFRAME_CITY, keyframe_pose)
    assert vectors and all(v.shape == (SdPriorConfig().points_per_line, 2) for v in vectors)
    for v in vectors:  # clipped to the grid, in the ego frame
        assert np.all(np.abs(v[:, 0]) <= GRID.xbound[1] + 1e-6) and np.all(np.abs(v[:, 1]) <= GRID.ybound[1] + 1e-6)


def test_keyframe_alignment(prior, root, keyframe_pose):
    ego = shapely.Point(keyframe_pose[0, 3], keyframe_pose[1, 3])
    all_roads = read_osm_roads(root / 'osm' / f'{KEYFRAME_CITY}.shp', KEYFRAME_CITY)
    assert len(all_roads) > len(prior.roads(KEYFRAME_CITY))
    assert shapely.distance(all_roads, ego).min() < KEYFRAME_MAX_DISTANCE
    assert shapely.distance(prior.roads(KEYFRAME_CITY), ego).min() < KEYFRAME_MAX_DISTANCE


@pytest.mark.parametrize('city', CITIES)
def test_track_alignment(city, root, ego_tracks):
    """The ego drives on OSM roads: median distance to the nearest line (any type) of a few metres."""
    roads = read_osm_roads(root / 'osm' / f'{city}.shp', city)
    tree = shapely.STRtree(roads)
    _, dist = tree.query_nearest(shapely.points(ego_tracks[city]), return_distance=True, all_matches=False)
    assert np.median(dist) < TRACK_MEDIAN_MAX_DISTANCE


@pytest.mark.parametrize('city', CITIES)
def test_roads_inside_drivable_area(city, prior, root, ego_tracks):
    """The discriminating check: filtered roads near the ego tracks lie in the drivable area (rejects the
    P-MapNet projection in Boston and an ellipsoidal tangent plane in Singapore)."""
    samples = shapely.get_coordinates(shapely.segmentize(prior.roads(city), 1.0))
    near = cKDTree(ego_tracks[city]).query(samples, distance_upper_bound=100.0)[0] < 100.0
    samples = samples[near]
    assert len(samples) > 500
    drivable = _drivable_area(root, city)
    inside = shapely.contains_xy(drivable, samples[:, 0], samples[:, 1]).mean()
    assert inside > MIN_INSIDE_DRIVABLE.get(city, MIN_INSIDE_DRIVABLE_DEFAULT)


@pytest.mark.parametrize('city', CITIES)
def test_local_projection_inverts_devkit(city):
    """'local' is the inverse of the devkit's map -> lat/lon conversion (great circle on its sphere)."""
    lat0, lon0 = REFERENCE_COORDINATES[city]
    expected = np.array([[0.0, 0.0], [1500.0, 0.0], [0.0, 2500.0], [1200.0, 900.0], [2800.0, 3100.0]])
    lonlat = []
    for x, y in expected:
        lat, lon = get_coordinate(lat0, lon0, math.atan2(x, y), math.hypot(x, y))
        lonlat.append((lon, lat))
    got = lonlat_to_map(city, 'local')(np.asarray(lonlat))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    pmapnet = lonlat_to_map(city, 'pmapnet')(np.asarray(lonlat))
    np.testing.assert_allclose(pmapnet[0], [0.0, 0.0], atol=1e-6)
    # the two projections describe the same frame up to a small scale / shear error
    assert np.all(np.linalg.norm(pmapnet - expected, axis=1) <= 0.01 * np.linalg.norm(expected, axis=1) + 1e-6)


def test_city_roads_are_cached_and_rasters_repeat(prior, keyframe_pose):
    first = prior.raster(KEYFRAME_CITY, keyframe_pose)
    assert prior.roads(KEYFRAME_CITY) is prior.roads(KEYFRAME_CITY)
    assert np.array_equal(prior.raster(KEYFRAME_CITY, keyframe_pose), first)


# --------------------------------------------------------------------------------------------------------------
# the ego frame, on a synthetic shapefile

SYNTH_CITY = 'singapore-onenorth'
ROAD_NORTH_OF_EGO = 6.0  # metres


def _write_osm(folder, city, types, lines_lonlat, type_column='type'):
    folder.mkdir(parents=True, exist_ok=True)
    frame = geopandas.GeoDataFrame({type_column: list(types)}, geometry=[LineString(c) for c in lines_lonlat],
                                   crs='EPSG:4326')
    frame.to_file(folder / f'{city}.shp')
    return folder


@pytest.fixture()
def synthetic(tmp_path):
    """An OSM folder with one primary road running east-west 6 m north of the ego and one footway 6 m south of it
    (filtered out by the default road types). Returns (prior, ego (x, y) in the map frame)."""
    lat0, lon0 = REFERENCE_COORDINATES[SYNTH_CITY]
    lat_ego, lon_ego = lat0 + 0.01, lon0 + 0.005
    dlat = math.degrees(ROAD_NORTH_OF_EGO / 6378137.0)
    lines = [[(lon_ego - 0.002, lat_ego + dlat), (lon_ego + 0.002, lat_ego + dlat)],
             [(lon_ego - 0.002, lat_ego - dlat), (lon_ego + 0.002, lat_ego - dlat)]]
    folder = _write_osm(tmp_path / 'osm', SYNTH_CITY, ['primary', 'footway'], lines)
    ego = lonlat_to_map(SYNTH_CITY, 'local')(np.array([[lon_ego, lat_ego]]))[0]
    return SdPrior(SdPriorConfig(osm_dir=str(folder)), GRID), ego


def _pose(ego_xy, yaw_deg):
    yaw = math.radians(yaw_deg)
    return make_transform([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)], [ego_xy[0], ego_xy[1], 0.0])


def test_ego_frame_heading_east(synthetic):
    """Heading east (yaw 0): the road 6 m north is on the left (y = +6), along x, over the whole grid width."""
    prior, ego = synthetic
    pose = _pose(ego, 0.0)
    vectors = prior.vectors(SYNTH_CITY, pose)
    assert len(vectors) == 1
    np.testing.assert_allclose(vectors[0][:, 1], ROAD_NORTH_OF_EGO, atol=0.05)
    assert np.ptp(vectors[0][:, 0]) == pytest.approx(GRID.x_extent, abs=1e-6)
    rows, cols = np.nonzero(prior.raster(SYNTH_CITY, pose)[0] > 0)
    row, _ = metres_to_index(GRID, 0.0, ROAD_NORTH_OF_EGO)
    assert np.all(np.abs(rows - row) <= 3)
    assert set(cols.tolist()) == set(range(GRID.W))


def test_ego_frame_heading_north(synthetic):
    """Heading north (yaw 90 deg): the road 6 m north is ahead (x = +6), along y, over the whole grid height."""
    prior, ego = synthetic
    pose = _pose(ego, 90.0)
    vectors = prior.vectors(SYNTH_CITY, pose)
    assert len(vectors) == 1
    np.testing.assert_allclose(vectors[0][:, 0], ROAD_NORTH_OF_EGO, atol=0.05)
    rows, cols = np.nonzero(prior.raster(SYNTH_CITY, pose)[0] > 0)
    _, col = metres_to_index(GRID, ROAD_NORTH_OF_EGO, 0.0)
    assert np.all(np.abs(cols - col) <= 3)
    assert set(rows.tolist()) == set(range(GRID.H))


def test_road_types_and_empty_patch(synthetic, tmp_path):
    prior, ego = synthetic
    assert len(prior.roads(SYNTH_CITY)) == 1  # the footway is filtered out
    with_footways = SdPrior(SdPriorConfig(osm_dir=str(tmp_path / 'osm'), road_types=('primary', 'footway')), GRID)
    assert len(with_footways.vectors(SYNTH_CITY, _pose(ego, 0.0))) == 2
    far = prior.raster(SYNTH_CITY, _pose(ego + np.array([0.0, 500.0]), 0.0))
    assert far.shape == (1, GRID.H, GRID.W) and np.all(far == -1.0)
    assert prior.vectors(SYNTH_CITY, _pose(ego + np.array([0.0, 500.0]), 0.0)) == []


# --------------------------------------------------------------------------------------------------------------
# errors


def test_missing_osm_folder(tmp_path):
    missing = tmp_path / 'no_such_osm'
    prior = SdPrior(SdPriorConfig(osm_dir=str(missing)), GRID)
    with pytest.raises(DatasetNotFoundError, match='no_such_osm'):
        prior.raster(KEYFRAME_CITY, np.eye(4))


def test_unknown_city_lists_available(synthetic, prior):
    synth_prior, _ = synthetic
    with pytest.raises(UnknownMapError, match='boston-seaport') as info:
        synth_prior.roads('boston-seaport')
    assert SYNTH_CITY in str(info.value)
    with pytest.raises(UnknownMapError, match='atlantis') as info:
        prior.roads('atlantis')
    assert all(city in str(info.value) for city in CITIES)


def test_city_without_map_origin(tmp_path):
    folder = _write_osm(tmp_path / 'osm', 'atlantis', ['primary'], [[(0.0, 0.0), (0.001, 0.0)]])
    with pytest.raises(UnknownMapError, match='atlantis'):
        SdPrior(SdPriorConfig(osm_dir=str(folder)), GRID).roads('atlantis')


def test_unknown_projection_names_the_config_key():
    with pytest.raises(ConfigError, match=r"sd_prior.projection: unknown projection 'utm'; expected one of local, "
                                          r"pmapnet"):
        lonlat_to_map(KEYFRAME_CITY, 'utm')
    with pytest.raises(ValueError):  # ConfigError is also a ValueError, for callers that catch that
        lonlat_to_map(KEYFRAME_CITY, 'utm')


def test_shapefile_without_type_column(tmp_path):
    lat0, lon0 = REFERENCE_COORDINATES[SYNTH_CITY]
    folder = _write_osm(tmp_path / 'osm', SYNTH_CITY, ['primary'], [[(lon0, lat0), (lon0 + 0.001, lat0)]],
                        type_column='highway')
    with pytest.raises(OsmFormatError, match=f"{SYNTH_CITY}.shp.*'type'"):
        SdPrior(SdPriorConfig(osm_dir=str(folder)), GRID).roads(SYNTH_CITY)
