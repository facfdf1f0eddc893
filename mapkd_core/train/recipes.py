"""Shipped training recipes pointed at stand-in frozen models: for checks and benchmarks that run a recipe without
its trained teacher / coach / HD prior (the test that every CPU recipe takes a step, the throughput benchmark)."""
from __future__ import annotations

import warnings
from pathlib import Path

import yaml

from ..paths import config_dir

#: the models a student / coach / teacher recipe reads as frozen weights
FROZEN_ROLES = ('hd_prior', 'teacher', 'coach')
#: the frozen model a stage's ``init`` starts from: the teacher's HD head from the HD prior, the coach from the teacher
INIT_ROLE = {'teacher': 'hd_prior', 'coach': 'teacher'}


def recipe_dict(name: str) -> dict:
    """The raw mapping of ``config/train/<name>.yaml``."""
    return yaml.safe_load((config_dir() / 'train' / f'{name}.yaml').read_text())


def untrained_frozen(folder: Path, suffix: str = '_cpu', seed: int = 0) -> dict[str, Path]:
    """Weights packages of untrained ``hd_prior<suffix>``, ``teacher<suffix>`` and ``coach<suffix>`` models (their
    ImageNet encoders where they have one, the rest random with ``seed``), written into ``folder``."""
    import torch

    from ..models import build_model, save_weights
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # 'no ImageNet weights' where an encoder has none
        return {name: save_weights(build_model(f'{name}{suffix}'), Path(folder) / f'{name}.safetensors')
                for name in FROZEN_ROLES}


def with_frozen(cfg: dict, frozen: dict[str, Path]) -> dict:
    """``cfg`` (a recipe mapping) with its teacher / coach weights and its ``init`` (``INIT_ROLE`` of its stage)
    replaced by the packages in ``frozen`` (from :func:`untrained_frozen`); keys the recipe does not have stay absent."""
    cfg = dict(cfg)
    for role in ('teacher', 'coach'):
        if role in cfg:
            cfg[role] = str(frozen[role])
    if cfg.get('init'):
        cfg['init'] = {**cfg['init'], 'path': str(frozen[INIT_ROLE[cfg['stage']]])}
    return cfg
