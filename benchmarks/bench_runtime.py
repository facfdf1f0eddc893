"""Per-frame latency of the inference pipeline: preprocess, inference, vectorize, total (median and p95).

Runs ``mapkd_core.runtime.Pipeline`` on the bundled real keyframe (six 1600x900 JPEGs decoded once, so decoding is
not timed; the ROS node decodes before it calls the pipeline) for each model and backend: torch and onnxruntime on
the CPU, and, where a CUDA GPU is visible, torch CUDA (fp32 and fp16) and TensorRT FP16. Weights are random (speed
does not depend on them; the vectorizer's time does somewhat, so it is reported separately). Each timing is the
median / p95 of ``--repeats`` frames after ``--warmup`` frames.

    python -m benchmarks.bench_runtime [--models student_edge,student] [--repeats 10] [--warmup 2]
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from benchmarks.harness import bundled_keyframe, summarize, write_result


def _frame():
    """The bundled keyframe's images decoded to RGB once (decoding is not timed), with its calibration."""
    import cv2
    frame = bundled_keyframe()
    images = [cv2.cvtColor(cv2.imread(str(c.path)), cv2.COLOR_BGR2RGB) for c in frame.cameras]
    return images, frame.intrinsics, frame.cam_to_ego


def _variants() -> list[tuple[str, str, bool]]:
    """(backend, device, fp16) combinations this machine can run."""
    out = [('torch', 'cpu', False), ('onnxruntime', 'cpu', False)]
    import torch
    if torch.cuda.is_available():
        out += [('torch', 'cuda', False), ('torch', 'cuda', True)]
        try:
            import tensorrt  # noqa: F401
            out.append(('tensorrt', 'cuda', True))
        except ImportError:
            print('tensorrt is not installed: TensorRT rows skipped')
    return out


def measure(weights: Path, backend: str, device: str, fp16: bool, frame, warmup: int, repeats: int,
            cache: Path) -> dict:
    from mapkd_core.runtime import Pipeline
    pipe = Pipeline(weights, backend=backend, device=device, fp16=fp16, cache_dir=cache / 'onnx',
                    engine_cache=cache / 'engines', log=lambda *_: None)
    images, k, t = frame
    for _ in range(warmup):
        pipe(images, k, t)
    stages: dict[str, list[float]] = {}
    polylines = []
    for _ in range(repeats):
        pred = pipe(images, k, t)
        polylines.append(len(pred.polylines))
        for key, ms in pred.timing_ms.items():
            stages.setdefault(key, []).append(ms)
    return {'ms': {key: summarize(v) for key, v in stages.items()}, 'polylines_median': float(np.median(polylines))}


def run(models: str, warmup: int, repeats: int) -> dict:
    import torch

    from mapkd_core.models import build_model, save_weights
    warnings.filterwarnings('ignore', message='no ImageNet weights')
    frame = _frame()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models.split(','):
            torch.manual_seed(0)
            weights = save_weights(build_model(name), tmp / f'{name}.safetensors')
            for backend, device, fp16 in _variants():
                key = f'{name} {backend} {device}{" fp16" if fp16 else ""}'
                results[key] = measure(weights, backend, device, fp16, frame, warmup, repeats, tmp)
                ms = results[key]['ms']
                print(f'{key:<40}' + ''.join(f'{ms[s]["median"]:>10.1f}{ms[s]["p95"]:>8.1f}'
                                             for s in ('preprocess', 'inference', 'vectorize', 'total')), flush=True)
    payload = {'input': 'bundled real keyframe, 6 x 1600x900 RGB (decoded), batch 1', 'torch_threads':
               torch.get_num_threads(), 'warmup': warmup, 'repeats': repeats, 'results': results}
    path = write_result('runtime', payload)
    print(f'-> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='student_edge,student')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    args = p.parse_args(argv)
    print(f'{"model backend device":<40}' + ''.join(f'{s + " p50":>10}{"p95":>8}' for s in
                                                     ('prep', 'infer', 'vect', 'total')))
    run(args.models, args.warmup, args.repeats)


if __name__ == '__main__':
    main()
