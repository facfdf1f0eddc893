"""Where the package's own files are: configs, launch files and the bundled real nuScenes data.

Works from a source checkout (files beside the package) and from an installed package (pip or colcon put them
under ``<prefix>/share/mapkd_ros``). ``MAPKD_SHARE`` overrides both. No absolute paths are written in code.
"""
import os
import sys
from pathlib import Path

from .errors import ConfigNotFoundError, DatasetNotFoundError

PACKAGE = 'mapkd_ros'
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _candidates():
    env = os.environ.get('MAPKD_SHARE')
    if env:
        yield Path(env)
    # source checkout or editable install: config/ lives next to mapkd_core/
    yield _SOURCE_ROOT
    # installed: <prefix>/lib/pythonX.Y/site-packages/mapkd_core -> <prefix>/share/mapkd_ros
    yield _SOURCE_ROOT.parent.parent.parent / 'share' / PACKAGE
    yield Path(sys.prefix) / 'share' / PACKAGE


def share_dir() -> Path:
    """The folder holding ``config/``, ``launch/`` and ``assets/`` (the repository root in a checkout)."""
    for cand in _candidates():
        if (cand / 'config').is_dir():
            return cand
    tried = ', '.join(str(c) for c in _candidates())
    raise ConfigNotFoundError(f'cannot find the mapkd_ros share folder (config/); looked in: {tried}. '
                              'Set MAPKD_SHARE to the folder that holds config/.')


def config_dir() -> Path:
    return share_dir() / 'config'


def config_path(relative: str) -> Path:
    """A shipped config file, e.g. ``config_path('data/bundled.yaml')``."""
    path = config_dir() / relative
    if not path.is_file():
        raise ConfigNotFoundError(f'no shipped config {relative!r} (looked for {path})')
    return path


def bundled_dataroot() -> Path:
    """The bundled real nuScenes keyframe, maps, OSM roads and tracks (``assets/nuscenes_tiny``)."""
    path = share_dir() / 'assets' / 'nuscenes_tiny'
    if not (path / 'v1.0-mini').is_dir():
        raise DatasetNotFoundError(f'the bundled nuScenes data is missing: {path}')
    return path


def resolve_data_path(value, base: Path | None = None) -> Path:
    """Resolve a path from a config: ``bundled`` / ``bundled/<sub>`` name the bundled data, ``synthetic`` the
    default synthetic dataset (generated into the cache on first use: all ten scenes, keyframes, 800x450, seed 0),
    ``synthetic_drives`` the same scenes plus the virtual drives with the geo_train / geo_val splits (704x396),
    a relative path is taken relative to ``base`` (default: the current directory), ``~`` is expanded."""
    text = str(value)
    if text == 'synthetic':
        from .data.synth.cache import synthetic_dataroot
        return synthetic_dataroot()
    if text == 'synthetic_drives':
        from .data.synth.cache import DRIVES, synthetic_dataroot
        return synthetic_dataroot(DRIVES)
    if text == 'bundled' or text.startswith('bundled/'):
        root = bundled_dataroot()
        return root if text == 'bundled' else root / text[len('bundled/'):]
    path = Path(os.path.expanduser(text))
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path
