"""Config loading: defaults, shipped files, and errors that name the bad key."""
import pytest

from mapkd_core.config import (DataConfig, GridConfig, ImageConfig, from_dict, load_config, to_dict)
from mapkd_core.errors import ConfigError
from mapkd_core.paths import config_dir


def test_default_grid_is_the_paper_grid():
    g = GridConfig()
    assert (g.H, g.W) == (200, 400)  # 30 m / 0.15 m rows (y), 60 m / 0.15 m columns (x)


def test_non_default_grid_sizes_follow_the_config():
    g = GridConfig(xbound=(-60.0, 60.0, 0.3), ybound=(-15.0, 15.0, 0.3))
    assert (g.H, g.W) == (100, 400)


@pytest.mark.parametrize('path', sorted(config_dir().glob('data/*.yaml')), ids=lambda p: p.name)
def test_every_shipped_data_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, DataConfig)
    assert cfg.grid.H > 0 and cfg.image.cameras


def test_round_trip_through_a_dict():
    cfg = DataConfig()
    assert from_dict(DataConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    p = tmp_path / 'bad.yaml'
    p.write_text('grid:\n  xbund: [-30, 30, 0.15]\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml: grid\.xbund: unknown key \(did you mean 'xbound'\?\)"):
        load_config(p)


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / 'bad.yaml'
    p.write_text('dataset:\n  split: val\nmodel: {}\n')
    with pytest.raises(ConfigError, match=r'model: unknown key'):
        load_config(p)


@pytest.mark.parametrize('text, key', [
    ('grid:\n  xbound: [30, -30, 0.15]\n', 'grid.xbound'),          # max < min
    ('grid:\n  xbound: [-30, 30, 0.0]\n', 'grid.xbound'),           # zero resolution
    ('grid:\n  ybound: [-15, 15, 0.7]\n', 'grid.ybound'),           # 30 m is not whole 0.7 m cells
    ('grid:\n  xbound: [-30, 30]\n', r'grid\.xbound'),              # wrong length
    ('image:\n  height: 130\n', 'image.height'),                     # not a multiple of 8
    ('image:\n  width: wide\n', 'image.width'),                      # wrong type
    ('image:\n  cameras: [CAM_FRONT, CAM_FRONT]\n', 'image.cameras'),
    ('dataset:\n  lidar_sweeps: 0\n', 'dataset.lidar_sweeps'),
    ('dataset:\n  load_lidar: yes please\n', 'dataset.load_lidar'),
    ('sd_prior:\n  projection: utm\n', 'sd_prior.projection'),
    ('map_gt:\n  line_width: 0\n', 'map_gt.line_width'),
])
def test_invalid_values_name_the_key(tmp_path, text, key):
    p = tmp_path / 'bad.yaml'
    p.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(p)


def test_broken_yaml_and_missing_file(tmp_path):
    p = tmp_path / 'broken.yaml'
    p.write_text('grid: [unclosed\n')
    with pytest.raises(ConfigError, match='broken.yaml: not valid YAML'):
        load_config(p)
    with pytest.raises(ConfigError, match='config file not found'):
        load_config(tmp_path / 'nope.yaml')


def test_image_config_validation_direct():
    with pytest.raises(ConfigError, match='cameras'):
        from_dict(ImageConfig, {'cameras': []})
