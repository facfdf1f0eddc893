"""Where files are: the package's own configs, launch files and bundled real nuScenes data, and the cache root.

Works from a source checkout (files beside the package) and from an installed package (pip or colcon put them
under ``<prefix>/share/mapkd_ros``). ``MAPKD_SHARE`` overrides both. Generated data (synthetic datasets, training
caches) goes under :func:`cache_root`. No absolute paths are written in code.

This module only knows paths: it imports nothing from the data layer. The names a config may give instead of a
dataroot path (``bundled``, ``synthetic``, ...) are resolved by :func:`mapkd_core.data.dataroot.resolve_data_path`.
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


def cache_root() -> Path:
    """The folder of everything generated (synthetic datasets, training caches): ``$MAPKD_CACHE``, default
    ``~/.cache/mapkd``. Read on every call, so a changed environment variable takes effect."""
    return Path(os.environ.get('MAPKD_CACHE') or Path.home() / '.cache' / 'mapkd')
