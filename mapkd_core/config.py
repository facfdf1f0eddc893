"""Typed configuration: dataclasses loaded from YAML files under ``config/`` and validated.

* An unknown key, a missing required key, a wrong type or an invalid value raises :class:`ConfigError` naming the
  file and the dotted key (``config/data/x.yaml: dataset.lidar_sweeps: expected an integer >= 1, got 0``).
* Every size in the code follows these values: the BEV grid (bounds and resolution give H and W), the image size
  and camera list, the dataset options. No module hard-codes 200x400 or 128x352.

The one mapping between BEV indices and metres lives in :mod:`mapkd_core.geometry`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .constants import (ANGLE_CLASSES, BOUNDARY_LAYERS, CAMERAS, DIVIDER_LAYERS, IMAGENET_MEAN, IMAGENET_STD,
                        PED_CROSSING_LAYERS)
from .errors import ConfigError, ConfigNotFoundError

# --------------------------------------------------------------------------------------------------------------
# dataclasses


@dataclass(frozen=True)
class GridConfig:
    """The BEV grid in the ego frame (REP-103: x forward, y left), HDMapNet layout.

    Rows run along y, columns along x: the raster is H rows x W columns with
    ``H = (ybound[1] - ybound[0]) / ybound[2]`` and ``W = (xbound[1] - xbound[0]) / xbound[2]``.
    The default is 60 m x 30 m at 0.15 m: H=200, W=400.
    """

    xbound: tuple[float, float, float] = (-30.0, 30.0, 0.15)
    ybound: tuple[float, float, float] = (-15.0, 15.0, 0.15)
    zbound: tuple[float, float, float] = (-10.0, 10.0, 20.0)

    def validate(self, where: str) -> None:
        for name in ('xbound', 'ybound', 'zbound'):
            lo, hi, res = getattr(self, name)
            key = f'{where}{name}'
            if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(res)):
                raise ConfigError(f'{key}: values must be finite, got {[lo, hi, res]}')
            if res <= 0:
                raise ConfigError(f'{key}: resolution (third value) must be > 0, got {res}')
            if hi <= lo:
                raise ConfigError(f'{key}: max (second value) must be greater than min, got [{lo}, {hi}]')
            cells = (hi - lo) / res
            if abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ConfigError(f'{key}: the extent {hi - lo} m is not a whole number of {res} m cells')

    @property
    def H(self) -> int:  # noqa: N802 - the conventional name
        """Number of rows (along y, lateral)."""
        return int(round((self.ybound[1] - self.ybound[0]) / self.ybound[2]))

    @property
    def W(self) -> int:  # noqa: N802
        """Number of columns (along x, forward)."""
        return int(round((self.xbound[1] - self.xbound[0]) / self.xbound[2]))

    @property
    def shape(self) -> tuple[int, int]:
        return self.H, self.W

    @property
    def x_extent(self) -> float:
        return self.xbound[1] - self.xbound[0]

    @property
    def y_extent(self) -> float:
        return self.ybound[1] - self.ybound[0]

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the grid in the ego frame (0, 0 for the usual symmetric grid)."""
        return (self.xbound[0] + self.xbound[1]) / 2.0, (self.ybound[0] + self.ybound[1]) / 2.0


@dataclass(frozen=True)
class ImageConfig:
    """Network input images: every camera is resized (no crop) to height x width and normalised."""

    height: int = 128
    width: int = 352
    cameras: tuple[str, ...] = CAMERAS
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self, where: str) -> None:
        if self.height < 8 or self.width < 8:
            raise ConfigError(f'{where}height/width: must be at least 8 px, got {self.height}x{self.width}')
        if self.height % 8 or self.width % 8:
            raise ConfigError(f'{where}height/width: must be multiples of 8 (encoder strides), '
                              f'got {self.height}x{self.width}')
        if not self.cameras:
            raise ConfigError(f'{where}cameras: must list at least one camera')
        dup = sorted({c for c in self.cameras if self.cameras.count(c) > 1})
        if dup:
            raise ConfigError(f'{where}cameras: duplicated camera(s) {dup}')
        if any(s <= 0 for s in self.std):
            raise ConfigError(f'{where}std: must be > 0, got {list(self.std)}')


@dataclass(frozen=True)
class MapGtConfig:
    """Map ground truth (method doc section 6): vectors from the map expansion, rasterised HDMapNet-style."""

    divider_layers: tuple[str, ...] = DIVIDER_LAYERS
    ped_crossing_layers: tuple[str, ...] = PED_CROSSING_LAYERS
    boundary_layers: tuple[str, ...] = BOUNDARY_LAYERS
    #: polylines are resampled every this many metres (the end point is kept)
    sample_distance: float = 1.0
    #: lines shorter than this are dropped (P-MapNet drops lines that give fewer than 2 samples at 1 m)
    min_line_length: float = 1.0
    #: boundaries are clipped to the patch shrunk by this margin, which removes the artificial patch edges
    boundary_margin: float = 0.2
    #: line thickness in pixels of the semantic / instance / direction rasters (5 px = 0.75 m at 0.15 m)
    line_width: int = 5
    #: the overlap filter draws every class this many pixels thicker (higher classes erase lower ones there)
    overlap_extra_width: int = 4
    angle_classes: int = ANGLE_CLASSES

    def validate(self, where: str) -> None:
        if self.sample_distance <= 0:
            raise ConfigError(f'{where}sample_distance: must be > 0, got {self.sample_distance}')
        if self.min_line_length < 0:
            raise ConfigError(f'{where}min_line_length: must be >= 0, got {self.min_line_length}')
        if self.boundary_margin < 0:
            raise ConfigError(f'{where}boundary_margin: must be >= 0, got {self.boundary_margin}')
        if self.line_width < 1:
            raise ConfigError(f'{where}line_width: must be >= 1 px, got {self.line_width}')
        if self.overlap_extra_width < 0:
            raise ConfigError(f'{where}overlap_extra_width: must be >= 0, got {self.overlap_extra_width}')
        if not 4 <= self.angle_classes <= 254:
            raise ConfigError(f'{where}angle_classes: must be in [4, 254], got {self.angle_classes}')


#: OSM ``type`` (highway) values kept for the SD prior. This is the list P-MapNet uses *in effect*: its source list
#: misses a comma, which merges 'tertiary_link' and 'living_street' into one string that matches nothing, so both are
#: excluded; 'service' roads are excluded on purpose. Add them in a config to deviate.
PMAPNET_ROAD_TYPES = ('trunk', 'primary', 'secondary', 'tertiary', 'unclassified', 'residential', 'trunk_link',
                      'primary_link', 'secondary_link', 'road')


@dataclass(frozen=True)
class SdPriorConfig:
    """SD-map prior from OpenStreetMap road lines, rasterised on the BEV grid as {-1, +1}."""

    #: folder with ``<city>.shp`` (+ .shx/.dbf/.prj); ``bundled/osm`` = the copy shipped in assets/
    osm_dir: str = 'bundled/osm'
    road_types: tuple[str, ...] = PMAPNET_ROAD_TYPES
    #: line thickness in pixels (5 px as in P-MapNet)
    line_width: int = 5
    #: each road polyline is resampled to this many points before drawing (P-MapNet: 50)
    points_per_line: int = 50
    #: how lon/lat becomes the nuScenes map frame: 'local' (exact local tangent plane at the city origin) or
    #: 'pmapnet' (web mercator minus the origin, with P-MapNet's Boston scale and affine correction)
    projection: Literal['local', 'pmapnet'] = 'local'

    def validate(self, where: str) -> None:
        if self.line_width < 1:
            raise ConfigError(f'{where}line_width: must be >= 1 px, got {self.line_width}')
        if self.points_per_line < 2:
            raise ConfigError(f'{where}points_per_line: must be >= 2, got {self.points_per_line}')
        if not self.road_types:
            raise ConfigError(f'{where}road_types: must list at least one OSM road type')


@dataclass(frozen=True)
class DatasetConfig:
    """Where the nuScenes data is and what to load from it."""

    #: nuScenes dataroot (holds ``<version>/``, ``samples/``, ``sweeps/``, ``maps/``); ``bundled`` = the real
    #: keyframe shipped in assets/nuscenes_tiny. Relative paths are relative to the current directory.
    dataroot: str = 'bundled'
    version: str = 'v1.0-trainval'
    #: an official split (train, val, test, mini_train, mini_val, ...), 'all', or a key of ``split_file``
    split: str = 'train'
    #: optional YAML file {split name: [scene names]} or a text file with one scene name per line
    split_file: Optional[str] = None
    #: LiDAR sweeps: the keyframe plus (lidar_sweeps - 1) previous sweeps, moved into the keyframe's ego frame
    lidar_sweeps: int = 3
    #: points are padded (with a validity mask) or randomly trimmed to this count
    max_lidar_points: int = 81920
    #: points within this distance of the sensor (|x| and |y| in the sensor frame, as the devkit) are removed
    lidar_min_distance: float = 2.2
    load_images: bool = True
    load_lidar: bool = True
    load_sd_prior: bool = True
    load_map_gt: bool = True

    def validate(self, where: str) -> None:
        if not self.dataroot:
            raise ConfigError(f'{where}dataroot: must not be empty')
        if not self.version:
            raise ConfigError(f'{where}version: must not be empty')
        if self.lidar_sweeps < 1:
            raise ConfigError(f'{where}lidar_sweeps: must be >= 1 (the keyframe itself), got {self.lidar_sweeps}')
        if self.max_lidar_points < 1:
            raise ConfigError(f'{where}max_lidar_points: must be >= 1, got {self.max_lidar_points}')
        if self.lidar_min_distance < 0:
            raise ConfigError(f'{where}lidar_min_distance: must be >= 0, got {self.lidar_min_distance}')


@dataclass(frozen=True)
class DataConfig:
    """Everything the data layer needs: grid, images, dataset, map ground truth and SD prior."""

    grid: GridConfig = field(default_factory=GridConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    map_gt: MapGtConfig = field(default_factory=MapGtConfig)
    sd_prior: SdPriorConfig = field(default_factory=SdPriorConfig)


# --------------------------------------------------------------------------------------------------------------
# loading and validation


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return 'null'
    if origin is Literal:
        return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return ' or '.join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f'a list of {len(args)} {_type_name(args[0])}s'
        return f'a list of {_type_name(args[0])}s' if args else 'a list'
    if dataclasses.is_dataclass(tp):
        return 'a mapping'
    return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string'}.get(tp, getattr(tp, '__name__',
                                                                                                     str(tp)))


def _convert(value: Any, tp, key: str):
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {value!r}')
        return _from_dict(tp, value, key + '.')
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r}')
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r}')
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r}')
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f'{key}: expected {_type_name(tp)}, got {len(value)} value(s): {list(value)!r}')
            items = [_convert(v, a, f'{key}[{i}]') for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f'{key}[{i}]') for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {value!r}')
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{key}: expected a boolean (true/false), got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{key}: expected an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string: accept a plain number written so
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f'{key}: expected a number, got {value!r}') from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{key}: expected a number, got {value!r}')
        if not math.isfinite(float(value)):
            raise ConfigError(f'{key}: expected a finite number, got {value!r}')
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{key}: expected a string, got {value!r}')
        return value
    raise TypeError(f'{key}: unsupported annotation {tp!r}')  # a bug in our dataclasses, not in the user's file


def _from_dict(cls, data: dict, prefix: str = ''):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ConfigError(f'{prefix}{k}: unknown key{hint}; valid keys: {", ".join(names)}')
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f'{prefix}{f.name}: required key is missing')
    obj = cls(**kwargs)
    validate = getattr(obj, 'validate', None)
    if validate is not None:
        validate(prefix)
    return obj


T = typing.TypeVar('T')


def from_dict(cls: type[T], data: dict | None, source: str = '<dict>') -> T:
    """Build and validate a config dataclass from a plain dict; errors name ``source`` and the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: expected a mapping at the top level, got {type(data).__name__}')
    try:
        return _from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f'{source}: {exc}') from None


def to_dict(cfg) -> dict:
    """A plain dict (lists instead of tuples) that :func:`from_dict` reads back to an equal config."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a YAML syntax error is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigNotFoundError(f'{path}: config file not found')
    try:
        with open(path, encoding='utf-8') as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level, got {type(data).__name__}')
    return data


def load_config(path: str | Path, cls: type[T] = DataConfig, overrides: dict | None = None) -> T:
    """Load a YAML file into the dataclass ``cls`` (default :class:`DataConfig`) and validate it.

    ``overrides`` is a nested dict merged over the file (e.g. ``{'dataset': {'split': 'val'}}``).
    """
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return from_dict(cls, data, source=str(path))


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins); neither input is modified."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def replace(cfg: T, **changes) -> T:
    """``dataclasses.replace`` that validates the result."""
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, 'validate', None)
    if validate is not None:
        validate('')
    return new
