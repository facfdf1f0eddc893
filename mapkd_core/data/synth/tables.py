"""nuScenes v1.0 tables for the synthetic dataset: consistent tokens, prev/next chains, one scene per track (a real
one or a virtual drive).

Every table the devkit's ``NuScenes`` loads is written. ``category``, ``attribute``, ``visibility`` and ``sensor`` are
copied from the bundled real tables (byte-identical to v1.0-mini); ``instance`` and ``sample_annotation`` are empty.
Tokens are deterministic (an md5 of a readable key), so the same generation gives the same tables.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ...geometry import matrix_to_quaternion

COPIED_TABLES = ('category', 'attribute', 'visibility', 'sensor')
EMPTY_TABLES = ('instance', 'sample_annotation')


def token(*parts) -> str:
    """A 32-hex-digit token from readable parts, stable across runs."""
    return hashlib.md5('/'.join(str(p) for p in parts).encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def pose_row(tok: str, timestamp: int, x: float, y: float, yaw: float) -> dict:
    return {'token': tok, 'timestamp': int(timestamp), 'rotation': yaw_quaternion(yaw),
            'translation': [float(x), float(y), 0.0]}


def calibrated_row(tok: str, sensor_token: str, sensor_to_ego: np.ndarray, intrinsic: np.ndarray | None) -> dict:
    return {'token': tok, 'sensor_token': sensor_token,
            'translation': [float(v) for v in sensor_to_ego[:3, 3]],
            'rotation': [float(v) for v in matrix_to_quaternion(sensor_to_ego[:3, :3])],
            'camera_intrinsic': [] if intrinsic is None else [[float(v) for v in row] for row in intrinsic]}


def link(rows: list[dict]) -> list[dict]:
    """Set prev/next along a list of rows already in time order."""
    for i, r in enumerate(rows):
        r['prev'] = rows[i - 1]['token'] if i > 0 else ''
        r['next'] = rows[i + 1]['token'] if i + 1 < len(rows) else ''
    return rows


def write_tables(root: Path, version: str, tables: dict[str, list], source_tables: Path) -> None:
    """Write every table JSON under ``root/version``; copied and empty tables are added here."""
    out = root / version
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED_TABLES:
        shutil.copyfile(source_tables / f'{name}.json', out / f'{name}.json')
    for name in EMPTY_TABLES:
        tables.setdefault(name, [])
    for name, rows in tables.items():
        (out / f'{name}.json').write_text(json.dumps(rows, indent=0, sort_keys=True), encoding='utf-8')
