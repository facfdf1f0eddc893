"""The MapKD model family: teacher, coach, paper student and edge student (method doc sections 1 and 2).

Every model takes the same named inputs and returns one :class:`MapOutput`, so losses and the runtime never depend
on tuple positions:

==============  =========================  ===================================================================
input           shape                      used by
==============  =========================  ===================================================================
images          (B, N, 3, h, w) float      all (ImageNet-normalised RGB at the configured size)
intrinsics      (B, N, 3, 3) float         all (at the network image size); the edge student and the coach use
                                           them, the paper student's MLP view transformer does not need them
cam_to_ego      (B, N, 4, 4) float         all
lidar           (B, P, 5) float            teacher (x, y, z, intensity, time lag in the ego frame)
lidar_mask      (B, P) bool                teacher
sd_prior        (B, 1, H, W) float         teacher, coach ({-1, +1} OSM raster)
==============  =========================  ===================================================================

Outputs: ``semantic`` (B, 4, H, W) logits over CLASS_NAMES, ``embedding`` (B, 16, H, W), ``direction`` (B, 37, H, W)
logits, and ``bev`` (B, 192, H/8, W/8), the BEV feature TGPD distils (P-MapNet's ``bev_small``: the fused BEV after
the three stride-2 convs, before any prior fusion; for the edge student the 1/8 neck stage). Named intermediate
features are in ``features``.

Fixes of the reference code's bugs (method doc section 8.2): no module is created in forward, nothing is
resized to a hard-coded (200, 400), no unused module is built (the student has no SD modules, the coach's LSS has no
dead BevEncode, EfficientNet has no classification head), and the first-stage decoder of a model with the HD head
has only the semantic head that the HD head consumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import CLASS_NAMES
from ..errors import ConfigError
from .blocks import BevDecoder, CamEncoder, ConvBev, ConvUp, FeatureExpansion
from .config import ModelConfig
from .edge import EdgeNeck, GroundSampler
from .view import IPM, MLPViewTransformer


@dataclass
class MapOutput:
    semantic: torch.Tensor
    embedding: torch.Tensor
    direction: torch.Tensor
    bev: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def heads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.semantic, self.embedding, self.direction


class MapModel(nn.Module):
    """Base class: named inputs, a config, and the list of inputs the model needs."""

    #: batch keys this model reads besides the cameras
    extra_inputs: tuple[str, ...] = ()

    def prefix_encoders(self) -> dict[str, CamEncoder]:
        """The camera encoders whose frozen prefix ``forward`` can take precomputed (its ``encoder_prefix``: {name:
        (blocks, (B, N, C, h, w) tensor)}, the trainer's cache under ``freeze_eval``), by module name; none here."""
        return {}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.head_channels = {'semantic': len(CLASS_NAMES), 'embedding': cfg.embedding_dim,
                              'direction': cfg.direction_channels}

    @property
    def inputs(self) -> tuple[str, ...]:
        return ('images', 'intrinsics', 'cam_to_ego') + self.extra_inputs

    def forward_batch(self, batch: dict, encoder_prefix: dict | None = None) -> MapOutput:
        """Run on a Dataset batch dict; a missing input is a clear error naming it and how to get it.
        ``encoder_prefix``: precomputed encoder prefixes (see :meth:`prefix_encoders`; ``train.cache.cached_prefixes``)."""
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise ConfigError(f'{self.cfg.name} needs {missing} in the batch (enable them in the dataset config: '
                              'load_lidar for lidar/lidar_mask, load_sd_prior for sd_prior)')
        inputs = {k: batch[k] for k in self.inputs}
        return self(**inputs, encoder_prefix=encoder_prefix) if encoder_prefix else self(**inputs)

    def _check_cameras(self, images: torch.Tensor) -> None:
        n = len(self.cfg.image.cameras)
        if images.dim() != 5 or images.shape[1] != n or tuple(images.shape[-2:]) != (self.cfg.image.height,
                                                                                       self.cfg.image.width):
            raise ValueError(f'{self.cfg.name}: images must be (B, {n}, 3, {self.cfg.image.height}, '
                             f'{self.cfg.image.width}), got {tuple(images.shape)}')


class _HdmapnetCamera(nn.Module):
    """Camera branch of HDMapNet: encoder -> per-camera MLP view transformer -> IPM -> (B, 64, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = CamEncoder(cfg.encoder, (cfg.image.height, cfg.image.width))
        f = cfg.view.bv_downsample
        bv = (cfg.grid.H // f, cfg.grid.W // f)
        self.view = MLPViewTransformer(len(cfg.image.cameras), self.encoder.feature_hw, bv)
        self.ipm = IPM(cfg.grid, bv)

    def forward(self, images: torch.Tensor, intrinsics: Optional[torch.Tensor], cam_to_ego: torch.Tensor,
                prefix=None) -> torch.Tensor:
        return self.ipm(self.view(self.encoder.cameras(images, prefix)), cam_to_ego)


class _GroundCamera(nn.Module):
    """Camera branch with ``view.kind: ground`` (not in the method): encoder (stride 8) -> the edge student's
    parameter-free ground sampler at half the grid resolution -> bilinear upsampling to the grid, (B, C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = CamEncoder(cfg.encoder, (cfg.image.height, cfg.image.width))
        self.sampler = GroundSampler(cfg.grid, (cfg.image.height, cfg.image.width))
        self.grid_hw = tuple(cfg.grid.shape)

    def forward(self, images: torch.Tensor, intrinsics: Optional[torch.Tensor], cam_to_ego: torch.Tensor,
                prefix=None) -> torch.Tensor:
        if intrinsics is None:
            raise ValueError('the ground view transform needs the camera intrinsics')
        feats = self.encoder.cameras(images, prefix)
        return F.interpolate(self.sampler(feats, intrinsics, cam_to_ego), size=self.grid_hw, mode='bilinear',
                             align_corners=False)


def _camera_branch(cfg: ModelConfig) -> nn.Module:
    return _GroundCamera(cfg) if cfg.view.kind == 'ground' else _HdmapnetCamera(cfg)


class _PriorFusedModel(MapModel):
    """Teacher and coach: camera BEV + (sim-)LiDAR BEV -> conv_bev -> SD cross-attention -> conv_up -> decoder
    [-> HD-prior refinement head -> decoder]."""

    extra_inputs = ('sd_prior',)

    def __init__(self, cfg: ModelConfig, use_hd: bool):
        super().__init__(cfg)
        from .hd_prior import HdPriorRefiner
        from .sd_fusion import SdCrossAttention
        self.camera = _camera_branch(cfg)
        c = cfg.camera_channels + cfg.lidar_channels
        if c != cfg.bev_channels:
            raise ConfigError(f'{cfg.name}: camera_channels + lidar_channels ({c}) must equal bev_channels '
                              f'({cfg.bev_channels})')
        self.conv_bev = ConvBev(cfg.bev_channels)
        self.sd = SdCrossAttention(cfg.sd, bev_channels=cfg.bev_channels)
        self.conv_up = ConvUp(cfg.sd.d_model, cfg.bev_channels)
        self.use_hd = use_hd
        if use_hd:
            self.decoder = BevDecoder(cfg.bev_channels, cfg.decoder, {'semantic': len(CLASS_NAMES)})
            self.hd = HdPriorRefiner(cfg.grid, cfg.hd, in_channels=len(CLASS_NAMES))
            self.hd_decoder = BevDecoder(cfg.hd.dim, cfg.decoder, self.head_channels)
        else:
            self.decoder = BevDecoder(cfg.bev_channels, cfg.decoder, self.head_channels)

    def prefix_encoders(self) -> dict[str, CamEncoder]:
        return {'camera.encoder': self.camera.encoder}

    def _fuse(self, camera_bev, lidar_bev, sd_prior, lidar_name: str) -> MapOutput:
        fused = torch.cat([camera_bev, lidar_bev], dim=1)
        bev_small = self.conv_bev(fused)
        bev_out = self.sd(bev_small, sd_prior)
        stage1 = self.decoder(self.conv_up(bev_out, self.cfg.grid.shape))
        feats = {'camera_bev': camera_bev, lidar_name: lidar_bev, 'bev_small': bev_small, 'bev_out': bev_out,
                 'stage1_semantic': stage1['semantic']}
        out = self.hd_decoder(self.hd(stage1['semantic'])) if self.use_hd else stage1
        return MapOutput(out['semantic'], out['embedding'], out['direction'], bev_small, feats)


class Teacher(_PriorFusedModel):
    """P-MapNet camera + LiDAR + SD + HD prior (``PMapNet_mae_head``)."""

    extra_inputs = ('lidar', 'lidar_mask', 'sd_prior')

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, use_hd=cfg.hd.enabled)
        from .pointpillars import PointPillarsEncoder
        self.pillars = PointPillarsEncoder(cfg.grid, cfg.pillars, out_channels=cfg.lidar_channels)

    def forward(self, images, intrinsics, cam_to_ego, lidar=None, lidar_mask=None, sd_prior=None,
                encoder_prefix=None) -> MapOutput:
        self._check_cameras(images)
        if lidar is None or lidar_mask is None or sd_prior is None:
            raise ValueError('teacher needs lidar, lidar_mask and sd_prior')
        prefix = encoder_prefix or {}
        return self._fuse(self.camera(images, intrinsics, cam_to_ego, prefix.get('camera.encoder')),
                          self.pillars(lidar, lidar_mask), sd_prior, 'lidar_bev')


class Coach(_PriorFusedModel):
    """The coach ``PMapNet*``: the teacher with LiDAR replaced by a Lift-Splat simulated LiDAR from the cameras;
    the HD head is optional (``hd.enabled``; MapKD's default coach, ``PMapNet_sdmap_C``, has none)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, use_hd=cfg.hd.enabled)
        from .lss import LiftSplat
        self.sim_lidar = LiftSplat(cfg.grid, cfg.image, cfg.lss, out_channels=cfg.lidar_channels)

    def prefix_encoders(self) -> dict[str, CamEncoder]:
        # with the same frozen prefix (both from ImageNet, freeze_eval) the two share one cache entry per sample
        return {**super().prefix_encoders(), 'sim_lidar.encoder': self.sim_lidar.encoder}

    def forward(self, images, intrinsics, cam_to_ego, lidar=None, lidar_mask=None, sd_prior=None,
                encoder_prefix=None) -> MapOutput:
        self._check_cameras(images)
        if sd_prior is None:
            raise ValueError('coach needs sd_prior')
        prefix = encoder_prefix or {}
        return self._fuse(self.camera(images, intrinsics, cam_to_ego, prefix.get('camera.encoder')),
                          self.sim_lidar(images, intrinsics, cam_to_ego, prefix.get('sim_lidar.encoder')),
                          sd_prior, 'sim_lidar_bev')


class Student(MapModel):
    """The paper's camera-only student (``PMapNet_sdmap_S``): camera BEV -> feature expansion -> conv_bev (the TGPD
    feature) -> resize to the grid -> decoder. No SD modules, no random conv in forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.camera = _camera_branch(cfg)
        self.expand = FeatureExpansion(cfg.camera_channels, 96 * cfg.bev_channels // 192, cfg.bev_channels)
        self.conv_bev = ConvBev(cfg.bev_channels)
        self.decoder = BevDecoder(cfg.bev_channels, cfg.decoder, self.head_channels)

    def forward(self, images, intrinsics=None, cam_to_ego=None, lidar=None, lidar_mask=None,
                sd_prior=None) -> MapOutput:
        self._check_cameras(images)
        topdown = self.camera(images, intrinsics, cam_to_ego)
        bev = self.conv_bev(self.expand(topdown))
        # MapKD resizes the 1/8 feature back to the grid with align_corners=False (its other upsamplings use True)
        up = F.interpolate(bev, size=tuple(self.cfg.grid.shape), mode='bilinear', align_corners=False)
        out = self.decoder(up)
        return MapOutput(out['semantic'], out['embedding'], out['direction'], bev, {'camera_bev': topdown})


class EdgeStudent(MapModel):
    """Our edge student: EfficientNet (Lite0 in its configs; stride-8 output) -> ground sampler + BEV coords -> light
    BEV neck with full-resolution heads (see models/edge.py)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoder = CamEncoder(cfg.encoder, (cfg.image.height, cfg.image.width))
        self.sampler = GroundSampler(cfg.grid, (cfg.image.height, cfg.image.width))
        neck_cfg = cfg.edge
        if neck_cfg.neck_channels[2] != cfg.bev_channels:
            raise ConfigError(f'student_edge: edge.neck_channels[2] ({neck_cfg.neck_channels[2]}) must equal '
                              f'bev_channels ({cfg.bev_channels}), the TGPD feature width')
        h, w = self.sampler.half_hw
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
        self.register_buffer('bev_coords', torch.stack([xs, ys])[None], persistent=False)
        self.neck = EdgeNeck(cfg.encoder.out_channels + 2, neck_cfg, self.head_channels)

    def prefix_encoders(self) -> dict[str, CamEncoder]:
        return {'encoder': self.encoder}

    def forward(self, images, intrinsics=None, cam_to_ego=None, lidar=None, lidar_mask=None,
                sd_prior=None, encoder_prefix=None) -> MapOutput:
        """``encoder_prefix``: ``{'encoder': (blocks, x)}`` with ``x`` (B, N, C, h, w) the encoder's ``prefix(images,
        blocks)`` per camera, computed (and cached) by the trainer when that part is frozen."""
        self._check_cameras(images)
        b = images.shape[0]
        feats = self.encoder.cameras(images, (encoder_prefix or {}).get('encoder'))
        bev = self.sampler(feats, intrinsics, cam_to_ego)
        bev = torch.cat([bev, self.bev_coords.expand(b, -1, -1, -1)], dim=1)
        heads, bev_small = self.neck(bev, self.cfg.grid.shape)
        return MapOutput(heads['semantic'], heads['embedding'], heads['direction'], bev_small, {'camera_bev': bev})


class HdPriorModel(MapModel):
    """The HD-map prior alone, for its masked-autoencoder pre-training on ground-truth rasters (method doc 5.1): the
    refinement head and its decoder, with the same module names as in the teacher (``hd``, ``hd_decoder``) so that
    its weights initialise the teacher's HD head key for key. Input: a (B, 4, H, W) (masked) one-hot map."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        from .hd_prior import HdPriorRefiner
        self.hd = HdPriorRefiner(cfg.grid, cfg.hd, in_channels=len(CLASS_NAMES))
        self.hd_decoder = BevDecoder(cfg.hd.dim, cfg.decoder, self.head_channels)

    @property
    def inputs(self) -> tuple[str, ...]:
        return ('semantic_map',)

    def forward(self, semantic_map: torch.Tensor) -> MapOutput:
        feats = self.hd(semantic_map)
        out = self.hd_decoder(feats)
        return MapOutput(out['semantic'], out['embedding'], out['direction'], feats, {})


MODELS: dict[str, type[MapModel]] = {'teacher': Teacher, 'coach': Coach, 'student': Student,
                                     'student_edge': EdgeStudent, 'hd_prior': HdPriorModel}

from .hdmapnet import HdmapnetCam  # noqa: E402  (the paper's baseline; defined in its own module, needs the above)

MODELS['hdmapnet_cam'] = HdmapnetCam


def build_model(config: ModelConfig | str, overrides: Optional[dict] = None) -> MapModel:
    """Build a model from a ModelConfig, a YAML path, or a shipped config name (``student_tiny`` ...)."""
    from .config import load_model_config
    if not isinstance(config, ModelConfig):
        from pathlib import Path
        path = Path(str(config))
        if not path.suffix:
            from ..paths import config_dir
            path = config_dir() / 'models' / f'{config}.yaml'
            if not path.is_file():
                names = sorted(p.stem for p in (config_dir() / 'models').glob('*.yaml'))
                raise ConfigError(f'unknown model config {config!r}; shipped: {names}')
        config = load_model_config(path, overrides)
    return MODELS[config.name](config)
