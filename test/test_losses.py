"""Task losses, MSRD and TGPD (mapkd_core.distill): hand-computed values on tiny inputs, masking, gradients, weights.

Every expected value below is derived by hand in the comments and evaluated with ``math`` (not with the code under
test).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mapkd_core.distill import (DirectionLoss, DiscriminativeLoss, MsrdLoss, SegmentationLoss, TaskLoss, TgpdLoss,
                                TokenGuidedPatchAttention, msrd_loss)
from benchmarks.bench_kernels import direction_loss_whole_grid
from mapkd_core.distill.losses import embedding_relation_loss, instance_response_loss
from mapkd_core.errors import ConfigError
from mapkd_core.models import MapOutput

LN3 = math.log(3.0)


def softplus(z):
    return math.log1p(math.exp(z))


# ----------------------------------------------------------------------------------------------------- segmentation
def test_segmentation_loss_by_hand():
    # two pixels; pixel 0 is a divider ([0, 1, 0, 0]), pixel 1 background ([1, 0, 0, 0])
    # logits: pixel 0 = [0, ln3, -ln3, 0] -> sigmoid [1/2, 3/4, 1/4, 1/2]
    #         pixel 1 = [ln3, 0, 0, -ln3] -> sigmoid [3/4, 1/2, 1/2, 1/4]
    # per element: -[p * y * ln s + (1 - y) * ln(1 - s)], p = 2.13
    #   pixel 0: ch0 y=0: -ln(1/2) = ln2;  ch1 y=1: -p ln(3/4);  ch2 y=0: -ln(3/4);  ch3 y=0: ln2
    #   pixel 1: ch0 y=1: -p ln(3/4);      ch1 y=0: ln2;          ch2 y=0: ln2;       ch3 y=0: -ln(3/4)
    # sum = 4 ln2 - 2 p ln(3/4) - 2 ln(3/4), mean over 8 elements
    p = 2.13
    expected = (4 * math.log(2) - 2 * p * math.log(0.75) - 2 * math.log(0.75)) / 8
    logits = torch.tensor([[0.0, LN3], [LN3, 0.0], [-LN3, 0.0], [0.0, -LN3]]).reshape(1, 4, 1, 2)
    gt = torch.tensor([[0, 1], [1, 0], [0, 0], [0, 0]], dtype=torch.uint8).reshape(1, 4, 1, 2)
    loss = SegmentationLoss(pos_weight=p)(logits, gt)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # pos_weight = 1 gives the plain BCE: (4 ln2 - 4 ln(3/4)) / 8
    assert SegmentationLoss(1.0)(logits, gt).item() == pytest.approx((4 * math.log(2) - 4 * math.log(0.75)) / 8,
                                                                     rel=1e-6)
    assert 'pos_weight' in dict(SegmentationLoss().named_buffers())
    # one pos_weight per channel: the positives are pixel 0's divider (channel 1) and pixel 1's background (channel 0)
    per_class = (1.0, 2.13, 5.0, 1.0)
    expected = (4 * math.log(2) - (2.13 + 1.0) * math.log(0.75) - 2 * math.log(0.75)) / 8
    assert SegmentationLoss(per_class)(logits, gt).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='3 per-class pos_weight values for 4'):
        SegmentationLoss((1.0, 2.0, 3.0))(logits, gt)
    with pytest.raises(ValueError, match='positive'):
        SegmentationLoss((1.0, 0.0, 1.0, 1.0))


def test_pos_weight_in_the_training_config():
    from mapkd_core.errors import ConfigError
    from mapkd_core.train.config import LossWeights
    from mapkd_core.config import from_dict
    assert from_dict(LossWeights, {'pos_weight': 3}).pos_weight == 3.0
    assert from_dict(LossWeights, {'pos_weight': [2.13, 2.13, 6, 2.13]}).pos_weight == (2.13, 2.13, 6.0, 2.13)
    with pytest.raises(ConfigError, match='pos_weight'):
        from_dict(LossWeights, {'pos_weight': [1.0, 2.0, 3.0]})
    with pytest.raises(ConfigError, match='pos_weight: must be > 0'):
        from_dict(LossWeights, {'pos_weight': [1.0, -1.0, 1.0, 1.0]})


# --------------------------------------------------------------------------------------------------- discriminative
def test_discriminative_loss_by_hand():
    # embedding dim 2, four pixels; instance 1 = pixels 0, 1 and instance 2 = pixels 2, 3
    #   instance 1: e = (0, 0), (2, 0) -> mu1 = (1, 0); ||e - mu1|| = 1, 1 -> relu(1 - 0.5)^2 = 0.25 each, mean 0.25
    #   instance 2: e = (3, 0), (3, 3) -> mu2 = (3, 1.5); ||e - mu2|| = 1.5, 1.5 -> relu(1.5 - 0.5)^2 = 1, mean 1
    #   var = (0.25 + 1) / n = 1.25 / 2 = 0.625
    #   ||mu1 - mu2|| = sqrt(2^2 + 1.5^2) = 2.5 -> relu(3 - 2.5)^2 = 0.25 for each of the 2 ordered pairs
    #   dist = (0.25 + 0.25) / (n (n - 1) = 2) / 2 = 0.125
    emb = torch.tensor([[0.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 3.0]]).reshape(1, 2, 1, 4)
    inst = torch.tensor([[[1, 1, 2, 2]]], dtype=torch.int32)
    var, dist = DiscriminativeLoss(delta_v=0.5, delta_d=3.0)(emb, inst)
    assert var.item() == pytest.approx(0.625, rel=1e-6)
    assert dist.item() == pytest.approx(0.125, rel=1e-6)

    # an id-0 pixel with an arbitrary embedding is ignored; ids need not be consecutive
    emb5 = torch.cat([emb, torch.tensor([[[[100.0]], [[-7.0]]]])], dim=3)
    inst5 = torch.tensor([[[4, 4, 9, 9, 0]]], dtype=torch.int32)
    var5, dist5 = DiscriminativeLoss()(emb5, inst5)
    assert (var5.item(), dist5.item()) == pytest.approx((0.625, 0.125), rel=1e-6)

    # batch average: a second sample without instances counts as 0 -> both terms halve
    emb2 = torch.cat([emb, torch.randn(1, 2, 1, 4)])
    inst2 = torch.cat([inst, torch.zeros_like(inst)])
    var2, dist2 = DiscriminativeLoss()(emb2, inst2)
    assert (var2.item(), dist2.item()) == pytest.approx((0.3125, 0.0625), rel=1e-6)


def test_discriminative_loss_three_instances_and_degenerate_cases():
    # 1-D embeddings, three single-pixel instances at 0, 1 and 10 (var = 0: every pixel is its own mean)
    #   pair gaps: |0-1| = 1 -> (3-1)^2 = 4; |0-10|, |1-10| >= 3 -> 0; ordered pairs sum = 2 * 4 = 8
    #   dist = 8 / (3 * 2) / 2 = 2/3
    emb = torch.tensor([0.0, 1.0, 10.0]).reshape(1, 1, 1, 3).requires_grad_()
    var, dist = DiscriminativeLoss()(emb, torch.tensor([[[1, 2, 3]]]))
    assert var.item() == 0.0 and dist.item() == pytest.approx(2 / 3, rel=1e-6)
    (var + dist).backward()
    assert torch.isfinite(emb.grad).all()
    # two instances with identical means (distance 0) and a single instance: finite values and gradients
    emb = torch.zeros(1, 2, 1, 2, requires_grad=True)
    var, dist = DiscriminativeLoss()(emb, torch.tensor([[[1, 2]]]))
    assert dist.item() == pytest.approx(9.0 * 2 / 2 / 2)  # (3 - 0)^2 for 2 ordered pairs / 2 / 2
    (var + dist).backward()
    assert torch.isfinite(emb.grad).all()
    var, dist = DiscriminativeLoss()(torch.randn(1, 2, 1, 2), torch.tensor([[[1, 1]]]))
    assert dist.item() == 0.0


# -------------------------------------------------------------------------------------------------------- direction
def test_direction_loss_by_hand():
    # pixel 0: bins (1, 19) -> two-hot target 0.5 at channels 1 and 19, 0 elsewhere (channel 0 = 0: a line pixel)
    #          logits: channel 1 = ln2, all others 0 -> Z = 2 + 36 = 38, p1 = 2/38, every other p = 1/38
    # pixel 1: bins (0, 0) -> no direction, masked out (its logits are arbitrary)
    # BCE on pixel 0, -[y ln p + (1 - y) ln(1 - p)]:
    #   ch1:  -(0.5 ln(2/38) + 0.5 ln(36/38))
    #   ch19: -(0.5 ln(1/38) + 0.5 ln(37/38))
    #   the other 35 channels (y = 0): -ln(37/38) each
    # normalised by (1 masked pixel * 37 channels)
    expected = (-(0.5 * math.log(2 / 38) + 0.5 * math.log(36 / 38))
                - (0.5 * math.log(1 / 38) + 0.5 * math.log(37 / 38))
                - 35 * math.log(37 / 38)) / 37
    logits = torch.zeros(1, 37, 1, 2)
    logits[0, 1, 0, 0] = math.log(2.0)
    logits[0, :, 0, 1] = torch.randn(37) * 5
    bins = torch.tensor([[1, 0], [19, 0]], dtype=torch.uint8).reshape(1, 2, 1, 2)
    loss = DirectionLoss()(logits, bins)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the same with a pre-built two-hot target
    target = torch.zeros(1, 37, 1, 2)
    target[0, 1, 0, 0] = target[0, 19, 0, 0] = 0.5
    target[0, 0, 0, 1] = 1.0
    assert DirectionLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # no direction pixel -> 0, still backward-able
    z = torch.randn(1, 37, 1, 2, requires_grad=True)
    zero = DirectionLoss()(z, torch.zeros(1, 2, 1, 2, dtype=torch.uint8))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # saturated logits stay finite (log(1 - p) clamped)
    z = torch.zeros(1, 37, 1, 1)
    z[0, 5] = 1e4
    sat = DirectionLoss()(z.requires_grad_(), torch.tensor([5, 5], dtype=torch.uint8).reshape(1, 2, 1, 1))
    sat.backward()
    assert torch.isfinite(sat) and torch.isfinite(z.grad).all()


def test_direction_loss_on_the_masked_pixels_equals_the_whole_grid_masked():
    """The loss gathers only the pixels that have a direction; the same value and gradient as the BCE computed over
    the whole (B, K, H, W) grid and masked (the form before 2026-12-07), zero gradient off the mask."""
    torch.manual_seed(0)
    k = 37
    logits = torch.randn(2, k, 12, 20, requires_grad=True)
    bins = torch.randint(1, k, (2, 2, 12, 20)) * (torch.rand(2, 1, 12, 20) < 0.2)
    bins[:, 1] *= torch.rand(2, 12, 20) < 0.6  # some pixels with a forward bin only
    bins = bins.to(torch.uint8)
    mask = (bins != 0).any(dim=1)
    target = F.one_hot(bins.long(), k).sum(1).movedim(-1, 1).float()
    target = target / target.sum(1, keepdim=True)
    whole = direction_loss_whole_grid(logits, bins)  # the reference form, kept in the benchmark that times it
    expected_grad, = torch.autograd.grad(whole, logits)
    for direction in (bins, target):  # integer bins, and the two-hot
        loss = DirectionLoss()(logits, direction)
        grad, = torch.autograd.grad(loss, logits)
        assert loss.item() == pytest.approx(whole.item(), rel=1e-6)
        assert torch.allclose(grad, expected_grad, atol=1e-9, rtol=1e-5)
        assert torch.count_nonzero(grad.abs().sum(1)[~mask]) == 0
    with pytest.raises(ValueError, match='differ'):
        DirectionLoss()(logits, bins[:, :, :6])


# ------------------------------------------------------------------------------------------------------------- MSRD
def _msrd_case():
    """One foreground pixel (index 0, a divider) and one background pixel (index 1)."""
    gt = torch.tensor([[0, 1], [1, 0], [0, 0], [0, 0]], dtype=torch.uint8).reshape(1, 4, 1, 2)
    student = torch.tensor([[0.0, 0.3], [1.0, -2.0], [-1.0, 4.0], [2.0, 0.1]]).reshape(1, 4, 1, 2)
    teacher = torch.tensor([[0.0, 5.0], [LN3, -5.0], [-LN3, 1.0], [0.0, 2.0]]).reshape(1, 4, 1, 2)
    return gt, student, teacher


def test_msrd_by_hand():
    # foreground pixel 0 only (M = 1): student z = [0, 1, -1, 2], teacher t = [0, ln3, -ln3, 0]
    # target y = sigmoid(t) = [1/2, 3/4, 1/4, 1/2]; BCE-with-logits = softplus(z) - y z
    #   z=0: ln2;  z=1: softplus(1) - 3/4;  z=-1: softplus(-1) + 1/4;  z=2: softplus(2) - 1
    # averaged over M * 4 = 4 elements
    expected = (math.log(2) + softplus(1) - 0.75 + softplus(-1) + 0.25 + softplus(2) - 1.0) / 4
    gt, student, teacher = _msrd_case()
    assert msrd_loss(student, teacher, gt).item() == pytest.approx(expected, rel=1e-6)
    # MsrdLoss: msrd = 0.75 * teacher term + 0.001 * coach term (coach = the same logits here)
    out = MsrdLoss()(student, gt, teacher_logits=teacher, coach_logits=teacher)
    assert out['msrd'].item() == pytest.approx(0.751 * expected, rel=1e-6)
    out = MsrdLoss(teacher_weight=0.8, coach_weight=0.0)(student, gt, teacher_logits=teacher)
    assert out['msrd_coach'].item() == 0.0
    assert out['msrd'].item() == pytest.approx(0.8 * expected, rel=1e-6)


def test_msrd_ignores_background_pixels():
    gt, student, teacher = _msrd_case()
    results = []
    for bg_value in (0.0, 37.0):
        s = student.clone()
        t = teacher.clone()
        s[0, :, 0, 1] = bg_value - 3.0  # background pixel of the student ...
        t[0, :, 0, 1] = -bg_value  # ... and of the teacher
        s.requires_grad_()
        loss = msrd_loss(s, t, gt)
        loss.backward()
        results.append((loss.detach(), s.grad.clone()))
        assert torch.equal(s.grad[0, :, 0, 1], torch.zeros(4))  # no gradient at the background pixel
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_msrd_without_foreground_is_zero_with_grad():
    gt = torch.zeros(2, 4, 3, 3, dtype=torch.uint8)
    gt[:, 0] = 1
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = msrd_loss(s, torch.randn(2, 4, 3, 3), gt)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_msrd_correct_mask_keeps_only_pixels_the_target_gets_right():
    """Three foreground pixels: a divider the teacher calls divider, a crossing the teacher calls background, a
    boundary the teacher calls boundary; ``mask='correct'`` distils the first and the last only."""
    gt = torch.zeros(1, 4, 1, 4, dtype=torch.uint8)
    gt[0, 1, 0, 0] = gt[0, 2, 0, 1] = gt[0, 3, 0, 2] = gt[0, 0, 0, 3] = 1
    teacher = torch.full((1, 4, 1, 4), -3.0)
    teacher[0, 1, 0, 0] = teacher[0, 0, 0, 1] = teacher[0, 3, 0, 2] = teacher[0, 0, 0, 3] = 3.0
    student = torch.randn(1, 4, 1, 4, requires_grad=True)
    loss = msrd_loss(student, teacher, gt, mask='correct')
    loss.backward()
    assert student.grad[0, :, 0, 0].abs().sum() > 0 and student.grad[0, :, 0, 2].abs().sum() > 0
    assert torch.equal(student.grad[0, :, 0, 1], torch.zeros(4))  # the crossing the teacher misses
    assert torch.equal(student.grad[0, :, 0, 3], torch.zeros(4))  # background
    keep = [0, 2]
    expected = F.binary_cross_entropy_with_logits(student.detach()[0, :, 0, keep].T,
                                                  torch.sigmoid(teacher[0, :, 0, keep].T))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert msrd_loss(student, teacher, gt).item() != pytest.approx(loss.item())  # the method's mask keeps all three
    assert 'mask=correct' in repr(MsrdLoss(mask='correct'))
    with pytest.raises(ConfigError, match='mask'):
        MsrdLoss(mask='teacher')


def test_msrd_all_mask_distils_every_pixel_background_included():
    """``mask='all'``: the BCE over every pixel and channel, so background pixels pull the student too (towards the
    target's low foreground probabilities), unlike the method's foreground mask."""
    gt = torch.zeros(1, 4, 1, 4, dtype=torch.uint8)
    gt[0, 1, 0, 0] = gt[0, 0, 0, 1:] = 1
    teacher = torch.randn(1, 4, 1, 4)
    student = torch.randn(1, 4, 1, 4, requires_grad=True)
    loss = msrd_loss(student, teacher, gt, mask='all')
    loss.backward()
    assert bool((student.grad[0, :, 0, 1:].abs().sum(0) > 0).all())  # background pixels are distilled
    expected = F.binary_cross_entropy_with_logits(student.detach(), torch.sigmoid(teacher))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert msrd_loss(student, teacher, gt).item() != pytest.approx(loss.item())


# -------------------------------------------------------------------------------------------------------------- ERD
def _gt_with_foreground(b, h, w, pixels):
    gt = torch.zeros(b, 4, h, w)
    gt[:, 0] = 1.0
    for s, y, x in pixels:
        gt[s, 0, y, x], gt[s, 1, y, x] = 0.0, 1.0
    return gt


def test_erd_by_hand_and_invariant_to_a_rotation_of_the_target():
    """Two foreground pixels at embedding distance 1 (student) and 2 (target): (1 - 2)^2 over the 2 ordered pairs;
    the background pixel is ignored, the distances are clamped at 3, and rotating the target's embedding space (or
    giving it another dimension) changes nothing."""
    gt = _gt_with_foreground(1, 1, 3, [(0, 0, 0), (0, 0, 1)])
    student = torch.tensor([[[[0.0, 1.0, 50.0]], [[0.0, 0.0, 50.0]]]], requires_grad=True)  # (1, 2, 1, 3)
    target = torch.tensor([[[[0.0, 2.0, -9.0]], [[0.0, 0.0, 9.0]]]])
    loss = embedding_relation_loss(student, target, gt)
    assert loss.item() == pytest.approx(1.0, abs=1e-3)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, :, 0, 2].abs().sum() == 0  # background: no pull
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    rotated = torch.einsum('ij,bjhw->bihw', rot, target)
    assert embedding_relation_loss(student, rotated, gt).item() == pytest.approx(loss.item(), abs=1e-4)
    wider = torch.cat([target, torch.zeros(1, 3, 1, 3)], 1)
    assert embedding_relation_loss(student, wider, gt).item() == pytest.approx(loss.item(), abs=1e-4)
    far = target * 10.0  # both pairs beyond the clamp on the target side: 3, against the student's 1
    assert embedding_relation_loss(student, far, gt).item() == pytest.approx(4.0, abs=1e-3)


def test_erd_is_zero_with_finite_gradients_when_the_relations_match_or_nothing_is_foreground():
    gt = _gt_with_foreground(2, 4, 4, [(0, y, x) for y in range(4) for x in range(4)])
    same = torch.zeros(2, 3, 4, 4, requires_grad=True)  # every pixel at the same point: distances 0 on both sides
    loss = embedding_relation_loss(same, torch.zeros(2, 5, 4, 4), gt)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(same.grad).all()
    none = torch.randn(1, 3, 4, 4, requires_grad=True)
    empty = embedding_relation_loss(none, torch.randn(1, 3, 4, 4), _gt_with_foreground(1, 4, 4, []))
    empty.backward()
    assert empty.item() == 0.0 and none.grad is not None and none.grad.abs().sum() == 0


def test_erd_samples_at_most_max_pixels_evenly_and_names_bad_shapes():
    gt = _gt_with_foreground(1, 8, 8, [(0, y, x) for y in range(8) for x in range(8)])
    student, target = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    full = embedding_relation_loss(student, target, gt, max_pixels=64)
    assert embedding_relation_loss(student, target, gt, max_pixels=16).item() != pytest.approx(full.item())
    assert embedding_relation_loss(student, target, gt, max_pixels=16).item() == \
        embedding_relation_loss(student, target, gt, max_pixels=16).item()  # deterministic
    with pytest.raises(ValueError, match='differ in batch or size'):
        embedding_relation_loss(student, torch.randn(1, 4, 8, 7), gt)
    with pytest.raises(ValueError, match='GT semantic'):
        embedding_relation_loss(student, target, gt[:, :, :4])
    with pytest.raises(ValueError, match='max_pixels must be >= 2'):
        embedding_relation_loss(student, target, gt, max_pixels=1)


# -------------------------------------------------------------------------------------------------------------- IRD
def _semantic_logits(gt, right):
    """Target semantic logits whose argmax is the GT class where ``right`` (B, H, W) and background elsewhere."""
    logits = torch.where(gt > 0, 5.0, -5.0)
    wrong = torch.full_like(logits, -5.0)
    wrong[:, 0] = 5.0
    return torch.where(right[:, None], logits, wrong)


def test_ird_by_hand_at_the_pixels_where_the_target_is_right():
    """Three GT foreground pixels, the target right at two: the embedding MSE and the direction KL over those two
    only; the background pixel and the pixel the target gets wrong pull nothing."""
    gt = _gt_with_foreground(1, 1, 4, [(0, 0, 0), (0, 0, 1), (0, 0, 2)])
    right = torch.tensor([[[True, True, False, True]]])
    target_logits = _semantic_logits(gt, right)
    s_emb = torch.tensor([[[[0.0, 1.0, 7.0, 9.0]], [[0.0, 0.0, 7.0, 9.0]]]], requires_grad=True)  # (1, 2, 1, 4)
    t_emb = torch.tensor([[[[1.0, 1.0, -7.0, -9.0]], [[0.0, 2.0, -7.0, -9.0]]]])
    s_dir = torch.zeros(1, 3, 1, 4, requires_grad=True)  # uniform over 3 bins
    t_dir = torch.zeros(1, 3, 1, 4)
    t_dir[0, 0, 0, 1] = math.log(4.0)  # (4, 1, 1) / 6 at pixel 1, uniform at pixel 0
    out = instance_response_loss(s_emb, s_dir, t_emb, t_dir, target_logits, gt)
    assert out['embedding'].item() == pytest.approx((1.0 + 4.0) / 4)  # (0-1)^2 and (0-2)^2 over 2 pixels x 2 dims
    p = torch.tensor([4.0, 1.0, 1.0]) / 6
    kl = float((p * (p / (1.0 / 3)).log()).sum())
    assert out['direction'].item() == pytest.approx(kl / 2, rel=1e-5)  # pixel 0 adds 0
    (out['embedding'] + out['direction']).backward()
    assert s_emb.grad[0, :, 0, 2:].abs().sum() == 0 and s_dir.grad[0, :, 0, 2:].abs().sum() == 0
    assert s_emb.grad[0, 0, 0, 0] < 0 and s_dir.grad[0, 0, 0, 1] < 0  # towards the target
    # every GT foreground pixel with mask='foreground': the wrong pixel's embedding gap (14^2 + 14^2) joins in
    fg = instance_response_loss(s_emb, s_dir, t_emb, t_dir, target_logits, gt, mask='foreground')
    assert fg['embedding'].item() == pytest.approx((1.0 + 4.0 + 2 * 14.0 ** 2) / 6)


def test_ird_is_zero_where_student_and_target_agree_or_nothing_is_kept_and_names_bad_inputs():
    gt = _gt_with_foreground(2, 4, 4, [(0, y, x) for y in range(4) for x in range(4)])
    logits = _semantic_logits(gt, torch.ones(2, 4, 4, dtype=torch.bool))
    emb, direction = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4, requires_grad=True)
    same = instance_response_loss(emb, direction, emb.detach().clone(), direction.detach().clone(), logits, gt)
    assert same['embedding'].item() == 0.0 and same['direction'].item() == pytest.approx(0.0, abs=1e-6)
    wrong = _semantic_logits(gt, torch.zeros(2, 4, 4, dtype=torch.bool))  # the target right nowhere
    none = instance_response_loss(emb, direction, torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), wrong, gt)
    (none['embedding'] + none['direction']).backward()
    assert none['embedding'].item() == 0.0 and emb.grad.abs().sum() == 0 and direction.grad.abs().sum() == 0
    with pytest.raises(ValueError, match='must have the same shape'):
        instance_response_loss(emb, direction, torch.randn(2, 4, 4, 4), direction, logits, gt)
    with pytest.raises(ValueError, match='direction'):
        instance_response_loss(emb, direction, emb, torch.randn(2, 6, 4, 4), logits, gt)
    with pytest.raises(ValueError, match='share batch and size'):
        instance_response_loss(emb, direction, emb, direction, logits[:, :, :3], gt[:, :, :3])
    with pytest.raises(ConfigError, match="IRD: mask must be one of foreground, correct, all, got 'wrong'"):
        instance_response_loss(emb, direction, emb, direction, logits, gt, mask='wrong')


# ------------------------------------------------------------------------------------------------------------- TGPD
def _tiny_tgpd(**kw):
    """channels=1, patch=1, dim=1; identity projections: patch x -> x, token mean -> mean."""
    loss = TgpdLoss(channels=1, patch=1, dim=1, feature_hw=(1, 2), **kw)
    with torch.no_grad():
        loss.attention.patch_embed.weight.fill_(1.0)
        loss.attention.patch_embed.bias.zero_()
        loss.attention.token_embed.weight.fill_(1.0)
        loss.attention.token_embed.bias.zero_()
    return loss


def test_tgpd_by_hand():
    # student feature [1, 2] (1x1x1x2), patch 1 -> N = 2 patches; token = mean = 1.5 -> X = [1.5, 1, 2] (dim 1)
    # scores s_ij = x_i x_j / sqrt(1); row i: log A_S[i, j] = x_i x_j - LSE_i, LSE_i = ln sum_k exp(x_i x_k)
    # teacher feature [0, 0] -> X_T = [0, 0, 0] -> A_T = 1/3 everywhere
    # KL row i = sum_j (1/3) (ln(1/3) - log A_S[i, j]) = -ln3 - x_i S / 3 + LSE_i, with S = sum_j x_j = 4.5
    # batchmean = sum over the 3 rows / B (B = 1)
    # MSE = ((1 - 0)^2 + (2 - 0)^2) / 2 = 2.5, weighted 0.5 -> 1.25
    x = [1.5, 1.0, 2.0]
    s = sum(x)
    kl = sum(-LN3 - xi * s / 3 + math.log(sum(math.exp(xi * xk) for xk in x)) for xi in x)
    expected = kl + 0.5 * 2.5
    loss = _tiny_tgpd()
    student = torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2).requires_grad_()
    teacher = torch.zeros(1, 1, 1, 2)
    out = loss(student, teacher_bev=teacher)
    assert out['tgpd_teacher'].item() == pytest.approx(expected, rel=1e-6)
    assert out['tgpd_coach'].item() == 0.0
    assert out['tgpd'].item() == pytest.approx(0.5 * expected, rel=1e-6)
    # the attention itself: row 1 (x = 1) = softmax([1.5, 1, 2]) = exp(.) / (e^1.5 + e + e^2)
    a = loss.attention(student)
    denom = math.exp(1.5) + math.e + math.exp(2)
    assert a[0, 1].tolist() == pytest.approx([math.exp(1.5) / denom, math.e / denom, math.exp(2) / denom], rel=1e-6)
    # coach term with weight 0.01 and the same target: tgpd = 0.5 e + 0.01 e
    out = loss(student, teacher_bev=teacher, coach_bev=teacher)
    assert out['tgpd'].item() == pytest.approx(0.51 * expected, rel=1e-6)


def test_tgpd_dim_scaling_and_tau():
    # dim = 2 with weights (1, 1): X = [x, x] per element -> x_i . x_j = 2 x_i x_j, / sqrt(2) -> sqrt(2) x_i x_j;
    # tau = 2 halves the scores. Student [1, 2], teacher [0, 0] as above, KL only (mse_weight 0).
    c = math.sqrt(2) / 2
    x = [1.5, 1.0, 2.0]
    kl = sum(-LN3 - c * xi * sum(x) / 3 + math.log(sum(math.exp(c * xi * xk) for xk in x)) for xi in x)
    loss = TgpdLoss(channels=1, patch=1, dim=2, tau=2.0, mse_weight=0.0, feature_hw=None)
    with torch.no_grad():
        for lin in (loss.attention.patch_embed, loss.attention.token_embed):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    out = loss(torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert out['tgpd_teacher'].item() == pytest.approx(kl, rel=1e-6)


def test_tgpd_patchify_and_resize():
    att = TokenGuidedPatchAttention()  # 192 channels, patch 5, dim 512, 25 x 50
    assert att.num_patches == 50
    assert att.embed(torch.randn(2, 192, 25, 50)).shape == (2, 51, 512)
    # 26 x 51 pads to 30 x 55 -> 6 * 11 patches
    assert att.embed(torch.randn(1, 192, 26, 51)).shape == (1, 67, 512)
    a = att(torch.randn(2, 192, 25, 50))
    assert torch.allclose(a.sum(-1), torch.ones(2, 51))
    # patch order: row-major over the patch grid, each patch flattened (C, p, p)
    small = TokenGuidedPatchAttention(channels=1, patch=2, dim=1, feature_hw=None)
    f = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert small.patchify(f).tolist() == [[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]]
    # a target one cell smaller is resized; two cells is an error
    loss = TgpdLoss(channels=4, patch=5, dim=8)
    out = loss(torch.randn(1, 4, 25, 50), torch.randn(1, 4, 24, 50))
    assert torch.isfinite(out['tgpd'])
    with pytest.raises(ValueError):
        loss(torch.randn(1, 4, 25, 50), torch.randn(1, 4, 23, 50))


def test_tgpd_projections_are_trained_and_persistent():
    torch.manual_seed(0)
    loss = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 20))
    modules = (id(loss.attention), id(loss.attention.patch_embed), id(loss.attention.token_embed))
    params = {name: id(p) for name, p in loss.named_parameters()}
    assert set(params) == {'attention.patch_embed.weight', 'attention.patch_embed.bias',
                           'attention.token_embed.weight', 'attention.token_embed.bias'}
    start = {name: p.detach().clone() for name, p in loss.named_parameters()}
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    teacher, coach = torch.randn(2, 8, 10, 20), torch.randn(2, 8, 10, 20)
    for _ in range(3):
        student = torch.randn(2, 8, 10, 20, requires_grad=True)
        opt.zero_grad()
        loss(student, teacher, coach)['tgpd'].backward()
        for name, p in loss.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        assert (id(loss.attention), id(loss.attention.patch_embed), id(loss.attention.token_embed)) == modules
        assert {name: id(p) for name, p in loss.named_parameters()} == params
    for name, p in loss.named_parameters():
        assert not torch.equal(p.detach(), start[name]), name


# ------------------------------------------------------------------------------------------------------- task loss
def _batch(b=2, h=6, w=8):
    """A small GT batch: one divider line (instance 1) and one boundary line (instance 2) per sample."""
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, 1, 1:7] = 1
    labels[:, 4, 1:7] = 3
    semantic = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).to(torch.uint8)
    instance = torch.zeros(b, h, w, dtype=torch.int32)
    instance[:, 1, 1:7] = 1
    instance[:, 4, 1:7] = 2
    direction = torch.zeros(b, 2, h, w, dtype=torch.uint8)
    direction[:, 0, 1, 1:7], direction[:, 1, 1, 1:7] = 1, 19
    direction[:, 0, 4, 1:7], direction[:, 1, 4, 1:7] = 10, 28
    return {'semantic': semantic, 'instance': instance, 'direction': direction}


def _output(b=2, h=6, w=8, requires_grad=True):
    out = MapOutput(semantic=torch.randn(b, 4, h, w), embedding=torch.randn(b, 16, h, w),
                    direction=torch.randn(b, 37, h, w), bev=torch.randn(b, 8, 3, 4))
    if requires_grad:
        for t in (out.semantic, out.embedding, out.direction, out.bev):
            t.requires_grad_()
    return out


def test_task_loss_weights_and_keys():
    torch.manual_seed(0)
    batch, out = _batch(), _output()
    base = TaskLoss()(out, batch)
    assert set(base) == {'seg', 'var', 'dist', 'direction', 'total'}
    # total = 1.0 seg + 0.1 var + 0.1 dist + 0.1 direction
    assert base['total'].item() == pytest.approx(
        (base['seg'] + 0.1 * (base['var'] + base['dist'] + base['direction'])).item(), rel=1e-6)
    doubled = TaskLoss(seg=2.0)(out, batch)
    assert (doubled['total'] - base['total']).item() == pytest.approx(base['seg'].item(), rel=1e-5)
    custom = TaskLoss(seg=0.0, var=1.0, dist=0.0, direction=0.0)(out, batch)
    assert custom['total'].item() == pytest.approx(base['var'].item(), rel=1e-6)
    # a dict works as well as a MapOutput (e.g. an HD-prior pre-training output)
    as_dict = TaskLoss()({'semantic': out.semantic, 'embedding': out.embedding, 'direction': out.direction}, batch)
    assert as_dict['total'].item() == pytest.approx(base['total'].item(), rel=1e-6)


def test_task_loss_perfect_beats_random():
    torch.manual_seed(0)
    batch = _batch()
    sem = batch['semantic'].float()
    embedding = torch.zeros(2, 16, 6, 8)
    embedding[:, 0][batch['instance'] == 1] = 5.0  # two clusters 10 apart (> delta_d), zero spread (< delta_v)
    embedding[:, 0][batch['instance'] == 2] = -5.0
    from mapkd_core.data.rasterize import direction_onehot
    two_hot = direction_onehot(batch['direction'], 37)
    perfect = MapOutput(semantic=sem * 20 - 10, embedding=embedding,
                        direction=torch.log(two_hot.clamp_min(1e-6)), bev=torch.zeros(2, 8, 3, 4))
    good = TaskLoss()(perfect, batch)
    bad = TaskLoss()(_output(requires_grad=False), batch)
    assert good['total'] < bad['total']
    assert good['var'].item() == 0.0 and good['dist'].item() == 0.0
    assert good['seg'] < bad['seg'] and good['direction'] < bad['direction']


def test_task_loss_all_background_is_finite():
    batch = _batch()
    batch['semantic'].zero_()
    batch['semantic'][:, 0] = 1
    batch['instance'].zero_()
    batch['direction'].zero_()
    out = _output()
    losses = TaskLoss()(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['var'].item() == losses['dist'].item() == losses['direction'].item() == 0.0
    losses['total'].backward()
    assert all(torch.isfinite(t.grad).all() for t in (out.semantic, out.embedding, out.direction))


# -------------------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_student_only():
    torch.manual_seed(0)
    batch = _batch()
    student = _output()
    teacher = _output()
    coach = _output()
    task = TaskLoss()(student, batch)
    msrd = MsrdLoss()(student.semantic, batch['semantic'], teacher.semantic, coach.semantic)
    tgpd = TgpdLoss(channels=8, patch=2, dim=4, feature_hw=(3, 4))(student.bev, teacher.bev, coach.bev)
    # each loss separately reaches its student tensor
    for value, tensors in ((task['seg'], [student.semantic]), (task['var'] + task['dist'], [student.embedding]),
                           (task['direction'], [student.direction]), (msrd['msrd_teacher'], [student.semantic]),
                           (msrd['msrd_coach'], [student.semantic]), (tgpd['tgpd_teacher'], [student.bev]),
                           (tgpd['tgpd_coach'], [student.bev])):
        grads = torch.autograd.grad(value, tensors, retain_graph=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    (task['total'] + msrd['msrd'] + tgpd['tgpd']).backward()
    for t in (teacher.semantic, teacher.bev, coach.semantic, coach.bev):
        assert t.grad is None


def test_tgpd_normalize_option_ignores_the_scale_of_the_features():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 8, 10, 10), torch.randn(2, 8, 10, 10)
    raw = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 10))
    norm = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 10), normalize=True)
    norm.load_state_dict(raw.state_dict())
    a, b = norm(student, teacher)['tgpd_teacher'], norm(student, 30.0 * teacher + 5.0)['tgpd_teacher']
    assert a.item() == pytest.approx(b.item(), rel=1e-4)  # standardised: a scaled, shifted teacher is the same target
    assert raw(student, 30.0 * teacher)['tgpd_teacher'].item() > 50 * raw(student, teacher)['tgpd_teacher'].item()
    # standardised features of a perfect student: MSE 0 and identical attention, so the loss is 0
    assert norm(3.0 * teacher, teacher)['tgpd_teacher'].item() == pytest.approx(0.0, abs=1e-5)
    assert 'normalize=True' in repr(norm)


def test_tgpd_kl_mean_divides_the_attention_kl_by_its_rows():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 8, 10, 15), torch.randn(2, 8, 10, 15)
    total = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 15), mse_weight=0.0)
    mean = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 15), mse_weight=0.0, kl_reduction='mean')
    mean.load_state_dict(total.state_dict())
    rows = 1 + total.attention.num_patches  # the token + 2 x 3 patches
    a, b = total(student, teacher)['tgpd_teacher'].item(), mean(student, teacher)['tgpd_teacher'].item()
    assert a > 0 and b == pytest.approx(a / rows, rel=1e-5)
    assert 'kl_reduction=mean' in repr(mean)
    # parts(): the KL and the weighted MSE separately (bench_loss_balance), summing to the term
    both = TgpdLoss(channels=8, patch=5, dim=16, feature_hw=(10, 15), normalize=True, kl_reduction='mean')
    kl, mse = both.parts(student, teacher)
    assert kl.item() > 0 and mse.item() > 0
    assert (kl + mse).item() == pytest.approx(both.term(student, teacher).item(), rel=1e-6)
    with pytest.raises(ConfigError, match='kl_reduction'):
        TgpdLoss(channels=8, kl_reduction='rows')


def test_msrd_pull_reports_where_msrd_moves_the_student():
    """bench_loss_balance's MSRD probe: at the GT pixels of a class, the student's and teacher's probabilities, argmax
    hits and the sign of MSRD's gradient on the class logit (positive: MSRD lowers the student's own class)."""
    from benchmarks.bench_loss_balance import merge_pulls, msrd_pull
    gt = torch.zeros(1, 4, 2, 3)
    gt[0, 0] = 1
    gt[0, :, 0, :2] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None]  # two divider pixels, the rest background
    student = torch.zeros(1, 4, 2, 3)
    teacher = torch.zeros(1, 4, 2, 3)
    student[0, 1, 0, :2] = torch.logit(torch.tensor(0.9))  # the student is sure of the dividers
    teacher[0, 1, 0, :2] = torch.logit(torch.tensor(0.6))
    teacher[0, 0, 0, 0] = torch.logit(torch.tensor(0.8))  # the teacher calls one of them background
    pull = msrd_pull(student, teacher, gt)
    assert pull['ped_crossing']['pixels'] == 0 and pull['divider']['pixels'] == 2
    merged = merge_pulls([pull, pull])['divider']
    assert merged['pixels'] == 4
    assert merged['student_p'] == pytest.approx(0.9) and merged['teacher_p'] == pytest.approx(0.6)
    assert merged['student_hit'] == 1.0 and merged['teacher_hit'] == 0.5
    assert merged['teacher_p_background'] == pytest.approx((0.8 + 0.5) / 2)
    assert merged['msrd_grad'] == pytest.approx(0.3)  # MSRD pulls the student's divider logit down
    assert merge_pulls([pull])['ped_crossing']['student_p'] is None
