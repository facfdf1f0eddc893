"""The authors' checkpoints (MapKD / P-MapNet / HDMapNet) import into our models and compute what the authors' code
computes, number for number, on the reference fixtures (test/fixtures/reference, see its README.md).

For each model the authors' state dict is built from ``<model>.keys.json`` with the README's weight formula,
imported with ``import_reference``, run in eval mode on ``inputs.safetensors`` (their input conventions converted to
ours) and compared with ``<model>.outputs.safetensors``: max |ours - theirs| <= 1e-4 x max |theirs| for the semantic
logits, the pooled embedding and direction maps and the intermediate BEV features.
"""
import json
import re

import numpy as np
import pytest
import torch

from _reference import (AUTHOR_MODELS, FIXTURES, TOL, author_state, keys_of, ours_vs_theirs, reference_inputs,
                        rel_diff)
from mapkd_core.errors import MapkdError, WeightsMismatchError
from mapkd_core.models import import_reference, load_model
from mapkd_core.models.import_ref import detect_author_model, inputs_from_reference, main, read_reference_checkpoint
from test_ros_node import rig_factory  # noqa: F401  (the node test's fixture: a node and a tester)

pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')

#: the modules each of the authors' models builds but never runs: exactly these keys are dropped
HEAD = r'(pp\.)?camencode\.trunk\._(conv_head|bn1|fc)\.'
DEAD = {
    'HDMapNet_cam': [HEAD],
    'PMapNet_sdmap_S': [HEAD, r'input_proj\.', r'conv_osm\.', r'conv_up\.'],
    'PMapNet_sdmap_C': [HEAD, r'pp\.bevencode\.', r'pp\.reduce_to_3\.', r'pp\.(dx|bx|nx|frustum)$'],
    'PMapNet_mae_head': [HEAD, r'bevencode\.up[12]_(embedded|direction)\.', r'mae_head\.cls_token$',
                         r'mae_head\.patch_embed\.', r'mae_head\.head\.'],
}


def run(model, author):
    x = inputs_from_reference(reference_inputs())
    with torch.no_grad():
        return model(**{k: x[k] for k in model.inputs})


@pytest.fixture(scope='module')
def student_file(tmp_path_factory):
    """The paper student imported from the authors' PMapNet_sdmap_S state dict, as our model file."""
    out = tmp_path_factory.mktemp('imported') / 'student.safetensors'
    import_reference(author_state('PMapNet_sdmap_S'), out, author='PMapNet_sdmap_S')
    return out


# ---------------------------------------------------------------------------------------------------------------
# equivalence


@pytest.mark.parametrize('author', [
    'HDMapNet_cam', 'PMapNet_sdmap_S',
    pytest.param('PMapNet_sdmap_C', marks=pytest.mark.slow), pytest.param('PMapNet_mae_head', marks=pytest.mark.slow)])
def test_imported_model_computes_what_the_authors_code_computes(author):
    state = author_state(author)
    assert detect_author_model(state) == author
    model, report = import_reference(state, author=author)
    assert not model.training
    # exactly the keys of the modules they build but never run are dropped, nothing else
    dead = [k for k in state if any(re.match(p, k) for p in DEAD[author])]
    assert sorted(report.dropped) == sorted(dead) and dead
    assert len(report.mapped) + len(report.dropped) == len(state)
    out = run(model, author)
    diffs = {name: rel_diff(ours, theirs) for name, (ours, theirs) in ours_vs_theirs(author, out).items()}
    assert all(d <= TOL for d in diffs.values()), (author, diffs)
    assert len(diffs) >= 3


def test_the_fixture_comparison_can_fail():
    """The same check fails for a wrong input convention (the cameras in reverse order) and for a model that differs
    in one BatchNorm of the decoder: it sees a wrong architecture or a wrong input convention."""
    author = 'HDMapNet_cam'
    model, _ = import_reference(author_state(author), author=author)
    x = inputs_from_reference(reference_inputs())
    with torch.no_grad():
        out = model(images=x['images'], cam_to_ego=x['cam_to_ego'].flip(1))  # a wrong camera order
        assert rel_diff(*ours_vs_theirs(author, out)['semantic']) > 100 * TOL
        model.decoder.layer3[1].bn2.running_mean += 0.05
        out = model(images=x['images'], cam_to_ego=x['cam_to_ego'])
    assert rel_diff(*ours_vs_theirs(author, out)['semantic']) > 100 * TOL


def test_fixture_inputs_convert_to_our_conventions():
    ref = reference_inputs()
    rig = json.loads((FIXTURES / 'rig.json').read_text())
    x = inputs_from_reference(ref)
    assert rig['cameras'] == ['CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_LEFT', 'CAM_BACK',
                              'CAM_BACK_RIGHT']
    assert torch.allclose(x['cam_to_ego'][0], torch.tensor(rig['cam_to_ego'], dtype=torch.float32), atol=1e-6)
    # intrinsics at the network size: post_rots = diag(352 / 1600, 128 / 900, 1) applied to K
    k = torch.tensor(rig['intrinsics'], dtype=torch.float32)
    assert torch.allclose(x['intrinsics'][0, :, 0], k[:, 0] * 352 / 1600, rtol=1e-6)
    assert torch.allclose(x['intrinsics'][0, :, 1], k[:, 1] * 128 / 900, rtol=1e-6)
    assert x['lidar_mask'].dtype == torch.bool and int(x['lidar_mask'].sum()) == 30000
    assert set(x['sd_prior'].unique().tolist()) <= {-1.0, 1.0}


def test_fixture_points_avoid_the_pillar_quirks_we_do_not_copy():
    """Deliberate differences in the teacher's PointPillars (README): HDMapNet's voxeliser truncates towards zero,
    so points up to one cell below the lower x / y / z edge land in the first cell, and every padded or out-of-grid
    point is counted in cell (0, 0)'s centroid and mean; ours keeps exactly the points inside the grid and averages
    valid points only. The two agree wherever no valid point lies in cell (0, 0) or one cell below an edge, which is
    the case for the fixture's points: the teacher's equality above says nothing about that corner, and this test
    says so. Ours drops such points (and padded points change nothing)."""
    from mapkd_core.models import build_model
    pts = reference_inputs()['lidar_data'][0]
    mask = reference_inputs()['lidar_mask'][0] > 0.5
    v = pts[mask]
    fx, fy, fz = (v[:, 0] + 30) / 0.15, (v[:, 1] + 15) / 0.15, (v[:, 2] + 10) / 20
    below = ((fx > -1) & (fx < 0)) | ((fy > -1) & (fy < 0)) | ((fz > -1) & (fz < 0))
    assert int(below.sum()) == 0 and int(((fx < 1) & (fy < 1) & (fx >= 0) & (fy >= 0)).sum()) == 0
    enc = build_model('teacher_tiny').pillars.eval()
    base = torch.tensor([[[5.0, 2.0, 0.5, 10.0, 0.0], [-29.5, -14.5, 0.1, 5.0, 0.0]]])
    extra = torch.tensor([[[-30.1, 0.0, 0.0, 1.0, 0.0], [0.0, -15.1, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    with torch.no_grad():
        a = enc.scatter(base, torch.ones(1, 2, dtype=torch.bool))
        b = enc.scatter(torch.cat([base, extra], 1), torch.tensor([[True, True, True, True, False]]))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# reading checkpoints


def _small_state():
    g = torch.Generator().manual_seed(0)
    return {'camencode.trunk._conv_stem.weight': torch.randn(32, 3, 3, 3, generator=g),
            'bevencode.bn1.running_mean': torch.randn(64, generator=g),
            'bevencode.bn1.num_batches_tracked': torch.tensor(7)}


@pytest.mark.parametrize('wrap', ['bare', 'model', 'state_dict', 'module', 'model+module'])
def test_wrapped_and_dataparallel_checkpoints_read_the_same(wrap, tmp_path):
    state = _small_state()
    obj = {'module.' + k: v for k, v in state.items()} if 'module' in wrap else dict(state)
    if wrap.startswith(('model', 'state_dict')):
        obj = {wrap.split('+')[0]: obj, 'epoch': 9, 'optimizer': {'lr': 5e-4}}
    path = tmp_path / 'ckpt.pt'
    torch.save(obj, path)
    got = read_reference_checkpoint(path)
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_wrapped_dataparallel_checkpoint_imports_with_the_console_script(tmp_path, capsys):
    """``mapkd-import`` on ``{'model': {'module.' + key: ...}}`` of the authors' HDMapNet_cam writes a model file
    that loads with our loader and holds the same weights as an import of the bare state dict."""
    state = author_state('HDMapNet_cam')
    ckpt = tmp_path / 'model9.pt'
    torch.save({'model': {'module.' + k: v for k, v in state.items()}, 'epoch': 9}, ckpt)
    del state
    assert main([str(ckpt)]) == 0
    printed = capsys.readouterr().out
    assert 'HDMapNet_cam -> hdmapnet_cam' in printed and 'dropped 8 keys' in printed
    out = tmp_path / 'model9_hdmapnet_cam.safetensors'
    loaded = load_model(out)
    assert loaded.cfg.name == 'hdmapnet_cam'
    ref, _ = import_reference(author_state('HDMapNet_cam'), author='HDMapNet_cam')
    own = loaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.state_dict().items())


class _Custom:
    def __init__(self):
        self.weights = torch.zeros(3)


@pytest.mark.parametrize('payload', ['module', 'object'])
def test_a_pickle_that_needs_code_is_refused(payload, tmp_path):
    path = tmp_path / 'code.pt'
    torch.save(torch.nn.Linear(2, 2) if payload == 'module' else {'model': _Custom()}, path)
    with pytest.raises(WeightsMismatchError, match='refusing to load.*weights_only=True'):
        read_reference_checkpoint(path)
    assert main([str(path)]) == 2


def test_a_foreign_checkpoint_is_named(tmp_path, capsys):
    # an ImageNet ResNet-style classifier checkpoint (what a wrong download looks like)
    foreign = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'bn1.weight': torch.ones(64), 'bn1.bias': torch.zeros(64),
               'layer4.0.conv1.weight': torch.zeros(512, 256, 3, 3), 'fc.weight': torch.zeros(1000, 512),
               'fc.bias': torch.zeros(1000)}
    path = tmp_path / 'resnet.pt'
    torch.save(foreign, path)
    with pytest.raises(WeightsMismatchError, match=r'conv1\.weight.*match none of them'):
        import_reference(path)
    assert main([str(path)]) == 2
    assert 'conv1.weight' in capsys.readouterr().err
    # forced onto a model of theirs, every key is named as unplaceable and ours as missing
    with pytest.raises(WeightsMismatchError) as err:
        import_reference(path, author='HDMapNet_cam')
    text = str(err.value)
    assert 'no rule places' in text and 'layer4.0.conv1.weight' in text and 'not in the checkpoint' in text


def test_a_wrong_checkpoint_names_the_keys():
    state = author_state('PMapNet_sdmap_S')
    state['feature_expand.conv3.weight'] = state.pop('feature_expand.conv2.weight')   # renamed
    del state['bevencode.up2.4.bias']                                                  # missing
    state['conv_bev.0.bias'] = torch.zeros(191)                                        # wrong shape
    with pytest.raises(WeightsMismatchError) as err:
        import_reference(state, author='PMapNet_sdmap_S')
    text = str(err.value)
    for name in ('feature_expand.conv3.weight', 'conv_bev.0.bias', 'expand.net.1.0.weight',
                 'decoder.heads.semantic.up2.1.bias'):
        assert name in text, (name, text)
    assert isinstance(err.value, MapkdError)


def test_an_hdmapnet_checkpoint_is_not_a_student():
    with pytest.raises(WeightsMismatchError, match=r'bevencode\.conv1\.weight .*decoder\.stem\.0\.weight.*conv_bev'):
        import_reference(author_state('HDMapNet_cam'), author='PMapNet_sdmap_S')


@pytest.mark.slow
def test_a_coach_built_for_another_grid_is_refused():
    state = author_state('PMapNet_sdmap_C')
    state['pp.dx'] = torch.tensor([0.3, 0.3, 20.0])
    with pytest.raises(WeightsMismatchError, match=r'pp\.dx'):
        import_reference(state, author='PMapNet_sdmap_C')


def test_every_key_of_every_fixture_model_has_one_rule():
    """The tables cover exactly the authors' keys: each key is placed or dropped by one rule (no overlap)."""
    from mapkd_core.models.import_ref import _table
    for author in AUTHOR_MODELS:
        rules = [re.compile(r.pattern) for r in _table(author)]
        for key in keys_of(author):
            assert sum(bool(rx.fullmatch(key)) for rx in rules) == 1, (author, key)


# ---------------------------------------------------------------------------------------------------------------
# the imported paper student runs everywhere our students run


def _keyframe_inputs(keyframe):
    import cv2
    images = [cv2.cvtColor(cv2.imread(str(c.path)), cv2.COLOR_BGR2RGB) for c in keyframe.cameras]
    return images, keyframe.intrinsics, keyframe.cam_to_ego


@pytest.mark.slow
def test_imported_student_runs_in_the_pipeline_on_the_real_keyframe(student_file, keyframe):
    from mapkd_core.runtime import Pipeline
    from mapkd_core.runtime.preprocess import prepare_inputs
    pipe = Pipeline(student_file, backend='torch')
    assert pipe.cfg.name == 'student'
    images, k, t = _keyframe_inputs(keyframe)
    pred = pipe(images, k, t, stamp=1.5)
    assert pred.stamp == 1.5 and pred.frame_id == 'base_link'
    semantic, _, _ = pipe.raw(images, k, t)
    x = {n: torch.as_tensor(v) for n, v in prepare_inputs(images, k, t, pipe.cfg.image).items()}
    with torch.no_grad():
        ref = load_model(student_file).eval()(**x).semantic.numpy()
    assert semantic.shape == (1, 4, 200, 400) and np.abs(semantic - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.slow
def test_imported_student_exports_to_onnx_and_matches_torch(student_file, keyframe, tmp_path):
    from mapkd_core.runtime import Pipeline
    from mapkd_core.runtime.export import export_onnx, onnx_metadata
    onnx_path = export_onnx(load_model(student_file).eval(), tmp_path / 'student.onnx', student_file)
    assert onnx_metadata(onnx_path)['mapkd_model'] == 'student'
    images, k, t = _keyframe_inputs(keyframe)
    ref = Pipeline(student_file, backend='torch').raw(images, k, t)
    got = Pipeline(student_file, backend='onnxruntime', onnx=onnx_path).raw(images, k, t)
    for a, b in zip(got, ref):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.slow
def test_imported_student_runs_in_the_ros_node(student_file, keyframe, rig_factory):
    """The real keyframe's six JPEGs published to student_node with the imported paper student give one
    MarkerArray in base_link (the node's own test harness, test_ros_node.Rig)."""
    from test_ros_node import wait_for
    from mapkd_core.constants import CAMERAS
    from mapkd_core.runtime import Pipeline
    from mapkd_ros.conversions import stamp_to_ns
    jpegs = {c.channel: (c.path.read_bytes(), c.intrinsic, (c.height, c.width), c.timestamp * 1000)
             for c in keyframe.cameras}
    rig = rig_factory(Pipeline(student_file, backend='torch'))
    rig.publish_infos(jpegs)
    wait_for(lambda: len(rig.node.infos) == 6, 30, 'CameraInfo')
    stamps = {c: jpegs[c][3] for c in CAMERAS}
    rig.publish_set(jpegs, stamps)
    wait_for(lambda: rig.markers and rig.processing, 180, 'the MarkerArray')
    assert len(rig.markers) == 1 and rig.node.stats['processed'] == 1
    first = rig.markers[0].markers[0]
    assert first.action == first.DELETEALL and first.header.frame_id == 'base_link'
    assert stamp_to_ns(first.header.stamp) == max(stamps.values())




# ---------------------------------------------------------------------------------------------------------------
# hdmapnet_cam: the paper's baseline row is a model of ours


def test_hdmapnet_cam_trains_with_the_student_stage(keyframe):
    """The tiny baseline config builds through the student stage (task losses only) and every parameter learns."""
    from mapkd_core.paths import config_path
    from mapkd_core.train import load_train_config
    from mapkd_core.train.stages import Stage
    stage = Stage(load_train_config(config_path('train/hdmapnet_cam_tiny.yaml')))
    model = stage.model
    assert model.cfg.name == 'hdmapnet_cam' and stage.teacher is None and stage.coach is None
    cfg = model.cfg
    h, w = cfg.grid.shape
    k = torch.tensor([[cfg.image.width * 0.8, 0, cfg.image.width / 2], [0, cfg.image.width * 0.8, cfg.image.height / 2],
                      [0, 0, 1.0]]).expand(1, 6, 3, 3)
    out = model(images=torch.randn(1, 6, 3, cfg.image.height, cfg.image.width), intrinsics=k,
                cam_to_ego=torch.tensor(keyframe.cam_to_ego, dtype=torch.float32)[None])
    assert out.semantic.shape == (1, 4, h, w) and out.direction.shape == (1, 37, h, w)
    assert out.bev.shape == (1, cfg.camera_channels, h, w)
    (out.semantic.sum() + out.embedding.sum() + out.direction.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
