"""Task losses (HDMapNet, method doc section 5.0) and MSRD, masked semantic response distillation (section 4).

Task losses, used by every stage (teacher, HD-prior MAE pre-training, coach, student):

* :class:`SegmentationLoss`: BCE-with-logits over the 4 semantic channels against the GT one-hot, ``pos_weight`` 2.13.
* :class:`DiscriminativeLoss`: instance-embedding pull/push loss (delta_v 0.5, delta_d 3.0), no regularisation term.
* :class:`DirectionLoss`: BCE between the softmax over the 37 direction channels and the two-hot GT, on line pixels.
* :class:`TaskLoss`: the weighted sum (seg 1.0, var 0.1, dist 0.1, direction 0.1) on a ``MapOutput`` and a batch.

MSRD (:func:`msrd_loss`, :class:`MsrdLoss`): at GT foreground pixels only, the student's raw semantic logits (all 4
channels, background included) are trained with BCE-with-logits towards the element-wise sigmoid of the teacher's (or
coach's) logits, which are constants. No temperature, no pos_weight (method doc section 9, items 11 and 12).

ERD (:func:`embedding_relation_loss`, not in the method): the student's instance-embedding distances between GT
foreground pixels towards the teacher's (the vectorizer groups pixels by them; MSRD leaves that head alone).

IRD (:func:`instance_response_loss`, not in the method): the student's embedding and direction heads towards the
teacher's, pixel by pixel, where the teacher's segmentation is right.

Loss weights of the reference scripts are module constants (see also :mod:`mapkd_core.distill.tgpd`):

* coach training (``train_C.py``): task + 0.8 * TGPD(C <- T) + 0.8 * MSRD(C <- T);
* student (``train_final.py``, the README's script): task + 0.75 * MSRD(S <- T) + 0.001 * MSRD(S <- C), TGPD off;
* student (``train_s.py``): task + 0.5 * TGPD(S <- T) + 0.01 * TGPD(S <- C) + 0.75 * MSRD(S <- T) + 0.01 * MSRD(S <- C).

Numerical choices (documented here once):

* Discriminative loss: the per-sample variance and distance terms are summed over the batch and divided by the
  batch size B, so a sample without any instance contributes 0 and still counts in the average (HDMapNet divides by
  the batch size the same way). The distance term needs two instances; with fewer it is 0.
* Direction loss: a log-softmax form of ``nn.BCELoss(softmax(z), y)``. ``log p`` is the exact ``log_softmax(z)``;
  ``log(1 - p) = log(-expm1(log p))`` with its argument clamped at :data:`PROB_EPS` (so ``log(1 - p) >= -27.6``, like
  BCELoss's clamp of the log at -100, but gradients stay finite). Unlike ``F.binary_cross_entropy`` it is allowed
  under autocast; it is computed in float32.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.rasterize import direction_onehot
from ..errors import ConfigError

__all__ = [
    'COACH_MSRD_WEIGHT', 'DELTA_D', 'DELTA_V', 'DIRECTION_WEIGHT', 'DIST_WEIGHT', 'ERD_CLAMP', 'ERD_MAX_PIXELS',
    'GRAD_CLIP_NORM', 'MSRD_MASKS', 'POS_WEIGHT', 'PROB_EPS', 'SEG_WEIGHT', 'STUDENT_MSRD_COACH_WEIGHT',
    'STUDENT_MSRD_COACH_WEIGHT_TRAIN_S', 'STUDENT_MSRD_TEACHER_WEIGHT', 'VAR_WEIGHT', 'DirectionLoss',
    'DiscriminativeLoss', 'MsrdLoss', 'SegmentationLoss', 'TaskLoss', 'distill_mask', 'embedding_relation_loss',
    'instance_response_loss', 'msrd_loss',
]

#: Task-loss defaults (method doc 5.0, HDMapNet).
POS_WEIGHT = 2.13
DELTA_V = 0.5
DELTA_D = 3.0
SEG_WEIGHT = 1.0
VAR_WEIGHT = 0.1
DIST_WEIGHT = 0.1
DIRECTION_WEIGHT = 0.1
#: Global-norm gradient clip used by every stage (for the trainer; not applied here).
GRAD_CLIP_NORM = 5.0

#: MSRD weights (method doc 4): coach training, and the student in train_final.py (0.001) / train_s.py (0.01).
COACH_MSRD_WEIGHT = 0.8
STUDENT_MSRD_TEACHER_WEIGHT = 0.75
STUDENT_MSRD_COACH_WEIGHT = 0.001
STUDENT_MSRD_COACH_WEIGHT_TRAIN_S = 0.01

#: Lower clamp of 1 - p in the direction BCE (log(1e-12) = -27.6).
PROB_EPS = 1e-12


def _zero(like: Tensor) -> Tensor:
    """A scalar 0 that is still connected to ``like``'s graph (so ``backward()`` works and gives zero gradients)."""
    return like.sum() * 0.0


class SegmentationLoss(nn.Module):
    """BCE-with-logits over every semantic channel against the GT one-hot, with ``pos_weight``, mean-reduced.

    ``forward(logits (B, C, H, W), target (B, C, H, W) one-hot of any dtype) -> scalar``. Per element
    ``-[pos_weight * y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))]``, averaged over B*C*H*W. ``pos_weight`` is
    one number for every channel (the method: 2.13) or one per channel (a rare class weighted up; not in the method).
    """

    def __init__(self, pos_weight: float | Sequence[float] = POS_WEIGHT):
        super().__init__()
        values = [float(pos_weight)] if isinstance(pos_weight, (int, float)) else [float(v) for v in pos_weight]
        if not values or any(not math.isfinite(v) or v <= 0 for v in values):
            raise ValueError(f'pos_weight must be positive numbers, got {pos_weight!r}')
        # (C, 1, 1) broadcasts over (B, C, H, W); non-persistent: the value comes from the config, never a checkpoint
        self.register_buffer('pos_weight', torch.tensor(values).view(-1, 1, 1), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape != target.shape:
            raise ValueError(f'semantic logits {tuple(logits.shape)} and target {tuple(target.shape)} differ')
        if self.pos_weight.shape[0] not in (1, logits.shape[1]):
            raise ValueError(f'{self.pos_weight.shape[0]} per-class pos_weight values for {logits.shape[1]} '
                             f'semantic channels')
        logits = logits.float()
        target = target.to(device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight.to(logits))


class DiscriminativeLoss(nn.Module):
    """Instance-embedding discriminative loss (De Brabandere et al., as in HDMapNet) without the regularisation term.

    For each sample with instances k = 1..n (ids > 0; id 0 is "no instance"), mu_k is the mean embedding of its
    pixels and

    * var  = (1/n) * sum_k mean_{i in k} relu(||e_i - mu_k|| - delta_v)^2,
    * dist = [sum_{a != b} relu(delta_d - ||mu_a - mu_b||)^2 / (n (n - 1))] / 2   (ordered pairs; 0 when n < 2).

    Both are summed over the batch and divided by B (samples without instances count as 0).
    ``forward(embedding (B, D, H, W), instance (B, H, W) integer ids) -> (var, dist)``. Segment sums use
    ``index_add`` over the instance ids; only the batch is looped over.
    """

    def __init__(self, delta_v: float = DELTA_V, delta_d: float = DELTA_D):
        super().__init__()
        self.delta_v = float(delta_v)
        self.delta_d = float(delta_d)

    def forward(self, embedding: Tensor, instance: Tensor) -> tuple[Tensor, Tensor]:
        if instance.dim() == 4 and instance.shape[1] == 1:
            instance = instance[:, 0]
        b, d = embedding.shape[:2]
        if instance.shape != (b,) + tuple(embedding.shape[2:]):
            raise ValueError(f'instance ids {tuple(instance.shape)} do not match embedding {tuple(embedding.shape)}')
        emb = embedding.float().reshape(b, d, -1).transpose(1, 2)  # (B, HW, D)
        ids = instance.to(embedding.device).reshape(b, -1).long()
        var_total = _zero(emb)
        dist_total = _zero(emb)
        for s in range(b):
            fg = ids[s] > 0
            if not bool(fg.any()):
                continue
            e = emb[s][fg]  # (P, D)
            _, inv = torch.unique(ids[s][fg], return_inverse=True)  # inv: pixel -> instance index 0..n-1
            n = int(inv.max()) + 1
            counts = torch.bincount(inv, minlength=n).to(e.dtype)  # (n,)
            mu = e.new_zeros(n, d).index_add(0, inv, e) / counts[:, None]  # (n, D)
            pull = F.relu(torch.linalg.vector_norm(e - mu[inv], dim=1) - self.delta_v) ** 2  # (P,)
            per_instance = e.new_zeros(n).index_add(0, inv, pull) / counts
            var_total = var_total + per_instance.sum() / n
            if n > 1:
                gap = torch.linalg.vector_norm(mu[:, None, :] - mu[None, :, :], dim=-1)  # (n, n)
                off_diagonal = ~torch.eye(n, dtype=torch.bool, device=e.device)
                push = (F.relu(self.delta_d - gap) ** 2)[off_diagonal]  # the n (n - 1) ordered pairs
                dist_total = dist_total + push.sum() / (n * (n - 1)) / 2
        return var_total / b, dist_total / b


class DirectionLoss(nn.Module):
    """BCE between ``softmax(direction logits)`` over the channels and the two-hot GT, on pixels that have a direction.

    ``forward(logits (B, K, H, W), direction (B, 2, H, W) integer bins, or a (B, K, H, W) float two-hot)``. With bins,
    the two-hot is built by :func:`mapkd_core.data.rasterize.direction_onehot` and the mask is "either bin != 0";
    with a two-hot, the mask is "channel 0 != 1" (the same pixels). The per-element BCE is summed over masked pixels
    and channels and divided by (#masked pixels * K); 0 (with grad) when no pixel is masked. BCE form: see the
    module docstring (exact log-softmax for log p, clamped ``log(-expm1(log p))`` for log(1 - p)).
    """

    def forward(self, logits: Tensor, direction: Tensor) -> Tensor:
        k = logits.shape[1]
        direction = direction.to(logits.device)
        two_hot = direction.shape[1] == k and direction.is_floating_point()
        if not two_hot and direction.shape[1] != 2:
            raise ValueError(f'direction target must be (B, 2, H, W) bins or (B, {k}, H, W), got '
                             f'{tuple(direction.shape)}')
        if direction.shape[0] != logits.shape[0] or direction.shape[2:] != logits.shape[2:]:
            raise ValueError(f'direction logits {tuple(logits.shape)} and target {tuple(direction.shape)} differ')
        mask = direction[:, 0] != 1.0 if two_hot else (direction != 0).any(dim=1)
        num = int(mask.sum())
        if num == 0:
            return _zero(logits.float())
        # only the masked pixels (a few percent of the grid) are gathered, as (num, K): the same sum as masking the
        # whole (B, K, H, W) BCE, without computing and zeroing it everywhere (a twentieth of the work)
        b, y, x = mask.nonzero(as_tuple=True)
        picked = logits[b, :, y, x].float()
        target = direction[b, :, y, x]
        target = target.float() if two_hot else direction_onehot(target[:, :, None, None], k)[:, :, 0, 0]
        log_p = F.log_softmax(picked, dim=1)
        log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(PROB_EPS))
        bce = -(target * log_p + (1.0 - target) * log_not_p)  # (num, K)
        return bce.sum() / (num * k)


def _head(out: Any, name: str) -> Optional[Tensor]:
    """``out.<name>`` for a MapOutput-like object, or ``out[name]`` for a dict; None when missing."""
    if isinstance(out, dict):
        return out.get(name)
    return getattr(out, name, None)


class TaskLoss(nn.Module):
    """The HDMapNet task loss on a model output and a Dataset batch (method doc 5.0).

    ``forward(out, batch) -> {'seg', 'var', 'dist', 'direction', 'total'}`` where ``out`` is a
    :class:`~mapkd_core.models.networks.MapOutput` (or anything with ``semantic`` / ``embedding`` / ``direction``
    attributes or keys, e.g. the HD-prior MAE pre-training output) and ``batch`` holds ``semantic`` (B, 4, H, W)
    one-hot, ``instance`` (B, H, W) ids and ``direction`` (B, 2, H, W) bins, of any dtype and device. ``total`` =
    seg_w * seg + var_w * var + dist_w * dist + direction_w * direction. A head that is None (or missing) gives a 0
    term, so a semantic-only output (e.g. a first-stage head) can be trained with the same module.
    """

    def __init__(self, seg: float = SEG_WEIGHT, var: float = VAR_WEIGHT, dist: float = DIST_WEIGHT,
                 direction: float = DIRECTION_WEIGHT, pos_weight: float | Sequence[float] = POS_WEIGHT,
                 delta_v: float = DELTA_V, delta_d: float = DELTA_D):
        super().__init__()
        self.weights = {'seg': float(seg), 'var': float(var), 'dist': float(dist), 'direction': float(direction)}
        self.segmentation = SegmentationLoss(pos_weight)
        self.discriminative = DiscriminativeLoss(delta_v, delta_d)
        self.direction = DirectionLoss()

    def forward(self, out: Any, batch: dict) -> dict[str, Tensor]:
        semantic = _head(out, 'semantic')
        embedding = _head(out, 'embedding')
        direction = _head(out, 'direction')
        if semantic is None:
            raise ValueError('TaskLoss needs at least the semantic head')
        losses = {'seg': self.segmentation(semantic, batch['semantic'])}
        if embedding is not None:
            losses['var'], losses['dist'] = self.discriminative(embedding, batch['instance'])
        else:
            losses['var'] = losses['dist'] = _zero(semantic.float())
        losses['direction'] = (self.direction(direction, batch['direction']) if direction is not None
                               else _zero(semantic.float()))
        losses['total'] = sum(self.weights[k] * losses[k] for k in ('seg', 'var', 'dist', 'direction'))
        return losses

    def extra_repr(self) -> str:
        return ', '.join(f'{k}={v}' for k, v in self.weights.items())


#: MSRD's pixel masks: ``foreground`` (the method: every GT foreground pixel) or ``correct`` (not in the method: the
#: foreground pixels where the target's argmax class is one of the pixel's GT classes, so that a target never pulls the
#: student towards a class it gets wrong there) or ``all`` (not in the method: every pixel, background included, i.e.
#: plain response distillation; the foreground mask only ever pulls the student's foreground probabilities down towards
#: the target's, never up at background pixels, see benchmarks/bench_loss_balance.py)
MSRD_MASKS = ('foreground', 'correct', 'all')


def distill_mask(gt_semantic: Tensor, target_logits: Tensor, mask: str, what: str) -> Tensor:
    """The (B, H, W) pixels a response distillation term reads: ``'foreground'`` every GT foreground pixel (GT
    background channel 0), ``'correct'`` those of them where the target's semantic argmax is a GT class of the
    pixel, ``'all'`` every pixel. ``what`` names the term in the error for an unknown mask."""
    if mask not in MSRD_MASKS:
        raise ConfigError(f'{what}: mask must be one of {", ".join(MSRD_MASKS)}, got {mask!r}')
    if mask == 'all':
        return torch.ones_like(gt_semantic[:, 0], dtype=torch.bool)
    foreground = gt_semantic[:, 0] == 0
    if mask == 'correct':
        predicted = target_logits.detach().to(gt_semantic.device).argmax(1, keepdim=True)
        foreground &= gt_semantic.gather(1, predicted)[:, 0] > 0
    return foreground


def msrd_loss(student_logits: Tensor, target_logits: Tensor, gt_semantic: Tensor, mask: str = 'foreground') -> Tensor:
    """MSRD(S, X): BCE-with-logits of the student's logits towards sigmoid(target logits) at GT foreground pixels.

    ``student_logits`` and ``target_logits`` are (B, C, H, W) semantic logits (C = 4), ``gt_semantic`` the
    (B, C, H, W) GT one-hot (channel 0 = background). Foreground = pixels whose GT background channel is 0 (with
    ``mask='correct'``, only those where the target's argmax is a GT class of the pixel; with ``mask='all'``, every
    pixel). The M masked pixels give an
    (M, C) matrix of the student's raw logits (all channels, background included); the target
    ``sigmoid(target_logits)`` is detached. Returns the BCE averaged over M*C elements, or 0 (connected to the
    student's graph) when M == 0.
    """
    if student_logits.shape != target_logits.shape:
        raise ValueError(f'student logits {tuple(student_logits.shape)} and target logits '
                         f'{tuple(target_logits.shape)} differ')
    if gt_semantic.shape[0] != student_logits.shape[0] or gt_semantic.shape[2:] != student_logits.shape[2:]:
        raise ValueError(f'GT semantic {tuple(gt_semantic.shape)} does not match logits {tuple(student_logits.shape)}')
    foreground = distill_mask(gt_semantic.to(student_logits.device), target_logits, mask, 'MSRD')
    if not bool(foreground.any()):
        return _zero(student_logits.float())
    z = student_logits.float().movedim(1, -1)[foreground]  # (M, C)
    target = torch.sigmoid(target_logits.detach().float().to(student_logits.device)).movedim(1, -1)[foreground]
    return F.binary_cross_entropy_with_logits(z, target)


class MsrdLoss(nn.Module):
    """Teacher and coach MSRD terms: ``msrd = teacher_weight * MSRD(S <- T) + coach_weight * MSRD(S <- C)``.

    Defaults are the student of ``train_final.py`` (0.75 / 0.001; ``train_s.py`` uses 0.75 / 0.01, see
    :data:`STUDENT_MSRD_COACH_WEIGHT_TRAIN_S`). For coach training use ``MsrdLoss(teacher_weight=0.8)`` and pass the
    coach's logits as the student. ``forward(student_logits, gt_semantic, teacher_logits=None, coach_logits=None)
    -> {'msrd_teacher', 'msrd_coach', 'msrd'}``; a target that is None is skipped (its term is 0).
    """

    def __init__(self, teacher_weight: float = STUDENT_MSRD_TEACHER_WEIGHT,
                 coach_weight: float = STUDENT_MSRD_COACH_WEIGHT, mask: str = 'foreground'):
        super().__init__()
        if mask not in MSRD_MASKS:
            raise ConfigError(f'MSRD: mask must be one of {", ".join(MSRD_MASKS)}, got {mask!r}')
        self.teacher_weight = float(teacher_weight)
        self.coach_weight = float(coach_weight)
        self.mask = mask

    def forward(self, student_logits: Tensor, gt_semantic: Tensor, teacher_logits: Optional[Tensor] = None,
                coach_logits: Optional[Tensor] = None) -> dict[str, Tensor]:
        zero = _zero(student_logits.float())
        teacher = msrd_loss(student_logits, teacher_logits, gt_semantic, self.mask) \
            if teacher_logits is not None else zero
        coach = msrd_loss(student_logits, coach_logits, gt_semantic, self.mask) if coach_logits is not None else zero
        return {'msrd_teacher': teacher, 'msrd_coach': coach,
                'msrd': self.teacher_weight * teacher + self.coach_weight * coach}

    def extra_repr(self) -> str:
        return f'teacher_weight={self.teacher_weight}, coach_weight={self.coach_weight}, mask={self.mask}'


#: embedding relation distillation (ERD, not in the method): pixels sampled per sample, and the distance beyond which
#: two pixels count as "other instance" whatever the distance (the discriminative loss's push margin)
ERD_MAX_PIXELS = 256
ERD_CLAMP = DELTA_D


def _pairwise_distances(x: Tensor, eps: float = 1e-6) -> Tensor:
    """(P, D) -> (P, P) Euclidean distances, ``sqrt(d^2 + eps)`` so the gradient stays finite at 0 (the diagonal,
    and pixels with equal embeddings: ``torch.cdist``'s backward has no such guard)."""
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)
    return torch.sqrt(d2 + eps)


def embedding_relation_loss(student_embedding: Tensor, target_embedding: Tensor, gt_semantic: Tensor,
                            max_pixels: int = ERD_MAX_PIXELS, clamp: float = ERD_CLAMP) -> Tensor:
    """ERD (not in the method): the student's instance-embedding distances between GT foreground pixels towards the
    target's, both clamped at ``clamp``.

    MSRD distils the semantic logits only, while the vectorizer groups a class's pixels into instances by their
    embeddings: with the teacher's embedding and direction heads the student's segmentation scores about 4 mAP more
    (``benchmarks/bench_map_gap.py``). Embedding spaces of two models are not comparable coordinate by coordinate
    (any rotation of one is as good), so this distils their relations: per sample, up to ``max_pixels`` GT foreground
    pixels taken evenly over the foreground (deterministic), the (P, P) distance matrices of the student's and the
    (detached) target's embeddings, each clamped at ``clamp`` (beyond the discriminative loss's push margin two pixels
    are simply in different instances), and the mean squared difference over the P (P - 1) pairs. Averaged over the
    samples with at least 2 foreground pixels; 0 (connected to the student's graph) when there is none.
    ``student_embedding`` / ``target_embedding``: (B, D, H, W) and (B, D', H, W) (the dimensions may differ);
    ``gt_semantic``: the (B, C, H, W) GT one-hot, channel 0 background.
    """
    if student_embedding.shape[0] != target_embedding.shape[0] or \
            student_embedding.shape[2:] != target_embedding.shape[2:]:
        raise ValueError(f'student embedding {tuple(student_embedding.shape)} and target embedding '
                         f'{tuple(target_embedding.shape)} differ in batch or size')
    if gt_semantic.shape[0] != student_embedding.shape[0] or gt_semantic.shape[2:] != student_embedding.shape[2:]:
        raise ValueError(f'GT semantic {tuple(gt_semantic.shape)} does not match embedding '
                         f'{tuple(student_embedding.shape)}')
    if max_pixels < 2:
        raise ValueError(f'ERD: max_pixels must be >= 2, got {max_pixels}')
    foreground = gt_semantic.to(student_embedding.device)[:, 0] == 0  # (B, H, W)
    s_flat = student_embedding.float().flatten(2)  # (B, D, HW)
    t_flat = target_embedding.detach().float().to(student_embedding.device).flatten(2)
    terms = []
    for b in range(s_flat.shape[0]):
        idx = foreground[b].flatten().nonzero()[:, 0]
        if idx.numel() < 2:
            continue
        if idx.numel() > max_pixels:
            idx = idx[torch.linspace(0, idx.numel() - 1, max_pixels, device=idx.device).round().long()]
        d_s = _pairwise_distances(s_flat[b][:, idx].t()).clamp(max=clamp)
        d_t = _pairwise_distances(t_flat[b][:, idx].t()).clamp(max=clamp)
        off = ~torch.eye(idx.numel(), dtype=torch.bool, device=idx.device)
        terms.append(((d_s - d_t) ** 2)[off].mean())
    if not terms:
        return _zero(student_embedding.float())
    return torch.stack(terms).mean()


def instance_response_loss(student_embedding: Tensor, student_direction: Tensor, target_embedding: Tensor,
                           target_direction: Tensor, target_logits: Tensor, gt_semantic: Tensor,
                           mask: str = 'correct') -> dict[str, Tensor]:
    """IRD (not in the method): the student's instance heads towards the target's, pixel by pixel.

    The vectorizer groups a class's pixels into instances by their embeddings and orders them by their directions;
    MSRD distils neither head, and the distilled students lose vector AP against their baselines while gaining IoU
    (docs/training.md, rounds 6-9). ERD distils the embeddings' relations and made the student worse. IRD instead
    regresses the target's embedding itself: the discriminative loss fixes an embedding only up to a rotation and a
    shift, and the target's embedding is one of its solutions, so pulling the student into the target's coordinates
    adds a dense per-pixel target without fighting it. At the pixels of :func:`distill_mask` (by default
    ``'correct'``: GT foreground where the target's semantic argmax is right, so the target's mistakes are not
    copied):

    * ``embedding``: the mean squared difference of the embeddings over the M masked pixels and D channels;
    * ``direction``: KL(softmax(target) || softmax(student)) over the direction channels, averaged over the M pixels.

    The targets are detached. Both are 0 (connected to the student's graph) when M == 0. ``student_embedding`` and
    ``target_embedding``: (B, D, H, W) with the same D; the directions (B, K, H, W) with the same K;
    ``target_logits`` the target's (B, C, H, W) semantic logits; ``gt_semantic`` the GT one-hot (channel 0
    background).
    """
    if student_embedding.shape != target_embedding.shape:
        raise ValueError(f'IRD regresses the target\'s embedding: student embedding {tuple(student_embedding.shape)} '
                         f'and target embedding {tuple(target_embedding.shape)} must have the same shape')
    if student_direction.shape != target_direction.shape:
        raise ValueError(f'student direction {tuple(student_direction.shape)} and target direction '
                         f'{tuple(target_direction.shape)} differ')
    b, _, h, w = student_embedding.shape
    if student_direction.shape[0] != b or student_direction.shape[2:] != (h, w) or gt_semantic.shape[0] != b \
            or gt_semantic.shape[2:] != (h, w) or target_logits.shape != gt_semantic.shape:
        raise ValueError(f'IRD: embedding {tuple(student_embedding.shape)}, direction '
                         f'{tuple(student_direction.shape)}, target logits {tuple(target_logits.shape)} and GT '
                         f'semantic {tuple(gt_semantic.shape)} must share batch and size')
    device = student_embedding.device
    keep = distill_mask(gt_semantic.to(device), target_logits, mask, 'IRD')  # (B, H, W)
    if not bool(keep.any()):
        zero = _zero(student_embedding.float()) + _zero(student_direction.float())
        return {'embedding': zero, 'direction': zero}
    e_s = student_embedding.float().movedim(1, -1)[keep]  # (M, D)
    e_t = target_embedding.detach().float().to(device).movedim(1, -1)[keep]
    log_q = F.log_softmax(student_direction.float().movedim(1, -1)[keep], dim=-1)  # (M, K)
    log_p = F.log_softmax(target_direction.detach().float().to(device).movedim(1, -1)[keep], dim=-1)
    direction = F.kl_div(log_q, log_p, reduction='batchmean', log_target=True)
    return {'embedding': F.mse_loss(e_s, e_t), 'direction': direction}
