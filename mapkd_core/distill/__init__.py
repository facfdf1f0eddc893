"""MapKD losses: the HDMapNet task losses, MSRD (masked semantic response distillation) and TGPD (token-guided 2-D
patch distillation of BEV features). See :mod:`mapkd_core.distill.losses` and :mod:`mapkd_core.distill.tgpd` for the
formulas, the defaults of the reference scripts and the numerical decisions."""
from .losses import (COACH_MSRD_WEIGHT, DELTA_D, DELTA_V, DIRECTION_WEIGHT, DIST_WEIGHT, GRAD_CLIP_NORM, POS_WEIGHT,
                     SEG_WEIGHT, STUDENT_MSRD_COACH_WEIGHT, STUDENT_MSRD_COACH_WEIGHT_TRAIN_S,
                     STUDENT_MSRD_TEACHER_WEIGHT, VAR_WEIGHT, DirectionLoss, DiscriminativeLoss, MsrdLoss,
                     SegmentationLoss, TaskLoss, msrd_loss)
from .tgpd import (COACH_TGPD_WEIGHT, STUDENT_TGPD_COACH_WEIGHT, STUDENT_TGPD_TEACHER_WEIGHT, TGPD_MSE_WEIGHT,
                   TgpdLoss, TokenGuidedPatchAttention)

__all__ = [
    'COACH_MSRD_WEIGHT', 'COACH_TGPD_WEIGHT', 'DELTA_D', 'DELTA_V', 'DIRECTION_WEIGHT', 'DIST_WEIGHT',
    'GRAD_CLIP_NORM', 'POS_WEIGHT', 'SEG_WEIGHT', 'STUDENT_MSRD_COACH_WEIGHT', 'STUDENT_MSRD_COACH_WEIGHT_TRAIN_S',
    'STUDENT_MSRD_TEACHER_WEIGHT', 'STUDENT_TGPD_COACH_WEIGHT', 'STUDENT_TGPD_TEACHER_WEIGHT', 'TGPD_MSE_WEIGHT',
    'VAR_WEIGHT', 'DirectionLoss', 'DiscriminativeLoss', 'MsrdLoss', 'SegmentationLoss', 'TaskLoss',
    'TgpdLoss', 'TokenGuidedPatchAttention', 'msrd_loss',
]
