"""Model weights that leave a training run: safetensors with the model config embedded, loaded strictly.

``save_weights`` writes ``<name>.safetensors`` whose metadata holds the model config (YAML) and a format tag, so one
file is a complete model package; ``load_model`` rebuilds the model from it. Loading is always strict: a missing,
unexpected or mis-shaped key is a :class:`WeightsMismatchError` naming the keys; an unreadable file is one too.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..config import from_dict, to_dict
from ..errors import WeightsMismatchError, WeightsNotFoundError
from .blocks import describe_mismatch
from .config import ModelConfig

FORMAT = 'mapkd-weights-v1'


def without_init_weights(cfg: ModelConfig) -> ModelConfig:
    """The config with the ImageNet initialisation files removed: a saved model carries all its weights."""
    from dataclasses import replace
    return replace(cfg, encoder=replace(cfg.encoder, weights=None),
                   lss=replace(cfg.lss, encoder=replace(cfg.lss.encoder, weights=None)))


def model_config_yaml(cfg: ModelConfig) -> str:
    return yaml.safe_dump(to_dict(without_init_weights(cfg)), sort_keys=False)


def save_weights(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write the model's state dict and config to a safetensors file (written to a temp file, then renamed)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {'format': FORMAT, 'model_config': model_config_yaml(model.cfg)}
    if extra:
        meta['extra'] = json.dumps(extra, sort_keys=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors file; an unreadable file is a WeightsMismatchError naming it."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f'weights file not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # truncated, corrupt or not safetensors at all
        raise WeightsMismatchError(f'cannot read weights file {path}: it is corrupt or not a safetensors file '
                                   f'({exc})') from None
    return state, meta


def config_of(path: str | Path) -> ModelConfig:
    """The model config embedded in a weights file."""
    _, meta = read_weights(path)
    if meta.get('format') != FORMAT or 'model_config' not in meta:
        raise WeightsMismatchError(f'{path} has no embedded mapkd model config (not written by save_weights)')
    return from_dict(ModelConfig, yaml.safe_load(meta['model_config']), source=f'{path} (embedded model config)')


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}' for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        name = getattr(getattr(model, 'cfg', None), 'name', type(model).__name__)
        raise WeightsMismatchError(f'{source} does not fit the {name} model: '
                                   + describe_mismatch(missing, unexpected, shapes))
    model.load_state_dict(state, strict=True)


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a safetensors file into ``model`` strictly; the embedded config must match the model's."""
    state, meta = read_weights(path)
    cfg = getattr(model, 'cfg', None)
    if cfg is not None and 'model_config' in meta:
        saved = config_of(path)
        if saved.name != cfg.name:
            raise WeightsMismatchError(f'{path} holds a {saved.name} model, not a {cfg.name}')
    load_state_strict(model, state, str(path))
    return model


def load_model(path: str | Path, map_location: str | torch.device = 'cpu'):
    """Rebuild the model from the config embedded in a weights file and load its weights."""
    import warnings
    from .networks import build_model
    cfg = without_init_weights(config_of(path))
    with warnings.catch_warnings():  # weights follow: the encoder's "no ImageNet weights" warning is moot here
        warnings.filterwarnings('ignore', message='no ImageNet weights')
        model = build_model(cfg)
    load_weights(model, path)
    return model.to(map_location)


def load_any(path: str | Path, model_config: str | Path | None = None, map_location: str = 'cpu'):
    """A model from a weights file (``.safetensors``, config embedded) or a training checkpoint (``.pt``, written
    by the trainer: ``{'model': state_dict, 'model_config': yaml, ...}``, read with ``weights_only=True``).

    ``model_config`` (a YAML path or shipped name) builds the model instead of the embedded config; the weights must
    then fit it exactly.
    """
    import warnings
    from .networks import build_model
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f'weights file not found: {path}')
    if path.suffix == '.pt':
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as exc:
            raise WeightsMismatchError(f'cannot read checkpoint {path}: {exc}') from None
        if not isinstance(ckpt, dict) or 'model' not in ckpt or 'model_config' not in ckpt:
            raise WeightsMismatchError(f'{path} is not a mapkd training checkpoint (needs model and model_config)')
        cfg = from_dict(ModelConfig, yaml.safe_load(ckpt['model_config']), source=f'{path} (model_config)')
        state = ckpt['model']
    else:
        cfg, state = None, None
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='no ImageNet weights')
        if model_config is not None:
            model = build_model(str(model_config))
        elif cfg is not None:
            model = build_model(without_init_weights(cfg))
        else:
            return load_model(path, map_location)
    if state is not None:
        load_state_strict(model, state, str(path))
    else:
        load_weights(model, path)
    return model.to(map_location)
