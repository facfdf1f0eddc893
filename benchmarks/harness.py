"""Shared benchmark harness: warm-up, repeated timing, machine facts, JSON output.

Every benchmark reports the median, min and max of several runs after warm-up, with the machine it ran on.
Numbers are measured, never asserted in tests.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def machine_info() -> dict:
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as fh:
            for line in fh:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info = {'cpu': cpu, 'cpu_count': os.cpu_count(), 'python': platform.python_version(),
            'platform': platform.platform()}
    try:
        with open('/proc/meminfo', encoding='utf-8') as fh:
            info['mem_gb'] = round(int(fh.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch
        info['torch'] = torch.__version__
        info['torch_threads'] = torch.get_num_threads()
        if torch.cuda.is_available():
            info['gpu'] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def bundled_keyframe():
    """The bundled real nuScenes keyframe (``Frame``: six 1600x900 JPEGs with calibration) that benchmarks run on."""
    from mapkd_core.config import load_config
    from mapkd_core.data.index import NuScenesIndex
    from mapkd_core.paths import config_path
    return NuScenesIndex.from_config(load_config(config_path('data/bundled.yaml')))[0]


def sync_cuda() -> None:
    """Wait for queued CUDA work, so that timings include it (no-op without CUDA)."""
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def time_runs(fn: Callable[[], object], warmup: int = 2, repeats: int = 7) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; seconds per run."""
    for _ in range(warmup):
        fn()
    sync_cuda()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync_cuda()
        runs.append(time.perf_counter() - t0)
    return summarize(runs)


def summarize(runs: list[float]) -> dict:
    ordered = sorted(runs)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {'median': statistics.median(runs), 'min': ordered[0], 'max': ordered[-1], 'p95': p95,
            'runs': len(runs)}


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write ``payload`` plus the machine facts and a UTC timestamp to ``<out_dir>/<name>.json``."""
    out_dir = Path(out_dir) if out_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {'benchmark': name, 'time_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
           'machine': machine_info(), **payload}
    path = out_dir / f'{name}.json'
    path.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    return path
