"""Training experiment configuration: one YAML per experiment under ``config/train/``.

A stage is one of:

* ``hd_prior``: masked-autoencoder pre-training of the HD-map prior on ground-truth rasters (block masking);
* ``teacher``: supervised training of the teacher (camera + LiDAR + SD [+ HD head, initialised from hd_prior]);
* ``coach``: distillation of the coach from the frozen teacher (TGPD + MSRD);
* ``student``: distillation of a student from the frozen teacher and coach (both in eval mode); with all
  distillation weights at zero (and no teacher/coach) it is the baseline student on the same schedule.

Defaults are the method doc's (section 5): Adam lr 5e-4, StepLR(10, 0.1), gradient clipping at 5.0, task-loss
weights 1 / 0.1 / 0.1 / 0.1 with pos_weight 2.13; distillation weights of MapKD's scripts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ..config import from_dict, load_yaml, merge
from ..errors import ConfigError


@dataclass(frozen=True)
class LossWeights:
    seg: float = 1.0
    var: float = 0.1
    dist: float = 0.1
    direction: float = 0.1
    #: BCE weight of the positive pixels: one number for all four channels (the method) or one per channel in the class
    #: order (background, divider, ped_crossing, boundary), e.g. to weight the rare crossings up (not in the method)
    pos_weight: float | tuple[float, float, float, float] = 2.13
    delta_v: float = 0.5
    delta_d: float = 3.0
    #: deep supervision of a prior-fused model's first-stage semantic logits (``features['stage1_semantic']``, the
    #: input of the HD-prior head) with the segmentation loss, at this weight. 0 (the method) trains the first stage
    #: only through the HD head. P-MapNet instead trains the first stage (C+L+SD) alone for 30 epochs before adding
    #: the MAE head; at the CPU budget one joint run with this term stands in for that schedule (docs/training.md).
    stage1_seg: float = 0.0

    def validate(self, where: str) -> None:
        values = (self.pos_weight,) if isinstance(self.pos_weight, float) else self.pos_weight
        if any(v <= 0 for v in values):
            raise ConfigError(f'{where}pos_weight: must be > 0, got {self.pos_weight!r}')


@dataclass(frozen=True)
class DistillConfig:
    """Distillation weights (0 disables a term) and the TGPD settings."""

    msrd_teacher: float = 0.0
    msrd_coach: float = 0.0
    tgpd_teacher: float = 0.0
    tgpd_coach: float = 0.0
    tgpd_patch: int = 5
    tgpd_dim: int = 512
    tgpd_mse: float = 0.5
    tgpd_tau: float = 1.0
    #: standardise both feature maps per sample (zero mean, unit variance over C, H, W) before TGPD; off in the
    #: method (raw features), an option for weak or unnormalised targets (see the README's ablation)
    tgpd_normalize: bool = False
    #: 'sum' (the method: the attention KL summed over its 1 + N rows, / B) or 'mean' (also / (1 + N)); with the
    #: method's sum the KL's gradient was about 200x the task loss's on the CPU recipes (docs/training.md)
    tgpd_kl_reduction: str = 'sum'
    #: MSRD's pixels: 'foreground' (the method: every GT foreground pixel), 'correct' (only those where the target's
    #: argmax is right) or 'all' (every pixel); the last two are not in the method
    msrd_mask: str = 'foreground'
    #: ERD (not in the method): the student's instance-embedding distances between GT foreground pixels towards the
    #: teacher's (``distill.losses.embedding_relation_loss``); MSRD distils the semantic head only
    erd_teacher: float = 0.0
    #: IRD (not in the method): the student's embedding and direction heads regressed towards the teacher's
    #: (``distill.losses.instance_response_loss``: embedding MSE + direction KL), at the pixels ``ird_mask`` names
    #: (``msrd_mask``'s choices; default 'correct': GT foreground where the teacher's argmax is right)
    ird_teacher: float = 0.0
    ird_mask: str = 'correct'

    @property
    def uses_teacher(self) -> bool:
        return self.msrd_teacher > 0 or self.tgpd_teacher > 0 or self.erd_teacher > 0 or self.ird_teacher > 0

    @property
    def teacher_heads(self) -> tuple[str, ...]:
        """The teacher's instance heads the losses read, beyond its semantic logits and BEV feature."""
        return (('embedding',) if self.erd_teacher > 0 or self.ird_teacher > 0 else ()) + \
            (('direction',) if self.ird_teacher > 0 else ())

    @property
    def uses_coach(self) -> bool:
        return self.msrd_coach > 0 or self.tgpd_coach > 0

    @property
    def uses_tgpd(self) -> bool:
        return self.tgpd_teacher > 0 or self.tgpd_coach > 0


@dataclass(frozen=True)
class InitConfig:
    """Explicit partial initialisation from another weights file: keys are renamed by prefix, keys matching
    ``exclude`` prefixes are skipped; every other key of the file must exist in the model with the same shape, and
    every model key not covered must match an ``allow_uninitialized`` prefix (nothing is silently ignored)."""

    path: str = ''
    rename: dict = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    allow_uninitialized: tuple[str, ...] = ()


@dataclass(frozen=True)
class HdPretrainConfig:
    """Block masking of the MAE pre-training (P-MapNet): ratio < 0 draws it per sample."""

    mask_ratio: float = 0.5
    grid_choices: tuple[int, ...] = (25, 20, 10, 8)


@dataclass(frozen=True)
class TrainConfig:
    stage: Literal['hd_prior', 'teacher', 'coach', 'student']
    #: model YAML path or shipped name (config/models/<name>.yaml)
    model: str
    #: data YAML path or a path relative to config/ (e.g. data/synthetic.yaml), plus overrides merged over it
    data: str = 'data/synthetic.yaml'
    data_overrides: dict = field(default_factory=dict)
    train_split: str = 'mini_train'
    val_split: Optional[str] = 'mini_val'
    #: frozen models for distillation: weights files (.safetensors or .pt checkpoints)
    teacher: Optional[str] = None
    coach: Optional[str] = None
    init: Optional[InitConfig] = None
    #: parameter-name prefixes to freeze (requires_grad False; e.g. fine-tune only the HD head)
    freeze: tuple[str, ...] = ()
    #: modules whose parameters are all frozen run in eval mode while training: their batch norm normalises with
    #: its running statistics and keeps them, their stochastic depth is off. Without it a frozen layer still
    #: normalises with each batch's statistics. With ``cache``, the frozen prefix of an encoder that supports it
    #: (the edge student's) is then computed once per sample and cached (train/cache.py)
    freeze_eval: bool = False
    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_step: int = 10
    lr_gamma: float = 0.1
    grad_clip: float = 5.0
    #: mixed precision on CUDA ('auto' = on when training on a GPU; never on the CPU)
    amp: Literal['auto', 'on', 'off'] = 'auto'
    seed: int = 0
    #: DataLoader worker processes (0 = load in the training process)
    workers: int = 0
    #: cache what does not change between epochs and runs under $MAPKD_CACHE (train/cache.py): the decoded, resized
    #: images, LiDAR and rasters of every sample, and the frozen teacher's and coach's outputs; same results
    cache: bool = False
    loss: LossWeights = field(default_factory=LossWeights)
    distill: DistillConfig = field(default_factory=DistillConfig)
    hd_pretrain: HdPretrainConfig = field(default_factory=HdPretrainConfig)
    #: validation every N epochs (IoU on val_split); 0 = never
    val_every: int = 1
    #: limit samples per epoch / for validation (0 = all), evenly spaced over the split (data.dataset.spread)
    train_limit: int = 0
    val_limit: int = 0
    log_every: int = 10

    def validate(self, where: str) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f'{where}epochs/batch_size: must be >= 1')
        if self.lr <= 0:
            raise ConfigError(f'{where}lr: must be > 0, got {self.lr}')
        d = self.distill
        weights = ('msrd_teacher', 'msrd_coach', 'tgpd_teacher', 'tgpd_coach', 'erd_teacher', 'ird_teacher')
        bad = [f'{k} {getattr(d, k)!r}' for k in weights if not getattr(d, k) >= 0]
        if bad:
            raise ConfigError(f'{where}distill: weights must be >= 0, got {", ".join(bad)}')
        from ..distill.losses import MSRD_MASKS
        bad = [f'{k} {getattr(d, k)!r}' for k in ('msrd_mask', 'ird_mask') if getattr(d, k) not in MSRD_MASKS]
        if bad:
            raise ConfigError(f'{where}distill: masks must be one of {", ".join(MSRD_MASKS)}, got {", ".join(bad)}')
        if self.stage in ('teacher', 'hd_prior') and (d.uses_teacher or d.uses_coach):
            raise ConfigError(f'{where}distill: the {self.stage} stage has no distillation')
        if d.uses_teacher and not self.teacher:
            raise ConfigError(f'{where}teacher: teacher distillation weights are set but no teacher weights file')
        if d.uses_coach and not self.coach:
            raise ConfigError(f'{where}coach: coach distillation weights are set but no coach weights file')
        if self.freeze_eval and not self.freeze:
            raise ConfigError(f'{where}freeze_eval: true needs freeze: (the parameter prefixes to freeze)')
        if self.stage == 'coach' and d.uses_coach:
            raise ConfigError(f'{where}distill: the coach stage distils from the teacher only (msrd/tgpd_teacher)')


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return from_dict(TrainConfig, data, source=str(path))
