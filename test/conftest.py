"""Shared fixtures. Every test process keeps DDS discovery on this machine."""
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

from mapkd_core.config import load_config  # noqa: E402
from mapkd_core.paths import bundled_dataroot, config_path  # noqa: E402


@pytest.fixture(scope='session')
def bundled_cfg():
    """DataConfig of the bundled real keyframe at paper settings."""
    return load_config(config_path('data/bundled.yaml'))


@pytest.fixture(scope='session')
def bundled_index(bundled_cfg):
    from mapkd_core.data.index import NuScenesIndex
    return NuScenesIndex.from_config(bundled_cfg)


@pytest.fixture(scope='session')
def keyframe(bundled_index):
    """The one real keyframe (scene-0061, singapore-onenorth)."""
    return bundled_index[0]


def _copy_dataroot(dst: Path) -> Path:
    """A writable copy of the bundled dataroot: tables copied, sensor files and maps copied (small: ~14 MB)."""
    src = bundled_dataroot()
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('osm', 'scenes.json.gz'))
    for p in dst.rglob('*'):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def tmp_dataroot(tmp_path):
    """A private, editable copy of the bundled dataroot (tests may delete or corrupt files in it)."""
    return _copy_dataroot(tmp_path / 'nuscenes')


def read_table(root: Path, name: str, version: str = 'v1.0-mini'):
    return json.loads((root / version / f'{name}.json').read_text())


def write_table(root: Path, name: str, rows, version: str = 'v1.0-mini'):
    (root / version / f'{name}.json').write_text(json.dumps(rows))
