"""Runtime: ONNX export matches PyTorch, the Pipeline returns polylines in the right frame and place, and bad
packages give clear errors."""

import cv2
import numpy as np
import pytest
import torch
from shapely.geometry import LineString, Point

from mapkd_core.data.index import NuScenesIndex
from mapkd_core.data.synth import SynthConfig
from mapkd_core.data.synth.cache import synthetic_dataroot
from mapkd_core.errors import (CalibrationError, ImageFormatError, IncompleteSampleError, UsageError,
                               WeightsMismatchError)
from mapkd_core.models import build_model, save_weights
from mapkd_core.runtime import BackendUnavailableError, Pipeline
from mapkd_core.runtime.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, engine_key
from mapkd_core.runtime.export import export_onnx, onnx_metadata
from mapkd_core.runtime.preprocess import prepare_inputs

pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')


def frame_inputs(frame):
    """The frame's camera images as decoded RGB arrays (any size) with their intrinsics and extrinsics."""
    images = [cv2.cvtColor(cv2.imread(str(c.path)), cv2.COLOR_BGR2RGB) for c in frame.cameras]
    return images, frame.intrinsics, frame.cam_to_ego


@pytest.fixture(scope='module')
def synth_root():
    return synthetic_dataroot(SynthConfig(scenes=('scene-0061', 'scene-0103', 'scene-0916'), limit=3), progress=False)


@pytest.fixture(scope='module')
def packages(tmp_path_factory):
    d = tmp_path_factory.mktemp('pkg')
    torch.manual_seed(0)
    out = {}
    for name in ('student_tiny', 'student_edge_tiny', 'student_edge'):
        out[name] = save_weights(build_model(name), d / f'{name}.safetensors')
    return out


@pytest.mark.parametrize('name', ('student_tiny', 'student_edge_tiny', 'student_edge'))
def test_onnxruntime_matches_torch(name, packages, keyframe, synth_root, tmp_path):
    pipe = Pipeline(packages[name], backend='torch')
    onnx_path = export_onnx(pipe.model, tmp_path / f'{name}.onnx', packages[name])
    meta = onnx_metadata(onnx_path)
    assert meta['mapkd_model'] == pipe.cfg.name and 'divider' in meta['mapkd_class_names']
    ort_pipe = Pipeline(packages[name], backend='onnxruntime', onnx=onnx_path)
    synth_frame = NuScenesIndex(synth_root, 'v1.0-mini', 'mini_val')[1]
    for frame in (keyframe, synth_frame):  # the real keyframe (1600x900) and a synthetic sample (800x450)
        images, k, t = frame_inputs(frame)
        ref = pipe.raw(images, k, t)
        got = ort_pipe.raw(images, k, t)
        for a, b in zip(got, ref):
            assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), (name, np.abs(a - b).max(), np.abs(b).max())


def test_preprocessing_resizes_normalises_and_scales_intrinsics(keyframe):
    from mapkd_core.config import ImageConfig
    from mapkd_core.data.dataset import MapDataset
    images, k, t = frame_inputs(keyframe)
    cfg = ImageConfig(height=128, width=352)
    inputs = prepare_inputs(images, k, t, cfg)
    assert inputs['images'].shape == (1, 6, 3, 128, 352) and inputs['images'].dtype == np.float32
    assert inputs['intrinsics'][0, 1, 0, 0] == pytest.approx(k[1, 0, 0] * 352 / 1600, rel=1e-6)
    assert inputs['intrinsics'][0, 1, 0, 2] == pytest.approx((k[1, 0, 2] + 0.5) * 352 / 1600 - 0.5, rel=1e-6)
    # the same tensors as training's Dataset (which decodes JPEGs at reduced size): close, not bit-identical
    from mapkd_core.config import load_config
    from mapkd_core.paths import config_path
    ds = MapDataset(load_config(config_path('data/bundled.yaml')))
    item = ds[0]
    assert np.abs(item['images'].numpy() - inputs['images'][0]).mean() < 0.05
    assert np.allclose(item['intrinsics'].numpy(), inputs['intrinsics'][0], rtol=1e-5)


def test_bad_images_and_calibration_are_named(packages, keyframe):
    pipe = Pipeline(packages['student_edge_tiny'])
    images, k, t = frame_inputs(keyframe)
    with pytest.raises(IncompleteSampleError, match='expected 6 images'):
        pipe(images[:5], k, t)
    bad = list(images)
    bad[3] = images[3][..., 0]
    with pytest.raises(ImageFormatError, match=r'CAM_BACK_LEFT: expected an RGB uint8 image \(H, W, 3\)'):
        pipe(bad, k, t)
    kk = k.copy()
    kk[4, 0, 0] = -1
    with pytest.raises(CalibrationError, match='CAM_BACK: intrinsic matrix'):
        pipe(images, kk, t)
    with pytest.raises(CalibrationError, match=r'calibration must be \(6, 3, 3\) intrinsics'):
        pipe(images, k[:5], t)


def test_corrupt_and_mismatched_packages_give_clear_errors(packages, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(packages['student_tiny'].read_bytes()[:5000])
    with pytest.raises(WeightsMismatchError, match='corrupt or not a safetensors file'):
        Pipeline(corrupt)
    # a config that does not match the weights: student_tiny tensors under the edge student's embedded config
    with safe_open(str(packages['student_edge_tiny']), framework='pt') as fh:
        edge_meta = fh.metadata()
    with safe_open(str(packages['student_tiny']), framework='pt') as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(tmp_path / 'mixed.safetensors'), metadata=edge_meta)
    with pytest.raises(WeightsMismatchError, match=r'does not fit the student_edge model: .*missing key\(s\): encoder'):
        Pipeline(tmp_path / 'mixed.safetensors')
    # an ONNX file exported from another model
    other = export_onnx(Pipeline(packages['student_edge_tiny']).model, tmp_path / 'edge.onnx',
                        packages['student_edge_tiny'])
    with pytest.raises(WeightsMismatchError, match='exported from another model'):
        Pipeline(packages['student_tiny'], backend='onnxruntime', onnx=other)
    with pytest.raises(UsageError, match="unknown backend 'tflite'"):
        Pipeline(packages['student_tiny'], backend='tflite')


def test_tensorrt_without_a_gpu_says_why(packages, tmp_path):
    onnx_path = export_onnx(Pipeline(packages['student_edge_tiny']).model, tmp_path / 'e.onnx',
                            packages['student_edge_tiny'])
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU: the error path does not apply')
    with pytest.raises(BackendUnavailableError, match='(TensorRT Python package is not installed|no CUDA GPU)'):
        TensorRTBackend(onnx_path)
    with pytest.raises(BackendUnavailableError, match='no CUDA GPU is visible'):
        TorchBackend(build_model('student_edge_tiny'), device='cuda')
    with pytest.raises(BackendUnavailableError, match='no CUDA provider'):
        OnnxRuntimeBackend(onnx_path, device='cuda')
    # the engine cache key changes with the GPU, the TensorRT version, the ONNX file and the precision
    keys = {engine_key(onnx_path, f, g, v) for f in (True, False) for g in ('NVIDIA H100', 'Orin') for v in ('10.3',
                                                                                                        '10.8')}
    assert len(keys) == 8 and all(k.endswith(('fp16', 'fp32')) for k in keys)


@pytest.mark.slow
def test_pipeline_polylines_are_in_the_ego_frame_near_the_ground_truth(synth_root, tmp_path):
    """Train the tiny edge student on one synthetic sample (overfit), then run the Pipeline on that sample's JPEGs
    and calibration: its polylines must lie on the map ground truth (one-directional Chamfer, reported)."""
    from mapkd_core.train.config import TrainConfig
    from mapkd_core.train.trainer import Trainer
    data = tmp_path / 'data.yaml'
    import yaml
    data.write_text(yaml.safe_dump({'dataset': {'dataroot': str(synth_root), 'version': 'v1.0-mini'},
                                    'map_gt': {'line_width': 2, 'overlap_extra_width': 2}}))
    frame = next(f for f in NuScenesIndex(synth_root, 'v1.0-mini', 'mini_val') if f.scene_name == 'scene-0916')
    split = tmp_path / 'split.yaml'
    split.write_text(yaml.safe_dump({'one': [frame.scene_name]}))
    cfg = TrainConfig(stage='student', model='student_edge_tiny', data=str(data), train_split='one',
                      val_split=None, epochs=800, batch_size=1, lr=5e-3, lr_step=600, log_every=0,
                      data_overrides={'dataset': {'split_file': str(split)}}, train_limit=1)
    # one intra-op thread: the same floating-point sums, so the same weights, on every machine of this kind (a short
    # overfit is sensitive to them)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(cfg, tmp_path / 'run', progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    weights = result['weights']
    pipe = Pipeline(weights, backend='onnxruntime', cache_dir=tmp_path / 'cache')
    images, k, t = frame_inputs(frame)
    pred = pipe(images, k, t, stamp=1.5)
    assert pred.frame_id == 'base_link' and pred.stamp == 1.5
    assert set(pred.timing_ms) == {'preprocess', 'inference', 'vectorize', 'total'}
    from mapkd_core.data.map_gt import MapGroundTruth
    gt = MapGroundTruth(synth_root, pipe.grid).vectors(frame.city, frame.ego_to_global)
    assert pred.polylines, 'the trained model found no map element'

    def chamfer(transform):
        out = []
        for v in pred.polylines:
            lines = [LineString(g.points) for g in gt if g.cls == v.cls]
            assert lines, f'predicted a {v.class_name} where the map has none'
            pts = transform(np.asarray(LineString(v.points).segmentize(0.3).coords if len(v.points) > 1 else v.points))
            out.append(min(np.mean([ln.distance(Point(p)) for p in pts]) for ln in lines))
        return np.asarray(out)
    distances = chamfer(lambda p: p)
    # the same polylines read in a wrong frame convention (x/y swapped, or front/back flipped) as a control
    swapped, flipped = np.median(chamfer(lambda p: p[:, ::-1])), np.median(chamfer(lambda p: -p))
    print(f'pipeline polylines: {len(pred.polylines)}, Chamfer to the map per polyline (m): '
          f'{np.round(distances, 2).tolist()}, median {np.median(distances):.2f} '
          f'(x/y swapped: {swapped:.2f}, flipped: {flipped:.2f})')
    # 800 steps on one sample at a 0.6 m grid with 1.2 m wide lines: within about 3 cells of the map, and clearly
    # closer than the same polylines in a wrong frame
    assert np.median(distances) < 2.0
    assert swapped > 1.5 * np.median(distances) and flipped > 1.5 * np.median(distances)
    # the torch backend gives the same polylines
    same = Pipeline(weights, backend='torch')(images, k, t)
    assert len(same.polylines) == len(pred.polylines)
