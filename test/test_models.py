"""The model family: shapes at both sizes and a non-default grid, gradients everywhere, geometry of the IPM, Lift-Splat
and ground-sampler paths, determinism, strict save/load, encoder weights from a local file, the edge budget."""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mapkd_core.config import GridConfig, ImageConfig
from mapkd_core.constants import CAMERAS
from mapkd_core.errors import ConfigError, WeightsMismatchError
from mapkd_core.geometry import metres_to_index, scale_intrinsics
from mapkd_core.models import MapOutput, build_model, load_model, load_model_config, save_weights
from mapkd_core.models.config import EncoderConfig, LssConfig, ModelConfig
from mapkd_core.models.edge import GroundSampler
from mapkd_core.models.io import load_weights
from mapkd_core.models.lss import LiftSplat
from mapkd_core.models.view import IPM
from mapkd_core.paths import config_path

NAMES = ('teacher', 'coach', 'student', 'student_edge')
pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')


def real_rig(keyframe, image: ImageConfig):
    """The real keyframe's intrinsics (at the network image size) and extrinsics, (6, 3, 3) and (6, 4, 4)."""
    ks = np.stack([scale_intrinsics(c.intrinsic, image.width / c.width, image.height / c.height)
                   for c in keyframe.cameras])
    return torch.tensor(ks, dtype=torch.float32), torch.tensor(keyframe.cam_to_ego, dtype=torch.float32)


def inputs(cfg: ModelConfig, keyframe, batch: int = 2, points: int = 3000, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k, t = real_rig(keyframe, cfg.image)
    h, w = cfg.grid.shape
    lidar = torch.rand(batch, points, 5, generator=g) * torch.tensor([60.0, 30.0, 3.0, 100.0, 0.1]) \
        - torch.tensor([30.0, 15.0, 1.0, 0.0, 0.0])
    return {'images': torch.randn(batch, len(cfg.image.cameras), 3, cfg.image.height, cfg.image.width, generator=g),
            'intrinsics': k.expand(batch, -1, -1, -1).clone(), 'cam_to_ego': t.expand(batch, -1, -1, -1).clone(),
            'lidar': lidar, 'lidar_mask': torch.rand(batch, points, generator=g) > 0.1,
            'sd_prior': torch.where(torch.rand(batch, 1, h, w, generator=g) > 0.9, 1.0, -1.0)}


def tiny(name: str, **overrides) -> ModelConfig:
    return load_model_config(config_path(f'models/{name}_tiny.yaml'), overrides or None)


# ---------------------------------------------------------------------------------------------------------------
# shapes


def check_output(out: MapOutput, cfg: ModelConfig, batch: int):
    h, w = cfg.grid.shape
    assert isinstance(out, MapOutput)
    assert out.semantic.shape == (batch, 4, h, w)
    assert out.embedding.shape == (batch, cfg.embedding_dim, h, w)
    assert out.direction.shape == (batch, cfg.angle_classes + 1, h, w)
    assert out.bev.shape[:2] == (batch, cfg.bev_channels)
    assert abs(out.bev.shape[2] - h / 8) <= 1 and abs(out.bev.shape[3] - w / 8) <= 1


@pytest.mark.parametrize('name', NAMES)
def test_tiny_shapes_and_every_parameter_learns(name, keyframe):
    torch.manual_seed(0)
    cfg = tiny(name)
    model = build_model(cfg).train()
    out = model.forward_batch(inputs(cfg, keyframe))
    check_output(out, cfg, 2)
    # 50 x 100 cells: three k4 s2 convs give 6 x 12; the edge neck's stride-2 convs (from 25 x 50) give 7 x 13
    assert tuple(out.bev.shape[2:]) == ((7, 13) if name == 'student_edge' else (6, 12))
    (out.semantic.mean() + out.embedding.mean() + out.direction.mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f'parameters without gradient: {dead}'


@pytest.mark.parametrize('name', NAMES)
def test_non_default_grid_not_centred_on_the_ego(name, keyframe):
    """A 60 x 30 m grid reaching 40 m ahead and 20 m behind, at 0.5 m (60 x 120 cells, H/8 = 7.5)."""
    cfg = tiny(name, grid={'xbound': [-20.0, 40.0, 0.5], 'ybound': [-15.0, 15.0, 0.5]})
    assert cfg.grid.shape == (60, 120)
    model = build_model(cfg).train()
    out = model.forward_batch(inputs(cfg, keyframe, batch=1))
    check_output(out, cfg, 1)
    out.semantic.sum().backward()


@pytest.mark.parametrize('name', ('student', 'student_edge', 'coach'))
def test_paper_size_shapes(name):
    """Paper size (128 x 352 images, 200 x 400 grid) on the meta device: shapes without the compute."""
    with torch.device('meta'):
        model = build_model(name).eval()
        cfg = model.cfg
        assert cfg.grid.shape == (200, 400) and (cfg.image.height, cfg.image.width) == (128, 352)
        batch = {'images': torch.empty(1, 6, 3, 128, 352), 'intrinsics': torch.empty(1, 6, 3, 3),
                 'cam_to_ego': torch.empty(1, 6, 4, 4), 'sd_prior': torch.empty(1, 1, 200, 400)}
        out = model.forward_batch(batch)
    check_output(out, cfg, 1)
    assert out.bev.shape == (1, 192, 25, 50)


@pytest.mark.slow
def test_paper_size_teacher_runs(keyframe):
    """The teacher's pillar scatter is data dependent (no meta kernels): run it for real, batch 1 (~15 s)."""
    torch.manual_seed(0)
    model = build_model('teacher').eval()
    with torch.no_grad():
        out = model.forward_batch(inputs(model.cfg, keyframe, batch=1, points=20000))
    check_output(out, model.cfg, 1)
    assert out.bev.shape == (1, 192, 25, 50) and out.features['bev_out'].shape == (1, 64, 25, 50)
    assert torch.isfinite(out.semantic).all()


def test_paper_parameter_counts_match_the_reference():
    """Parameters that receive gradients, as counted in the method doc (section 1.5) for MapKD_new."""
    with torch.device('meta'):
        counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in NAMES}
    assert counts['student'] == pytest.approx(78.98e6, rel=0.001)
    assert counts['coach'] == pytest.approx(88.38e6, rel=0.001)
    assert counts['teacher'] == pytest.approx(196.89e6, rel=0.001)
    assert counts['student_edge'] < counts['student'] / 10


def test_edge_student_needs_at_most_a_fifth_of_the_paper_student_macs():
    """MACs at 128 x 352 with six cameras, counted by torch's FlopCounterMode (FLOPs / 2) on the meta device."""
    macs = {}
    for name in ('student', 'student_edge'):
        with torch.device('meta'):
            model = build_model(name).eval()
            batch = {'images': torch.empty(1, 6, 3, 128, 352), 'intrinsics': torch.empty(1, 6, 3, 3),
                     'cam_to_ego': torch.empty(1, 6, 4, 4)}
            counter = FlopCounterMode(display=False)
            with counter:
                model.forward_batch(batch)
        macs[name] = counter.get_total_flops() / 2
    assert macs['student'] > 100e9  # HDMapNet's full-resolution decoder heads dominate (~211 GMACs)
    assert macs['student_edge'] <= macs['student'] / 5, macs


# ---------------------------------------------------------------------------------------------------------------
# geometry


def test_ipm_places_a_plane_cell_at_its_ground_point(keyframe):
    """A feature at (row r, col c) of CAM_FRONT's top-down plane must land where HDMapNet's IPM formula puts it:
    c = R^T (p - t) with p in IPM units (0.5 m), column = c_z - bv_w / 8, row = c_x + bv_h / 2, z = 0."""
    grid = GridConfig()
    bv_h, bv_w = 40, 80
    ipm = IPM(grid, (bv_h, bv_w))
    cam = keyframe.cameras[CAMERAS.index('CAM_FRONT')]
    t_ego = torch.tensor(cam.cam_to_ego, dtype=torch.float32)[None, None]
    for r, c in ((20, 30), (14, 40), (27, 12)):
        plane = torch.zeros(1, 1, 1, bv_h, bv_w)
        plane[0, 0, 0, r, c] = 1.0
        bev = ipm(plane, t_ego)[0, 0]
        # solve R c_vec + t = p with c_vec = (r - bv_h/2, c_y, c + bv_w/8) and p_z = 0 for c_y
        rot, t = cam.cam_to_ego[:3, :3], cam.cam_to_ego[:3, 3]
        cx, cz = r - bv_h / 2, c + bv_w / 8
        cy = -(rot[2, 0] * cx + rot[2, 2] * cz + t[2]) / rot[2, 1]
        p_units = rot @ np.array([cx, cy, cz]) + t
        x, y = p_units[:2] / ipm.units_per_metre
        row, col = metres_to_index(grid, x, y)
        peak = np.unravel_index(int(bev.argmax()), bev.shape)
        assert abs(peak[0] - row) <= 2 and abs(peak[1] - col) <= 2, (r, c, peak, (row, col))
        assert bev.max() > 0.2


def _lss(keyframe):
    image = ImageConfig(height=64, width=176)
    cfg = LssConfig(dbound=(4.0, 44.0, 2.0), context_channels=4,
                    encoder=EncoderConfig(out_channels=8, width_coefficient=0.5, depth_coefficient=0.5))
    return LiftSplat(GridConfig(), image, cfg, out_channels=8), image


def test_lift_splat_places_a_pixel_at_its_depth(keyframe):
    """One feature pixel with all depth mass in one bin must splat into the cell of K^-1 (u d, v d, d) in the ego
    frame (CAM_FRONT_LEFT, real calibration at the network size)."""
    lss, image = _lss(keyframe)
    k, t = real_rig(keyframe, image)
    fh, fw = lss.encoder.feature_hw
    cam = CAMERAS.index('CAM_FRONT_LEFT')
    for (i, j, b) in ((2, 5, 3), (3, 10, 2), (1, 9, 0)):
        depth = torch.zeros(1, 6, lss.depth_bins, fh, fw)
        depth[0, cam, b, i, j] = 1.0
        context = torch.zeros(1, 6, 4, fh, fw)
        context[0, cam, :, i, j] = torch.tensor([1.0, 2.0, 3.0, 4.0])
        bev = lss.splat(depth, context, lss.geometry(k[None], t[None]))[0]
        u = j * (image.width - 1) / (fw - 1)  # LSS / MapKD: feature pixels spread linearly over 0 .. w-1
        v = i * (image.height - 1) / (fh - 1)
        d = 4.0 + 2.0 * b
        p_cam = np.linalg.inv(k[cam].numpy()) @ np.array([u * d, v * d, d])
        p = keyframe.cam_to_ego[cam][:3, :3] @ p_cam + keyframe.cam_to_ego[cam][:3, 3]
        row, col = metres_to_index(GridConfig(), p[0], p[1])
        nz = torch.nonzero(bev[0])
        assert nz.tolist() == [[int(row), int(col)]], (i, j, b, nz.tolist(), (row, col))
        assert torch.allclose(bev[:, row, col], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_ground_sampler_reads_the_pixel_that_sees_the_ground_point(keyframe):
    """Edge student: a BEV cell takes the feature of the image pixel its ground point projects to."""
    grid = GridConfig()
    image = ImageConfig()
    sampler = GroundSampler(grid, (image.height, image.width))
    k, t = real_rig(keyframe, image)
    cam = CAMERAS.index('CAM_FRONT')
    fh, fw = 8, 22
    feats = torch.zeros(1, 6, 1, fh, fw)
    i, j = 6, 11  # below the horizon, near the middle
    feats[0, cam, 0, i, j] = 1.0
    bev = sampler(feats, k[None], t[None])[0, 0]
    # the ray through that feature pixel's centre hits the ground here:
    u, v = (j + 0.5) * image.width / fw - 0.5, (i + 0.5) * image.height / fh - 0.5
    ray = keyframe.cam_to_ego[cam][:3, :3] @ np.linalg.inv(k[cam].numpy()) @ np.array([u, v, 1.0])
    origin = keyframe.cam_to_ego[cam][:3, 3]
    p = origin + ray * (-origin[2] / ray[2])
    half = GridConfig(xbound=(-30.0, 30.0, 0.3), ybound=(-15.0, 15.0, 0.3))
    row, col = metres_to_index(half, p[0], p[1])
    peak = np.unravel_index(int(bev.argmax()), bev.shape)
    assert abs(peak[0] - row) <= 1 and abs(peak[1] - col) <= 1, (peak, (row, col), p)
    assert bev.max() > 0.5
    # cells behind the camera or outside every image get nothing
    assert bev[:, :40].abs().max() == 0


def test_ground_sampler_for_export_equals_the_grid_sample_form(keyframe):
    """``forward_gathered`` (one gather and one matrix product, what the ONNX export runs) equals ``forward``: cells
    seen by several cameras, by none, and feature pixels at the image borders (zero padding)."""
    image = ImageConfig()
    sampler = GroundSampler(GridConfig(), (image.height, image.width))
    k, t = real_rig(keyframe, image)
    torch.manual_seed(3)
    feats = torch.randn(2, 6, 5, 16, 44)
    k2, t2 = torch.stack([k, k]), torch.stack([t, t])
    t2[1, :, :3, 3] += torch.tensor([0.3, -0.2, 0.1])  # a second rig in the batch
    ref = sampler(feats, k2, t2)
    got = sampler.forward_gathered(feats, k2, t2)
    assert got.shape == ref.shape and (ref != 0).float().mean() > 0.3 and (ref == 0).any()
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (got - ref).abs().max()


# ---------------------------------------------------------------------------------------------------------------
# determinism, save and load


def test_determinism_under_a_seed(keyframe):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(tiny('student_edge')).eval()
        with torch.no_grad():
            outs.append(model.forward_batch(inputs(model.cfg, keyframe, batch=1)).semantic)
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    other = build_model(tiny('student_edge')).eval()
    with torch.no_grad():
        assert not torch.equal(other.forward_batch(inputs(other.cfg, keyframe, batch=1)).semantic, outs[0])


def test_no_module_is_created_in_forward(keyframe):
    model = build_model(tiny('coach')).train()
    before = [id(m) for m in model.modules()], [id(p) for p in model.parameters()]
    model.forward_batch(inputs(model.cfg, keyframe, batch=1))
    model.forward_batch(inputs(model.cfg, keyframe, batch=1))
    assert before == ([id(m) for m in model.modules()], [id(p) for p in model.parameters()])


@pytest.mark.parametrize('name', ('student', 'student_edge', 'teacher'))
def test_save_and_load_is_exact_and_strict(name, tmp_path, keyframe):
    torch.manual_seed(5)
    model = build_model(tiny(name)).eval()
    path = save_weights(model, tmp_path / f'{name}.safetensors')
    loaded = load_model(path).eval()
    assert loaded.cfg == model.cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = inputs(model.cfg, keyframe, batch=1)
    with torch.no_grad():
        assert torch.equal(model.forward_batch(x).semantic, loaded.forward_batch(x).semantic)


def test_mismatched_weights_name_the_keys(tmp_path):
    from safetensors.torch import save_file
    model = build_model(tiny('student'))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    extra = dict(state, **{'decoder.extra_head.weight': torch.zeros(3)})
    save_file(extra, str(tmp_path / 'extra.safetensors'))
    with pytest.raises(WeightsMismatchError, match=r'1 unexpected key\(s\): decoder\.extra_head\.weight'):
        load_weights(model, tmp_path / 'extra.safetensors')
    missing = {k: v for k, v in state.items() if not k.startswith('conv_bev.')}
    save_file(missing, str(tmp_path / 'missing.safetensors'))
    with pytest.raises(WeightsMismatchError, match=r'missing key\(s\): conv_bev\.net\.0\.weight'):
        load_weights(model, tmp_path / 'missing.safetensors')
    reshaped = dict(state, **{'conv_bev.net.0.bias': torch.zeros(7)})
    save_file(reshaped, str(tmp_path / 'shape.safetensors'))
    with pytest.raises(WeightsMismatchError, match=r'wrong shape key\(s\): conv_bev\.net\.0\.bias \(7,\)'):
        load_weights(model, tmp_path / 'shape.safetensors')
    # another model's package, and a corrupt file
    edge = save_weights(build_model(tiny('student_edge')), tmp_path / 'edge.safetensors')
    with pytest.raises(WeightsMismatchError, match='holds a student_edge model, not a student'):
        load_weights(model, edge)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(edge.read_bytes()[:1000])
    with pytest.raises(WeightsMismatchError, match='corrupt or not a safetensors file'):
        load_model(corrupt)


def test_encoder_loads_a_local_efficientnet_pytorch_file(tmp_path):
    from efficientnet_pytorch import EfficientNet
    torch.manual_seed(9)
    reference = EfficientNet.from_name('efficientnet-b0', image_size=(64, 176))
    torch.save(reference.state_dict(), tmp_path / 'efficientnet-b0.pth')
    # the edge student's default encoder is Lite0 (test_encoder_lite.py); the paper's B0 is one key away
    b0 = {'name': 'efficientnet-b0'}
    cfg = load_model_config(config_path('models/student_edge.yaml'),
                            {'encoder': {**b0, 'weights': str(tmp_path / 'efficientnet-b0.pth')},
                             'image': {'height': 64, 'width': 176}})
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a weights file given: no "random initialisation" warning
        model = build_model(cfg)
    assert torch.equal(model.encoder.trunk._conv_stem.weight, reference._conv_stem.weight)
    assert torch.equal(model.encoder.trunk._blocks[5]._project_conv.weight, reference._blocks[5]._project_conv.weight)
    assert not hasattr(model.encoder.trunk, '_fc')  # the classification head is dropped after loading
    # no file: a warning, not a crash
    with pytest.warns(UserWarning, match='no ImageNet weights'):
        build_model(load_model_config(config_path('models/student_edge_tiny.yaml')))
    # a missing file, and a file for another network width, are errors naming the problem
    bad = load_model_config(config_path('models/student_edge.yaml'), {'encoder': {**b0, 'weights': 'nowhere/b0.pth'}})
    with pytest.raises(FileNotFoundError, match='nowhere/b0.pth'):
        build_model(bad)
    narrow = EfficientNet.from_name('efficientnet-b0', width_coefficient=0.5)
    torch.save(narrow.state_dict(), tmp_path / 'narrow.pth')
    wrong = load_model_config(config_path('models/student_edge.yaml'), {'encoder': {**b0, 'weights': str(tmp_path /
                                                                                                         'narrow.pth')}})
    with pytest.raises(WeightsMismatchError, match=r'wrong shape key\(s\): _conv_stem.weight'):
        build_model(wrong)


def test_bad_inputs_and_configs_are_named(keyframe):
    model = build_model(tiny('teacher'))
    batch = inputs(model.cfg, keyframe, batch=1)
    del batch['lidar']
    with pytest.raises(ConfigError, match=r"teacher needs \['lidar'\] in the batch"):
        model.forward_batch(batch)
    student = build_model(tiny('student'))
    bad = inputs(student.cfg, keyframe, batch=1)
    bad['images'] = bad['images'][:, :5]
    with pytest.raises(ValueError, match=r'images must be \(B, 6, 3, 64, 176\)'):
        student.forward_batch(bad)
    with pytest.raises(ConfigError, match="unknown model config 'studnet'"):
        build_model('studnet')
    with pytest.raises(ConfigError, match='view.bv_downsample=5'):
        tiny('student', grid={'xbound': [-30.0, 30.0, 0.4], 'ybound': [-15.0, 15.0, 0.4]})  # 75 x 150 cells


@pytest.mark.parametrize('name', ('teacher', 'coach', 'student'))
def test_ground_view_camera_branch(name, keyframe):
    """``view.kind: ground`` (the CPU teacher and coach): the edge student's ground sampler replaces the MLP view
    transformer; same outputs, every parameter learns, far fewer parameters, and bad settings are named."""
    torch.manual_seed(0)
    cfg = tiny(name, view={'kind': 'ground'}, encoder={'out_stride': 8})
    model = build_model(cfg).train()
    assert type(model.camera).__name__ == '_GroundCamera' and not hasattr(model.camera, 'view')
    out = model.forward_batch(inputs(cfg, keyframe))
    check_output(out, cfg, 2)
    (out.semantic.mean() + out.embedding.mean() + out.direction.mean()).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f'parameters without gradient: {dead}'
    mlp = build_model(tiny(name))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in mlp.parameters())
    with pytest.raises(ConfigError, match='out_stride'):
        tiny(name, view={'kind': 'ground'})
    with pytest.raises(ConfigError, match='view.kind'):
        tiny(name, view={'kind': 'lss'})
