"""Generate-once cache of synthetic dataroots, shared by tests, the demo and ``dataset.dataroot: synthetic``.

A dataroot is keyed by its generation parameters, the generator version and a digest of the generator's code, and
lives in ``<cache root>/synth-<key>`` (:func:`mapkd_core.paths.cache_root`: ``$MAPKD_CACHE``, default
``~/.cache/mapkd``). Generation happens under a file lock into a temporary folder that is renamed when complete, so
concurrent processes and interrupted runs never see half a dataset.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from pathlib import Path

from ...paths import cache_root
from .generate import GENERATOR_VERSION, SynthConfig, generate

#: ``dataroot: synthetic_drives``: the ten real-track scenes plus at least 6,000 geo_train and 1,000 geo_val
#: keyframes of virtual drives, rendered at 704 x 396 (a training resolution: 2x the paper's 352 x 128 crop width)
DRIVES = SynthConfig(drives=True, width=704)


def _code_digest() -> str:
    """Digest of the generator's source, so that a changed renderer never reuses a stale dataset."""
    h = hashlib.md5()
    for path in sorted(Path(__file__).parent.glob('*.py')):
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(cfg: SynthConfig) -> str:
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ('workers', 'source')}
    params['generator_version'] = GENERATOR_VERSION
    params['code'] = _code_digest()
    return hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def synthetic_dataroot(cfg: SynthConfig | None = None, root: str | Path | None = None,
                       progress: bool = True) -> Path:
    """The dataroot for ``cfg`` (default: all ten scenes at keyframe rate, 800x450, seed 0), generated on first use."""
    cfg = cfg or SynthConfig()
    root = Path(root) if root else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f'synth-{cache_key(cfg)}'
    if (path / 'synth.json').is_file():
        return path
    with open(root / f'synth-{cache_key(cfg)}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / 'synth.json').is_file():
            if progress:
                print(f'mapkd: generating the synthetic dataset into {path} (once; later runs reuse it)', flush=True)
            generate(path, cfg, progress=progress, overwrite=True)
    return path
