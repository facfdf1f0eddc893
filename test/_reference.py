"""Helpers for the reference-fixture tests (test/fixtures/reference, see its README.md): the authors' state dicts
built from the key files with the README's weight formula, the fixed inputs and the authors' outputs."""
from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'reference'
AUTHOR_MODELS = ('HDMapNet_cam', 'PMapNet_sdmap_S', 'PMapNet_sdmap_C', 'PMapNet_mae_head')
#: tolerance: max abs difference <= TOL x the tensor's max magnitude
TOL = 1e-4


def keys_of(author: str) -> dict:
    return json.loads((FIXTURES / f'{author}.keys.json').read_text())


def formula_value(key: str, spec: dict) -> torch.Tensor:
    """The README's weight formula for one state-dict key."""
    shape = tuple(spec['shape'])
    if key.endswith(('.dx', '.bx', '.nx', '.frustum')):
        dtype = torch.float32 if spec['dtype'] == 'float32' else torch.int64
        return torch.tensor(spec['value'], dtype=dtype).reshape(shape)
    if spec['dtype'] in ('int64', 'int32'):
        return torch.zeros(shape, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:15], 16))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if key.endswith('running_var'):
        return 1 + 0.5 * x.abs()
    if key.endswith('running_mean'):
        return 0.1 * x
    if x.dim() >= 2:
        return x / math.sqrt(math.prod(shape[1:]))
    if key.endswith('.weight') and x.dim() == 1:
        return 1 + 0.1 * x
    return 0.02 * x


def author_state(author: str) -> dict[str, torch.Tensor]:
    """The authors' state dict of ``author`` (as their training script saves it), with the formula's weights."""
    return {k: formula_value(k, spec) for k, spec in keys_of(author).items()}


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(FIXTURES / name))


def reference_inputs() -> dict[str, torch.Tensor]:
    return dict(_load('inputs.safetensors'))


def reference_outputs(author: str) -> dict[str, torch.Tensor]:
    return dict(_load(f'{author}.outputs.safetensors'))


def pool8(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 8)


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    assert ours.shape == theirs.shape, (tuple(ours.shape), tuple(theirs.shape))
    return float((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max().clamp_min(1e-12))


def ours_vs_theirs(author: str, out) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (ours, theirs) of every output the fixture stores for ``author``, ours shaped as theirs (pooled 8 x 8
    where theirs is)."""
    ref = reference_outputs(author)
    f = out.features
    if author == 'HDMapNet_cam':
        return {'semantic': (out.semantic, ref['out.0']), 'embedding': (pool8(out.embedding), ref['out.1.pool8']),
                'direction': (pool8(out.direction), ref['out.2.pool8'])}
    pairs = {'semantic': (out.semantic, ref['out.0.0']),
             'embedding': (pool8(out.embedding), ref['out.0.1.pool8']),
             'direction': (pool8(out.direction), ref['out.0.2.pool8'])}
    if author == 'PMapNet_sdmap_S':
        pairs.update({'camera_bev': (pool8(f['camera_bev']), ref['out.1.pool8']), 'bev_small': (out.bev, ref['out.2'])})
    elif author == 'PMapNet_sdmap_C':
        pairs.update({'camera_bev': (pool8(f['camera_bev']), ref['out.1.pool8']),
                      'sim_lidar_bev': (pool8(f['sim_lidar_bev']), ref['out.2.pool8']),
                      'bev_small': (out.bev, ref['out.3']), 'bev_out': (f['bev_out'], ref['out.4'])})
    elif author == 'PMapNet_mae_head':
        pairs.update({'lidar_bev': (pool8(f['lidar_bev']), ref['out.1.pool8']), 'bev_small': (out.bev, ref['out.2']),
                      'bev_out': (f['bev_out'], ref['out.3'])})
    return pairs
