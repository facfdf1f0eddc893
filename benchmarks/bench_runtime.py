"""Per-frame latency of the inference pipeline: preprocess, inference, vectorize, total (median and p95).

Runs ``mapkd_core.runtime.Pipeline`` on the bundled real keyframe (six 1600x900 JPEGs decoded once, so decoding is
not timed; the ROS node decodes before it calls the pipeline) for each model and backend: torch and onnxruntime on
the CPU, and, where a CUDA GPU is visible, torch CUDA (fp32 and fp16) and TensorRT FP16. Weights are random (speed
does not depend on them; the vectorizer's time does somewhat, so it is reported separately). Each timing is the
median / p95 of ``--repeats`` frames after ``--warmup`` frames. torch and ONNX Runtime run with the same number of
CPU threads (``--threads``, default 1: on a 2-core machine shared with other jobs, multi-threaded timings measure
the scheduler more than the backend); the CPU backends are timed frame by frame in turn, so that a change of
machine load hits both, and the JSON holds ``onnxruntime_speedup`` (torch / onnxruntime median inference) per model
and the load average.

    python -m benchmarks.bench_runtime [--models student_edge,student] [--repeats 10] [--warmup 2] [--threads 1]
    python -m benchmarks.bench_runtime --weights mapkd_ros/weights/student_demo.safetensors   # a trained file instead
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


def make_pipeline(weights: Path, backend: str, device: str, fp16: bool, cache: Path, threads: int = 0):
    from mapkd_core.runtime import Pipeline
    return Pipeline(weights, backend=backend, device=device, fp16=fp16, cache_dir=cache / 'onnx',
                    engine_cache=cache / 'engines', log=lambda *_: None, threads=threads)


def measure_interleaved(pipes: dict, frame, warmup: int, repeats: int) -> dict:
    """Time several pipelines frame by frame in turn (a load change hits all of them alike)."""
    images, k, t = frame
    for pipe in pipes.values():
        for _ in range(warmup):
            pipe(images, k, t)
    stages = {key: {} for key in pipes}
    polylines = {key: [] for key in pipes}
    for _ in range(repeats):
        for key, pipe in pipes.items():
            pred = pipe(images, k, t)
            polylines[key].append(len(pred.polylines))
            for stage, ms in pred.timing_ms.items():
                stages[key].setdefault(stage, []).append(ms)
    return {key: {'ms': {s: summarize(v) for s, v in stages[key].items()},
                  'polylines_median': float(np.median(polylines[key]))} for key in pipes}


def run(models: str, warmup: int, repeats: int, threads: int = 1, weights: str | None = None) -> dict:
    """``weights``: one .safetensors file to time (its model, named by its config) instead of random ``models``."""
    import os

    import torch

    from mapkd_core.models import build_model, save_weights
    warnings.filterwarnings('ignore', message='no ImageNet weights')
    if threads:
        torch.set_num_threads(threads)
    frame = _frame()
    results, speedup = {}, {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if weights:
            from mapkd_core.models.io import config_of
            files = {config_of(weights).name: Path(weights)}
        else:
            files = {}
            for name in models.split(','):
                torch.manual_seed(0)
                files[name] = save_weights(build_model(name), tmp / f'{name}.safetensors')
        for name, weights_file in files.items():
            variants = _variants()
            cpu = {f'{name} {b} {d}': make_pipeline(weights_file, b, d, f, tmp, threads) for b, d, f in variants
                   if d == 'cpu'}
            measured = measure_interleaved(cpu, frame, warmup, repeats)
            for backend, device, fp16 in variants:
                if device != 'cpu':
                    key = f'{name} {backend} {device}{" fp16" if fp16 else ""}'
                    measured[key] = measure_interleaved({key: make_pipeline(weights_file, backend, device, fp16, tmp)},
                                                        frame, warmup, repeats)[key]
            for key, r in measured.items():
                results[key] = r
                ms = r['ms']
                print(f'{key:<40}' + ''.join(f'{ms[s]["median"]:>10.1f}{ms[s]["p95"]:>8.1f}'
                                             for s in ('preprocess', 'inference', 'vectorize', 'total')), flush=True)
            speedup[name] = (results[f'{name} torch cpu']['ms']['inference']['median']
                             / results[f'{name} onnxruntime cpu']['ms']['inference']['median'])
            print(f'{name}: ONNX Runtime is {speedup[name]:.2f}x faster than torch (inference, {threads} thread(s) '
                  'each)', flush=True)
    payload = {'input': 'bundled real keyframe, 6 x 1600x900 RGB (decoded), batch 1', 'threads': threads,
               'weights': str(weights) if weights else 'random',
               'torch_threads': torch.get_num_threads(), 'warmup': warmup, 'repeats': repeats,
               'onnxruntime_speedup': speedup, 'loadavg_before': list(load_before),
               'loadavg_after': list(os.getloadavg()), 'results': results}
    path = write_result('runtime', payload)
    print(f'-> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='student_edge,student')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--threads', type=int, default=1,
                   help='CPU threads of torch and of ONNX Runtime alike (0: each its default)')
    p.add_argument('--weights', default=None, help='time this .safetensors file instead of random --models')
    args = p.parse_args(argv)
    print(f'{"model backend device":<40}' + ''.join(f'{s + " p50":>10}{"p95":>8}' for s in
                                                     ('prep', 'infer', 'vect', 'total')))
    run(args.models, args.warmup, args.repeats, args.threads, args.weights)


if __name__ == '__main__':
    main()
