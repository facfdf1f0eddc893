"""The student_node's parameters, read from their one source of truth, ``config/student_node.schema.yaml``.

The node declares every parameter from the schema (:func:`descriptor` gives the ``rcl_interfaces``
``ParameterDescriptor`` with the description, ``FloatingPointRange`` / ``IntegerRange`` and the allowed values),
checks each value with :meth:`ParamSpec.check` (one error naming the parameter), ``config/student.yaml`` is tested
against :func:`defaults`, and the parameter table of ``docs/node.md`` is :func:`render_markdown`::

    python -m mapkd_ros.params --markdown            # print the table
    python -m mapkd_ros.params --write docs/node.md  # replace the table between its markers in place

Only this module knows the schema's layout. It imports no ROS module at import time (rcl_interfaces is imported by
:func:`descriptor` only), so the docs can be rendered anywhere.
"""
from __future__ import annotations

import argparse
import array
import importlib
import math
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mapkd_core.errors import ConfigError
from mapkd_core.paths import config_path

SCHEMA_FILE = 'student_node.schema.yaml'
TYPES = ('string', 'bool', 'integer', 'double', 'string_array', 'double_array', 'any')
#: the markers around the generated table in docs/node.md
TABLE_BEGIN = '<!-- parameters: begin (generated from config/student_node.schema.yaml by ' \
              '`python -m mapkd_ros.params --write docs/node.md`; do not edit by hand) -->'
TABLE_END = '<!-- parameters: end -->'


class ConfigurationError(ConfigError):
    """A parameter that makes the node unable to start; the message names it and says how to fix it."""


def _resolve(dotted: str) -> Any:
    """``package.module.ATTRIBUTE`` -> the attribute's value (the schema points at lists defined once in code)."""
    module, _, attr = dotted.rpartition('.')
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f'{SCHEMA_FILE}: cannot resolve {dotted!r}: {exc}') from None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, int):
        return 'integer'
    if isinstance(value, float):
        return 'double'
    if isinstance(value, str):
        return 'string'
    if isinstance(value, (list, tuple)):
        kinds = {_type_name(v) for v in value}
        return f'{kinds.pop()}_array' if len(kinds) == 1 else 'array'
    return type(value).__name__


def _or_list(values) -> str:
    items = [repr(v) for v in values]
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' or ' + items[-1]


@dataclass
class ParamSpec:
    """One parameter of the schema. ``name`` of a per-camera parameter holds ``{camera}``."""

    name: str
    type: str
    description: str
    default: Any = None
    has_default: bool = False
    default_text: str | None = None  # how the docs show a computed default
    choices: tuple | None = None
    choices_from: str | None = None
    pattern: str | None = None
    pattern_text: str | None = None
    range: tuple | None = None
    length: int | None = None
    unit: str | None = None
    per_camera: bool = False
    extra: dict = field(default_factory=dict)

    def for_camera(self, camera: str) -> str:
        return self.name.format(camera=camera)

    # ------------------------------------------------------------------------------------------------- checks
    def requirement(self) -> str:
        """What a valid value is, in words (the end of an error message)."""
        if self.choices is not None:
            return f'must be {_or_list(self.choices)}'
        if self.pattern is not None:
            return f'must be {self.pattern_text or "a string matching " + self.pattern}'
        kind = {'string': 'a string', 'bool': 'true or false', 'integer': 'an integer', 'any': 'any value',
                'double': 'a number with a decimal point (e.g. 1.0)', 'string_array': 'a list of strings',
                'double_array': 'a list of numbers'}[self.type]
        if self.length is not None:
            kind = kind.replace('a list of', f'a list of {self.length}')
        if self.range is not None:
            lo, hi = self.range
            kind += f' in [{lo}, {hi}]' + (f' {self.unit}' if self.unit else '')
        return f'must be {kind}'

    def check(self, value: Any, name: str | None = None) -> Any:
        """``value`` if it is valid for this parameter, else ConfigurationError naming it (``name``: the
        parameter's concrete name, for per-camera ones)."""
        name = name or self.name
        if self.type.endswith('_array') and isinstance(value, array.array):
            value = list(value)  # rclpy may hand numeric arrays over as array.array

        def bad():
            return ConfigurationError(f'parameter {name} {self.requirement()}, got {value!r}')
        t = self.type
        if t == 'any':
            return value
        if t == 'string' and not isinstance(value, str):
            raise bad()
        if t == 'bool' and not isinstance(value, bool):
            raise bad()
        if t == 'integer' and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad()
        if t == 'double' and (isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value)):
            raise bad()
        if t == 'string_array' and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            raise bad()
        if t == 'double_array' and not (isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise bad()
        if self.length is not None and len(value) != self.length:
            raise bad()
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise bad()
        if self.choices is not None and value not in self.choices:
            raise bad()
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise bad()
        return value


def _spec(name: str, entry: dict, cameras) -> ParamSpec:
    known = {'type', 'default', 'default_from', 'default_per_camera', 'choices', 'choices_from', 'pattern',
             'pattern_text', 'range', 'length', 'unit', 'per_camera', 'description'}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f'{SCHEMA_FILE}: parameter {name}: unknown keys {unknown} (known: {sorted(known)})')
    if entry.get('type') not in TYPES:
        raise ConfigError(f'{SCHEMA_FILE}: parameter {name}: type must be one of {TYPES}, got {entry.get("type")!r}')
    if not entry.get('description'):
        raise ConfigError(f'{SCHEMA_FILE}: parameter {name} has no description')
    spec = ParamSpec(name=name, type=entry['type'], description=' '.join(str(entry['description']).split()),
                     pattern=entry.get('pattern'), pattern_text=entry.get('pattern_text'),
                     length=entry.get('length'), unit=entry.get('unit'), per_camera=bool(entry.get('per_camera')))
    if spec.per_camera != ('{camera}' in name):
        raise ConfigError(f'{SCHEMA_FILE}: parameter {name}: per_camera must be true exactly when the name holds '
                          '{camera}')
    if 'choices_from' in entry:
        spec.choices_from = entry['choices_from']
        spec.choices = tuple(_resolve(spec.choices_from))
    elif 'choices' in entry:
        spec.choices = tuple(entry['choices'])
    if 'range' in entry:
        lo, hi = entry['range']
        spec.range = (float(lo), float(hi)) if spec.type == 'double' else (int(lo), int(hi))
    if 'default' in entry:
        spec.default, spec.has_default = entry['default'], True
    elif 'default_from' in entry:
        value = _resolve(entry['default_from'])
        spec.default, spec.has_default = list(value) if isinstance(value, tuple) else value, True
        spec.default_text = f'{_code(spec.default)} (`{entry["default_from"]}`)'
    elif 'default_per_camera' in entry:
        template = entry['default_per_camera']
        spec.default, spec.has_default = [template.format(camera=c) for c in cameras], True
        spec.default_text = f'`{template}` for each camera'
    if spec.has_default:
        spec.check(spec.default)  # a schema whose default is invalid is a bug of the schema
    return spec


@lru_cache(maxsize=None)
def _read(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


@lru_cache(maxsize=None)
def _load(path: str) -> tuple[ParamSpec, ...]:
    """The specs (read once per schema file; ``choices_from`` and ``default_from`` name constants of
    ``mapkd_core.constants``)."""
    entries = _read(path)['parameters']
    cameras = _resolve(entries['cameras']['default_from']) if 'default_from' in entries.get('cameras', {}) else ()
    return tuple(_spec(name, entry, cameras) for name, entry in entries.items())


def schema_path() -> Path:
    return config_path(SCHEMA_FILE)


def load_schema(path: str | Path | None = None) -> list[ParamSpec]:
    """Every parameter of the schema, in its order."""
    return list(_load(str(path or schema_path())))


def specs_by_name(path: str | Path | None = None) -> dict[str, ParamSpec]:
    return {s.name: s for s in load_schema(path)}


def node_name(path: str | Path | None = None) -> str:
    return _read(str(path or schema_path()))['node']


def defaults(path: str | Path | None = None) -> dict[str, Any]:
    """name -> default of every parameter that has one (per-camera parameters have none)."""
    return {s.name: s.default for s in load_schema(path) if s.has_default}


def spec_for(name: str, specs: list[ParamSpec] | None = None) -> ParamSpec | None:
    """The spec of a concrete parameter name (``extrinsics.CAM_FRONT.rotation`` -> ``extrinsics.{camera}.rotation``)."""
    for spec in specs if specs is not None else load_schema():
        if spec.name == name:
            return spec
        if spec.per_camera:
            pattern = re.escape(spec.name).replace(re.escape('{camera}'), r'[^.]+')
            if re.fullmatch(pattern, name):
                return spec
    return None


# ------------------------------------------------------------------------------------------------------- ROS
def descriptor(spec: ParamSpec, name: str | None = None, read_only: bool = True):
    """The ``rcl_interfaces/ParameterDescriptor`` of a parameter (API common to Humble, Jazzy and Kilted)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    text = spec.description + (f' [{spec.unit}]' if spec.unit else '')
    constraints = []
    if spec.choices is not None:
        constraints.append(f'one of: {", ".join(map(str, spec.choices))}')
    if spec.pattern is not None:
        constraints.append(spec.pattern_text or f'matches {spec.pattern}')
    if spec.length is not None:
        constraints.append(f'{spec.length} values')
    d = ParameterDescriptor(name=name or spec.name, description=text, additional_constraints='; '.join(constraints),
                            read_only=read_only)
    if spec.type == 'any' or spec.per_camera:
        d.dynamic_typing = True  # compressed: a string or bools; extrinsics: numbers that may be written as ints
    if spec.range is not None and spec.type == 'double':
        d.floating_point_range = [FloatingPointRange(from_value=spec.range[0], to_value=spec.range[1], step=0.0)]
    elif spec.range is not None and spec.type == 'integer':
        d.integer_range = [IntegerRange(from_value=spec.range[0], to_value=spec.range[1], step=0)]
    return d


# ------------------------------------------------------------------------------------------------------ docs
def _code(value: Any) -> str:
    if isinstance(value, bool):
        text = 'true' if value else 'false'
    elif isinstance(value, str):
        text = value if value else "''"
    elif isinstance(value, (list, tuple)):
        text = '[' + ', '.join(_code(v).strip('`') for v in value) + ']'
    else:
        text = repr(value)
    return f'`{text}`'


def render_markdown(path: str | Path | None = None) -> str:
    """The parameter table of docs/node.md (Markdown, no trailing newline)."""
    rows = ['| Name | Type | Default | Values | Unit | Description |', '|---|---|---|---|---|---|']
    for s in load_schema(path):
        if s.default_text:
            default = s.default_text
        elif s.has_default:
            default = _code(s.default)
        else:
            default = 'none (required)'
        values = []
        if s.choices is not None:
            values.append(', '.join(f'`{c}`' for c in s.choices)
                          + (f' (`{s.choices_from}`)' if s.choices_from else ''))
        if s.pattern is not None:
            values.append(s.pattern_text or f'`{s.pattern}`')
        if s.range is not None:
            values.append(f'[{s.range[0]}, {s.range[1]}]')
        if s.length is not None:
            values.append(f'{s.length} values')
        name = s.name.replace('{camera}', '<camera>')
        rows.append(f'| `{name}` | {s.type} | {default} | {"; ".join(values)} | {s.unit or ""} | {s.description} |')
    return '\n'.join(rows)


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between TABLE_BEGIN and TABLE_END replaced by ``table``."""
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ConfigError(f'no parameter table markers ({TABLE_BEGIN!r} ... {TABLE_END!r}) in the document')
    return text[:begin + len(TABLE_BEGIN)] + '\n\n' + table + '\n\n' + text[end:]


def table_in(text: str) -> str:
    """The table between the markers of a document."""
    begin, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ConfigError('no parameter table markers in the document')
    return text[begin + len(TABLE_BEGIN):end].strip('\n')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m mapkd_ros.params', description=__doc__.split('\n')[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--markdown', action='store_true', help='print the parameter table (Markdown)')
    g.add_argument('--write', metavar='DOC', help='replace the table between its markers in DOC (docs/node.md)')
    args = p.parse_args(argv)
    try:
        table = render_markdown()
        if args.markdown:
            print(table)
        else:
            doc = Path(args.write)
            doc.write_text(replace_table(doc.read_text(), table))
            print(f'wrote the parameter table into {doc}')
    except (ConfigError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
