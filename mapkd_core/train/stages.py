"""What each training stage builds and optimises: the trained model, the frozen teacher / coach, and the losses.

:class:`TrainModule` holds everything that learns (the model and, when TGPD is on, its persistent projections) and
computes the loss in ``forward``, so that one ``DistributedDataParallel`` wrapper synchronises all of it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import DataConfig, merge, replace
from ..distill import MsrdLoss, TaskLoss, TgpdLoss
from ..distill.losses import embedding_relation_loss, instance_response_loss
from ..errors import ConfigError, ConfigNotFoundError, WeightsMismatchError
from ..models import build_model
from ..models.blocks import describe_mismatch
from ..models.io import load_any, read_weights
from ..paths import config_dir
from .config import InitConfig, TrainConfig


def load_frozen(path: str, role: str, device) -> nn.Module:
    """A teacher or coach: weights loaded strictly, eval mode (no dropout, BN running statistics), no gradients."""
    model = load_any(path, map_location=device)
    model.eval()
    model.requires_grad_(False)
    return model


def init_from(model: nn.Module, init: InitConfig) -> dict:
    """Explicit partial initialisation (see InitConfig); returns {'loaded': n, 'uninitialized': [...]}."""
    path = Path(init.path)
    if path.suffix == '.pt':
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        state = ckpt['model']
    else:
        state, _ = read_weights(path)
    renamed = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in init.exclude):
            continue
        new = key
        for old, repl in init.rename.items():
            if key.startswith(old):
                new = repl + key[len(old):]
                break
        renamed[new] = value
    own = model.state_dict()
    unexpected = [k for k in renamed if k not in own]
    shapes = [f'{k} {tuple(renamed[k].shape)} != {tuple(own[k].shape)}' for k in renamed
              if k in own and renamed[k].shape != own[k].shape]
    uncovered = [k for k in own if k not in renamed and not any(k.startswith(p) for p in init.allow_uninitialized)]
    if unexpected or shapes or uncovered:
        raise WeightsMismatchError(f'init from {path}: ' + describe_mismatch(uncovered, unexpected, shapes) +
                                   ' (rename keys with init.rename, skip them with init.exclude, or list model '
                                   'prefixes that may stay uninitialised in init.allow_uninitialized)')
    merged = dict(own)
    merged.update(renamed)
    model.load_state_dict(merged, strict=True)
    return {'loaded': len(renamed), 'uninitialized': [k for k in own if k not in renamed]}


def resolve_config_path(value: str) -> Path:
    p = Path(value)
    if p.is_file():
        return p
    q = config_dir() / value
    if q.is_file():
        return q
    raise ConfigNotFoundError(f'config not found: {value} (neither a file nor config/{value})')


class TrainModule(nn.Module):
    """The learning part of a stage: ``model`` (+ ``tgpd`` projections); ``forward`` returns the loss terms."""

    def __init__(self, cfg: TrainConfig, model: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.model = model
        w = cfg.loss
        self.task = TaskLoss(seg=w.seg, var=w.var, dist=w.dist, direction=w.direction, pos_weight=w.pos_weight,
                             delta_v=w.delta_v, delta_d=w.delta_d)
        d = cfg.distill
        self.msrd = MsrdLoss(teacher_weight=d.msrd_teacher, coach_weight=d.msrd_coach, mask=d.msrd_mask) \
            if d.msrd_teacher > 0 or d.msrd_coach > 0 else None
        self.tgpd = None
        if d.uses_tgpd:
            bev = model.cfg.bev_channels
            h, w_ = model.cfg.grid.shape
            self.tgpd = TgpdLoss(channels=bev, patch=d.tgpd_patch, dim=d.tgpd_dim, tau=d.tgpd_tau,
                                 mse_weight=d.tgpd_mse, teacher_weight=d.tgpd_teacher, coach_weight=d.tgpd_coach,
                                 feature_hw=(h // 8, w_ // 8), normalize=d.tgpd_normalize,
                                 kl_reduction=d.tgpd_kl_reduction)

    def forward(self, batch: dict, teacher_out=None, coach_out=None, model_input: dict | None = None) -> dict:
        out = self.model(**model_input) if model_input is not None else self.model.forward_batch(batch)
        losses = self.task(out, batch)
        total = losses['total']
        if self.cfg.loss.stage1_seg > 0:
            stage1 = out.features.get('stage1_semantic') if out.features else None
            if stage1 is None:
                raise ConfigError(f'loss.stage1_seg: {self.cfg.model} has no first-stage semantic output '
                                  f'(only prior-fused models with an HD head have one)')
            losses['stage1_seg'] = self.task.segmentation(stage1, batch['semantic'])
            total = total + self.cfg.loss.stage1_seg * losses['stage1_seg']
        if self.msrd is not None:
            m = self.msrd(out.semantic, batch['semantic'],
                          teacher_logits=teacher_out.semantic if teacher_out is not None else None,
                          coach_logits=coach_out.semantic if coach_out is not None else None)
            losses.update(m)
            total = total + m['msrd']
        d = self.cfg.distill
        if d.erd_teacher > 0:
            losses['erd_teacher'] = embedding_relation_loss(out.embedding, teacher_out.embedding, batch['semantic'])
            total = total + d.erd_teacher * losses['erd_teacher']
        if d.ird_teacher > 0:
            ird = instance_response_loss(out.embedding, out.direction, teacher_out.embedding, teacher_out.direction,
                                         teacher_out.semantic, batch['semantic'], d.ird_mask)
            losses['ird_embedding'], losses['ird_direction'] = ird['embedding'], ird['direction']
            losses['ird_teacher'] = ird['embedding'] + ird['direction']
            total = total + d.ird_teacher * losses['ird_teacher']
        if self.tgpd is not None:
            t = self.tgpd(out.bev, teacher_bev=teacher_out.bev if teacher_out is not None else None,
                          coach_bev=coach_out.bev if coach_out is not None else None)
            losses.update(t)
            total = total + t['tgpd']
        losses['total'] = total
        return losses


class Stage:
    """Builds the stage's models and data config from a TrainConfig."""

    def __init__(self, cfg: TrainConfig, device='cpu'):
        self.cfg = cfg
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='no ImageNet weights')  # reported once by the trainer
            model = build_model(str(resolve_config_path(cfg.model)) if not _is_name(cfg.model) else cfg.model)
        if cfg.stage == 'hd_prior' and model.cfg.name != 'hd_prior':
            raise ConfigError(f'stage hd_prior trains an hd_prior model, {cfg.model} is a {model.cfg.name}')
        if cfg.stage in ('teacher', 'coach') and model.cfg.name != cfg.stage:
            raise ConfigError(f'stage {cfg.stage} trains a {cfg.stage}, {cfg.model} is a {model.cfg.name}')
        if cfg.stage == 'student' and model.cfg.name not in ('student', 'student_edge', 'hdmapnet_cam'):
            raise ConfigError(f'stage student trains a student, student_edge or hdmapnet_cam (the paper\'s baseline), '
                              f'{cfg.model} is a {model.cfg.name}')
        self.init_report = init_from(model, cfg.init) if cfg.init and cfg.init.path else None
        for name, p in model.named_parameters():
            if any(name.startswith(f) for f in cfg.freeze):
                p.requires_grad_(False)
        self.model = model
        d = cfg.distill
        self.teacher = load_frozen(cfg.teacher, 'teacher', self.device) if d.uses_teacher else None
        self.coach = load_frozen(cfg.coach, 'coach', self.device) if d.uses_coach else None
        for role, other in (('teacher', self.teacher), ('coach', self.coach)):
            if other is not None and (other.cfg.grid != model.cfg.grid or other.cfg.image.cameras !=
                                      model.cfg.image.cameras):
                raise ConfigError(f'the {role} ({other.cfg.name}) was trained on another grid or camera set than '
                                  f'the {model.cfg.name}: {other.cfg.grid} vs {model.cfg.grid}')
            if other is not None and (tuple(other.cfg.image.mean) != tuple(model.cfg.image.mean) or
                                      tuple(other.cfg.image.std) != tuple(model.cfg.image.std)):
                raise ConfigError(f'the {role} ({other.cfg.name}) normalises its images with mean '
                                  f'{list(other.cfg.image.mean)} / std {list(other.cfg.image.std)}, the '
                                  f'{model.cfg.name} with {list(model.cfg.image.mean)} / {list(model.cfg.image.std)}: '
                                  f'they share one batch of images, so both must use the same image.mean/std')
            if other is not None and d.uses_tgpd and other.cfg.bev_channels != model.cfg.bev_channels:
                raise ConfigError(f'TGPD needs the same BEV channels: {role} {other.cfg.bev_channels} vs '
                                  f'{model.cfg.bev_channels}')
        if self.teacher is not None and d.ird_teacher > 0:
            heads = {h: (model.head_channels[h], self.teacher.head_channels[h]) for h in ('embedding', 'direction')}
            bad = [f'{h} {own} vs {theirs}' for h, (own, theirs) in heads.items() if own != theirs]
            if bad:
                raise ConfigError(f'distill.ird_teacher regresses the teacher\'s instance heads, which need the same '
                                  f'channels: {", ".join(bad)} ({model.cfg.name} vs the teacher)')
        self.module = TrainModule(cfg, model).to(self.device)

    def data_config(self) -> DataConfig:
        """The data config with the model's grid and images, loading what any of the stage's models reads."""
        from ..config import from_dict, load_yaml
        path = resolve_config_path(self.cfg.data)
        data = merge(load_yaml(path), self.cfg.data_overrides) if self.cfg.data_overrides else load_yaml(path)
        base = from_dict(DataConfig, data, source=str(path))
        needed = set(self.model.inputs)
        for m in (self.teacher, self.coach):
            if m is not None:
                needed |= set(m.inputs)
        mc = self.model.cfg
        # the images are the model's: its size, cameras and normalisation (the one its encoder weights expect)
        image = replace(base.image, height=mc.image.height, width=mc.image.width, cameras=mc.image.cameras,
                        mean=mc.image.mean, std=mc.image.std) if self.cfg.stage != 'hd_prior' else base.image
        ds = replace(base.dataset, load_images='images' in needed, load_lidar='lidar' in needed,
                     load_sd_prior='sd_prior' in needed, load_map_gt=True)
        return replace(base, grid=mc.grid, image=image, dataset=ds)

    def trainable_parameters(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def train_mode(self) -> None:
        """The trained module in train mode, the frozen teacher and coach in eval mode, and with ``freeze_eval``
        every module of the model whose parameters are all frozen in eval mode too."""
        self.module.train()
        for frozen in (self.teacher, self.coach):
            if frozen is not None:
                frozen.eval()
        if self.cfg.freeze_eval:
            for m in self.model.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()

    def frozen_prefixes(self) -> dict[str, int]:
        """The trained model's camera encoders with a frozen prefix the trainer may cache, {module name: blocks}:
        with ``freeze_eval``, each of the model's ``prefix_encoders`` whose stem and leading blocks have all their
        parameters frozen (at most up to the first endpoint it fuses); empty without ``freeze_eval``."""
        if not self.cfg.freeze_eval:
            return {}
        blocks = {name: enc.frozen_prefix_blocks() for name, enc in self.model.prefix_encoders().items()}
        return {name: n for name, n in blocks.items() if n}

    @torch.no_grad()
    def frozen_outputs(self, batch: dict):
        t = self.teacher.forward_batch(batch) if self.teacher is not None else None
        c = self.coach.forward_batch(batch) if self.coach is not None else None
        return t, c

    def model_input(self, batch: dict, generator: torch.Generator | None):
        """The hd_prior stage feeds block-masked ground truth; other stages use the batch as it is."""
        if self.cfg.stage != 'hd_prior':
            return None
        from ..models.hd_prior import mask_map
        hp = self.cfg.hd_pretrain
        masked = mask_map(batch['semantic'].float(), generator, ratio=hp.mask_ratio, grid_choices=hp.grid_choices)
        return {'semantic_map': masked}


def _is_name(value: str) -> bool:
    return '/' not in value and not value.endswith('.yaml')

