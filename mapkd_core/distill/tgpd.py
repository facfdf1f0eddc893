"""TGPD, token-guided 2-D patch distillation of BEV features (method doc section 3, "Version C" with its fixes).

The distilled features are the models' ``MapOutput.bev`` (B, 192, 25, 50 at the paper grid): the student's against
the (frozen) teacher's and coach's. For each feature map:

1. patchify into non-overlapping ``patch x patch`` patches (zero-padded at the bottom/right to a multiple of
   ``patch``), N = ceil(h / patch) * ceil(w / patch) patches (5 x 5 on 25 x 50 gives N = 50);
2. embed every flattened patch with ``nn.Linear(C * patch * patch, dim)`` and the global-average-pooled feature
   with ``nn.Linear(C, dim)`` (the guidance token); X = [token; patches], (B, 1 + N, dim);
3. attention A = softmax(X X^T / (sqrt(dim) * tau)) along the last dimension: ONE softmax with 1/sqrt(d) scaling
   (the reference code applied softmax twice and did not scale).

Loss per target (teacher or coach): ``KL(A_T || A_S)`` summed over all rows and columns and divided by B (PyTorch's
``kl_div(log A_S, A_T, reduction='batchmean')``, here with log-probabilities on both sides; ``kl_reduction='mean'``
also divides it by the 1 + N rows, an option outside the method) plus
``mse_weight * MSE(F_S, F_T)`` on the raw features. ``tgpd = teacher_weight * term_T + coach_weight * term_C``.

Decisions (the fixes the method doc recommends, and what the code here does):

* The projections are persistent, trainable submodules of :class:`TgpdLoss`; hand ``TgpdLoss.parameters()`` to the
  optimizer. One :class:`TokenGuidedPatchAttention` is shared by the student and both targets (as in Version C).
* Target detaching: the target features are detached and the target attention A_T is computed with the same
  projections under ``torch.no_grad()``, so the projections receive gradients only through the student branch
  (the KL pulls A_S towards a constant A_T each step; this avoids the trivial "make both attentions uniform"
  gradient through the target side and saves the target branch's activations).
* tau divides the scaled scores before the (log-)softmax on both sides; the KL is not multiplied by tau^2 (tau = 1
  by default, as in the code).
* If a target's spatial size differs from the student's by at most one cell per axis, the target is bilinearly
  resized (``align_corners=False``) to the student's size; a larger mismatch or a channel mismatch is an error.

Weights of the reference scripts: coach training 0.8 * TGPD(C <- T) (use ``TgpdLoss(teacher_weight=0.8)`` with the
coach as the student); student ``train_s.py`` 0.5 * TGPD(S <- T) + 0.01 * TGPD(S <- C) (the defaults);
``train_final.py`` disables TGPD. Version C's MSE weight is 0.5 (Versions A/B used 1.0).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ['COACH_TGPD_WEIGHT', 'KL_REDUCTIONS', 'STUDENT_TGPD_COACH_WEIGHT', 'STUDENT_TGPD_TEACHER_WEIGHT', 'TGPD_CHANNELS',
           'TGPD_DIM', 'TGPD_FEATURE_HW', 'TGPD_MSE_WEIGHT', 'TGPD_PATCH', 'TGPD_TAU', 'TgpdLoss',
           'TokenGuidedPatchAttention']

#: TGPD defaults: bev channels, patch side, embedding width, feature size at the paper grid, temperature.
TGPD_CHANNELS = 192
TGPD_PATCH = 5
TGPD_DIM = 512
TGPD_FEATURE_HW = (25, 50)
TGPD_TAU = 1.0
#: Version C's MSE weight on the raw features.
TGPD_MSE_WEIGHT = 0.5
#: How the KL over the (1 + N) x (1 + N) attention map is reduced: 'sum' over rows and columns / B (the method's
#: ``batchmean``: grows with the number of patches N), or 'mean': that sum also divided by the 1 + N rows.
KL_REDUCTIONS = ('sum', 'mean')
#: Loss weights: coach training (train_C.py) and the student (train_s.py; train_final.py has TGPD disabled).
COACH_TGPD_WEIGHT = 0.8
STUDENT_TGPD_TEACHER_WEIGHT = 0.5
STUDENT_TGPD_COACH_WEIGHT = 0.01


class TokenGuidedPatchAttention(nn.Module):
    """Token + patch embedding of a BEV feature map and its (1 + N) x (1 + N) self-attention map.

    ``patch_embed``: Linear(C * patch * patch -> dim) over non-overlapping patches (zero-padded at the bottom/right);
    ``token_embed``: Linear(C -> dim) over the global average pool. ``feature_hw`` is the expected feature size, used
    only for :attr:`num_patches` (any size works in forward).
    """

    def __init__(self, channels: int = TGPD_CHANNELS, patch: int = TGPD_PATCH, dim: int = TGPD_DIM,
                 feature_hw: Optional[tuple[int, int]] = TGPD_FEATURE_HW, normalize: bool = False):
        super().__init__()
        if channels < 1 or patch < 1 or dim < 1:
            raise ConfigError(f'TGPD: channels, patch and dim must be >= 1, got {channels}, {patch}, {dim}')
        self.channels = int(channels)
        self.patch = int(patch)
        self.dim = int(dim)
        self.feature_hw = tuple(feature_hw) if feature_hw is not None else None
        self.patch_embed = nn.Linear(self.channels * self.patch * self.patch, self.dim)
        self.token_embed = nn.Linear(self.channels, self.dim)

    @property
    def num_patches(self) -> Optional[int]:
        """N for ``feature_hw`` (None when it is not set)."""
        if self.feature_hw is None:
            return None
        return math.ceil(self.feature_hw[0] / self.patch) * math.ceil(self.feature_hw[1] / self.patch)

    def patchify(self, feature: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, N, C * patch * patch), row-major over the patch grid, zero-padded bottom/right."""
        b, c, h, w = feature.shape
        if c != self.channels:
            raise ValueError(f'TGPD expects {self.channels} channels, got {c}')
        p = self.patch
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            feature = F.pad(feature, (0, pad_w, 0, pad_h))
        gh, gw = (h + pad_h) // p, (w + pad_w) // p
        x = feature.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        return x.reshape(b, gh * gw, c * p * p)

    def embed(self, feature: Tensor) -> Tensor:
        """X = [token; patches], (B, 1 + N, dim)."""
        token = self.token_embed(feature.mean(dim=(2, 3)))[:, None]  # (B, 1, dim)
        return torch.cat([token, self.patch_embed(self.patchify(feature))], dim=1)

    def scores(self, feature: Tensor, tau: float = 1.0) -> Tensor:
        """X X^T / (sqrt(dim) * tau), (B, 1 + N, 1 + N)."""
        x = self.embed(feature)
        return x @ x.transpose(1, 2) / (math.sqrt(self.dim) * tau)

    def log_attention(self, feature: Tensor, tau: float = 1.0) -> Tensor:
        """log A, the row-wise log-softmax of :meth:`scores` (float32)."""
        return F.log_softmax(self.scores(feature, tau).float(), dim=-1)

    def forward(self, feature: Tensor, tau: float = 1.0) -> Tensor:
        """A = softmax(X X^T / (sqrt(dim) * tau)) along the last dimension, (B, 1 + N, 1 + N)."""
        return self.log_attention(feature, tau).exp()


def _match_target(student: Tensor, target: Tensor) -> Tensor:
    """The detached target on the student's device/dtype, bilinearly resized when h/w differ by one cell."""
    target = target.detach().to(device=student.device, dtype=student.dtype)
    if target.shape[:2] != student.shape[:2]:
        raise ValueError(f'TGPD target {tuple(target.shape)} and student {tuple(student.shape)} differ in batch or '
                         'channels')
    if target.shape[2:] != student.shape[2:]:
        if any(abs(a - b) > 1 for a, b in zip(target.shape[2:], student.shape[2:])):
            raise ValueError(f'TGPD target {tuple(target.shape)} and student {tuple(student.shape)} differ by more '
                             'than one cell')
        target = F.interpolate(target, size=tuple(student.shape[2:]), mode='bilinear', align_corners=False)
    return target


class TgpdLoss(nn.Module):
    """Token-guided 2-D patch distillation, student vs teacher and student vs coach (see the module docstring).

    ``forward(student_bev, teacher_bev=None, coach_bev=None) -> {'tgpd_teacher', 'tgpd_coach', 'tgpd'}``, each term
    ``KL(A_T || A_S) (batchmean) + mse_weight * MSE(F_S, F_T)``; ``tgpd = teacher_weight * tgpd_teacher +
    coach_weight * tgpd_coach``; a target that is None is skipped (0). Defaults: the student of ``train_s.py``
    (0.5 / 0.01), Version C's MSE weight 0.5. The shared projections are ``self.attention``.
    """

    def __init__(self, channels: int = TGPD_CHANNELS, patch: int = TGPD_PATCH, dim: int = TGPD_DIM,
                 tau: float = TGPD_TAU, mse_weight: float = TGPD_MSE_WEIGHT,
                 teacher_weight: float = STUDENT_TGPD_TEACHER_WEIGHT, coach_weight: float = STUDENT_TGPD_COACH_WEIGHT,
                 feature_hw: Optional[tuple[int, int]] = TGPD_FEATURE_HW, normalize: bool = False,
                 kl_reduction: str = 'sum'):
        super().__init__()
        if tau <= 0:
            raise ConfigError(f'TGPD: tau must be > 0, got {tau}')
        if kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f'TGPD: kl_reduction must be one of {", ".join(KL_REDUCTIONS)}, got {kl_reduction!r}')
        self.attention = TokenGuidedPatchAttention(channels, patch, dim, feature_hw)
        self.tau = float(tau)
        self.mse_weight = float(mse_weight)
        self.teacher_weight = float(teacher_weight)
        self.coach_weight = float(coach_weight)
        self.normalize = bool(normalize)
        self.kl_reduction = kl_reduction

    @staticmethod
    def standardize(f: Tensor) -> Tensor:
        """Per sample, zero mean and unit variance over (C, H, W): the scale of a target's features stops mattering."""
        return F.layer_norm(f.float(), f.shape[1:])

    def parts(self, student_bev: Tensor, target_bev: Tensor) -> tuple[Tensor, Tensor]:
        """The two parts of a term: (KL(A_T || A_S) summed over rows and columns / B (also / (1 + N) with
        ``kl_reduction='mean'``), mse_weight * MSE(F_S, F_T.detach()))."""
        target = _match_target(student_bev, target_bev)
        if self.normalize:  # not in the method: an option for targets whose raw features are large or noisy
            student_bev, target = self.standardize(student_bev), self.standardize(target)
        log_a_s = self.attention.log_attention(student_bev, self.tau)
        with torch.no_grad():
            log_a_t = self.attention.log_attention(target, self.tau)
        kl = F.kl_div(log_a_s, log_a_t, reduction='batchmean', log_target=True)
        if self.kl_reduction == 'mean':  # not in the method: the KL of one attention row, whatever N is
            kl = kl / log_a_s.shape[1]
        return kl, self.mse_weight * F.mse_loss(student_bev.float(), target.float())

    def term(self, student_bev: Tensor, target_bev: Tensor) -> Tensor:
        """KL(A_T || A_S) plus mse_weight * MSE(F_S, F_T.detach()) (see :meth:`parts`)."""
        kl, mse = self.parts(student_bev, target_bev)
        return kl + mse

    def forward(self, student_bev: Tensor, teacher_bev: Optional[Tensor] = None,
                coach_bev: Optional[Tensor] = None) -> dict[str, Tensor]:
        zero = student_bev.float().sum() * 0.0
        teacher = self.term(student_bev, teacher_bev) if teacher_bev is not None else zero
        coach = self.term(student_bev, coach_bev) if coach_bev is not None else zero
        return {'tgpd_teacher': teacher, 'tgpd_coach': coach,
                'tgpd': self.teacher_weight * teacher + self.coach_weight * coach}

    def extra_repr(self) -> str:
        return (f'tau={self.tau}, mse_weight={self.mse_weight}, teacher_weight={self.teacher_weight}, '
                f'coach_weight={self.coach_weight}, normalize={self.normalize}, kl_reduction={self.kl_reduction}')
