"""GPU check, for the day a GPU machine is lent: latency and training throughput at paper size on one CUDA GPU.

Runs on the lent machine's own Python (torch with CUDA); ``benchmarks/gpu_check.sh`` sets PYTHONPATH to the repo so
that ``mapkd_core`` imports without installing. Writes ``gpu_check.json`` (to ``$OUT`` when set, else
``benchmarks/results/``):

* ``latency``: the edge and the paper student at batch 1 (random weights, seed 0; six camera images of the model's
  size): torch CUDA fp32 and fp16 (autocast), eager and replayed as a CUDA graph, median / p95 ms of ``--repeats``
  runs after warm-up, and each output's largest difference to the CPU fp32 run (fp32 within ``FP32_TOL`` with TF32
  off; fp16: the difference and the share of BEV cells whose argmax class agrees);
* ``training``: optimiser steps/s of the teacher and the student stages at paper size (config/models/teacher.yaml,
  config/models/student.yaml; batch size, learning rate, AMP and losses of config/train/teacher.yaml and
  student.yaml; the student's step includes the frozen teacher and coach forward passes that MSRD / TGPD read, as
  when their outputs are not cached) on synthetic random inputs of the right shapes, and from it the time of one
  nuScenes epoch (28,130 train samples) on this GPU.

Without a CUDA GPU it prints one line, writes ``{"gpu": false, ...}`` and exits 0.

    python -m benchmarks.gpu_check [--repeats 50] [--train-steps 20] [--budget-s 420]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUSCENES_TRAIN_SAMPLES = 28130
FP32_TOL = 1e-3  # CUDA fp32 (TF32 off) against CPU fp32: different kernels and summation orders


def out_dir() -> Path:
    return Path(os.environ['OUT']) if os.environ.get('OUT') else REPO / 'benchmarks' / 'results'


def write(doc: dict) -> Path:
    path = out_dir() / 'gpu_check.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {'benchmark': 'gpu_check', 'time_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
           'loadavg': list(os.getloadavg()), 'python': sys.version.split()[0], **doc}
    path.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    return path


def missing_modules() -> list[str]:
    """The modules this check needs that do not import here (the first failing import of each)."""
    missing = []
    for name in ('torch', 'numpy', 'yaml', 'safetensors', 'mapkd_core.models'):
        try:
            __import__(name)
        except ImportError as exc:
            missing.append(f'{name} ({exc.name or exc})')
    return missing


def nvidia_device() -> bool:
    """Whether the machine has an NVIDIA GPU, without torch: a device node or nvidia-smi."""
    import shutil
    return Path('/dev/nvidia0').exists() or shutil.which('nvidia-smi') is not None


def _summary(runs: list[float]) -> dict:
    ordered = sorted(runs)
    return {'median': statistics.median(runs) * 1e3, 'p95': ordered[min(len(ordered) - 1,
                                                                        round(0.95 * (len(ordered) - 1)))] * 1e3,
            'min': ordered[0] * 1e3, 'runs': len(runs)}


def _timed(fn, torch, warmup: int, repeats: int, cuda: bool = True) -> dict:
    def sync():
        if cuda:
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t0)
    return _summary(runs)


def camera_inputs(cfg, torch, batch: int = 1, seed: int = 0) -> dict:
    """Random images of the model's size with a plausible rig (six cameras around the vehicle, 1.5 m high)."""
    import math
    g = torch.Generator().manual_seed(seed)
    n, h, w = len(cfg.image.cameras), cfg.image.height, cfg.image.width
    k = torch.tensor([[w * 0.8, 0, w / 2], [0, w * 0.8, h / 2], [0, 0, 1.0]])
    poses = []
    for i in range(n):
        yaw = 2 * math.pi * i / n
        # camera frame (x right, y down, z forward) -> ego (x forward, y left, z up), rotated by yaw
        base = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
        rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        t = torch.eye(4)
        t[:3, :3] = rz @ base
        t[:3, 3] = torch.tensor([1.0, 0.0, 1.5])
        poses.append(t)
    return {'images': torch.randn(batch, n, 3, h, w, generator=g),
            'intrinsics': k.expand(batch, n, 3, 3).contiguous(),
            'cam_to_ego': torch.stack(poses).expand(batch, n, 4, 4).contiguous()}


def latency(name: str, torch, warmup: int, repeats: int) -> dict:
    from mapkd_core.models import build_model
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model(name).eval()
    inputs = {k: v for k, v in camera_inputs(model.cfg, torch).items() if k in model.inputs}
    with torch.no_grad():
        ref = [t.float() for t in model(**inputs).heads()]  # CPU fp32 reference
    model = model.cuda()
    dev = {k: v.cuda() for k, v in inputs.items()}
    out = {'params_m': round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    for precision in ('fp32', 'fp16'):
        fp16 = precision == 'fp16'

        def run():
            with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16, enabled=fp16):
                return model(**dev).heads()
        entry = {'eager_ms': _timed(run, torch, warmup, repeats)}
        heads = [t.float().cpu() for t in run()]
        diffs = [float((a - b).abs().max()) for a, b in zip(heads, ref)]
        entry['max_abs_diff_vs_cpu'] = dict(zip(('semantic', 'embedding', 'direction'), diffs))
        entry['semantic_argmax_agreement'] = float((heads[0].argmax(1) == ref[0].argmax(1)).float().mean())
        if not fp16:
            entry['tolerance'] = FP32_TOL
            entry['equal_to_cpu'] = all(d <= FP32_TOL * max(1.0, float(r.abs().max())) for d, r in zip(diffs, ref))
        try:  # CUDA graph: capture one forward on static inputs, replay it
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    run()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = run()
            entry['cuda_graph_ms'] = _timed(graph.replay, torch, warmup, repeats)
            graph_heads = [t.float().cpu() for t in static_out]
            entry['cuda_graph_equals_eager'] = all(bool(torch.allclose(a, b, atol=1e-5, rtol=1e-4))
                                                   for a, b in zip(graph_heads, heads))
            entry['cuda_graph_speedup'] = entry['eager_ms']['median'] / entry['cuda_graph_ms']['median']
            del graph
        except Exception as exc:  # noqa: BLE001 - a model that cannot be captured is a result, not a failure
            entry['cuda_graph_error'] = f'{type(exc).__name__}: {exc}'[:300]
        out[precision] = entry
    return out


def synthetic_batch(model, torch, batch: int, seed: int = 0, device: str = 'cuda') -> dict:
    """A training batch of random tensors with the Dataset's keys, shapes and dtypes, on ``device``."""
    from mapkd_core.constants import CLASS_NAMES
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    h, w = cfg.grid.shape
    out = camera_inputs(cfg, torch, batch, seed)
    cls = torch.randint(0, len(CLASS_NAMES), (batch, h, w), generator=g)
    out['semantic'] = torch.nn.functional.one_hot(cls, len(CLASS_NAMES)).permute(0, 3, 1, 2).to(torch.uint8)
    out['instance'] = torch.where(cls > 0, torch.randint(1, 20, (batch, h, w), generator=g),
                                  torch.zeros_like(cls)).to(torch.int32)
    out['direction'] = torch.randint(0, cfg.direction_channels, (batch, 2, h, w), generator=g).to(torch.uint8)
    out['sd_prior'] = torch.where(torch.rand(batch, 1, h, w, generator=g) < 0.3, 1.0, -1.0)
    points = 81920
    xb, yb = cfg.grid.xbound, cfg.grid.ybound
    lidar = torch.rand(batch, points, 5, generator=g)
    lidar[..., 0] = lidar[..., 0] * (xb[1] - xb[0]) + xb[0]
    lidar[..., 1] = lidar[..., 1] * (yb[1] - yb[0]) + yb[0]
    lidar[..., 2] = lidar[..., 2] * 4 - 2
    out['lidar'] = lidar
    out['lidar_mask'] = torch.ones(batch, points, dtype=torch.bool)
    return {k: v.to(device) for k, v in out.items()}


def training(stage: str, torch, steps: int, warmup: int, device: str = 'cuda', suffix: str = '') -> dict:
    """Optimiser steps/s of one paper-size stage, as the Trainer runs it (AMP, Adam, grad clipping). ``device``
    'cpu' and ``suffix`` '_tiny' (the tiny configs) are for the smoke test that runs where there is no GPU."""
    from mapkd_core.models import build_model
    from mapkd_core.train.config import load_train_config
    from mapkd_core.train.stages import TrainModule
    cfg = load_train_config(REPO / 'config' / 'train' / f'{stage}{suffix}.yaml')
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model(str(REPO / 'config' / 'models' / f'{cfg.model}.yaml'))
        frozen = {}
        if cfg.distill.uses_teacher:
            frozen['teacher'] = build_model(str(REPO / 'config' / 'models' / f'teacher{suffix}.yaml'))
        if cfg.distill.uses_coach:
            frozen['coach'] = build_model(str(REPO / 'config' / 'models' / f'coach{suffix}.yaml'))
    cuda = device.startswith('cuda')
    module = TrainModule(cfg, model).to(device).train()
    for m in frozen.values():
        m.to(device).eval().requires_grad_(False)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = cuda and cfg.amp != 'off'
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    batch = synthetic_batch(model, torch, cfg.batch_size, device=device)

    def step():
        with torch.autocast('cuda' if cuda else 'cpu', dtype=torch.float16, enabled=amp):
            with torch.no_grad():
                t_out = frozen['teacher'].forward_batch(batch) if 'teacher' in frozen else None
                c_out = frozen['coach'].forward_batch(batch) if 'coach' in frozen else None
            losses = module(batch, t_out, c_out)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses['total']).backward()
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        if not torch.isfinite(losses['total']):
            raise FloatingPointError(f'loss is {float(losses["total"])}')
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = _timed(step, torch, warmup, steps, cuda)
    steps_per_s = 1e3 / timing['median']
    epoch_s = NUSCENES_TRAIN_SAMPLES / (steps_per_s * cfg.batch_size)
    result = {'model': cfg.model, 'batch_size': cfg.batch_size, 'amp': amp, 'frozen': sorted(frozen),
              'step_ms': timing, 'steps_per_s': steps_per_s, 'samples_per_s': steps_per_s * cfg.batch_size,
              'nuscenes_epoch_min': epoch_s / 60, 'epochs_in_recipe': cfg.epochs,
              'recipe_hours': epoch_s * cfg.epochs / 3600,
              'peak_memory_gb': torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=50, help='timed runs per latency entry')
    p.add_argument('--train-steps', type=int, default=20, help='timed optimiser steps per training stage')
    p.add_argument('--budget-s', type=float, default=420.0, help='skip what is left after this many seconds')
    args = p.parse_args(argv)
    t_start = time.monotonic()
    missing = missing_modules()
    if any(m.startswith('torch') for m in missing):
        if not nvidia_device():
            path = write({'gpu': False, 'torch': None, 'missing': missing})
            print(f'gpu_check: no NVIDIA GPU on this machine (and no torch in {sys.executable}); nothing to measure '
                  f'-> {path}')
            return 0
        print(f'gpu_check: an NVIDIA GPU is here but {sys.executable} cannot import torch; missing: '
              f'{", ".join(missing)} (set PYTHON to an interpreter with torch + CUDA)')
        write({'gpu': None, 'error': f'missing modules: {missing}'})
        return 1
    import torch
    if not torch.cuda.is_available():
        path = write({'gpu': False, 'torch': torch.__version__, 'cuda_build': torch.version.cuda})
        print(f'gpu_check: no CUDA GPU visible to torch {torch.__version__} on this machine; nothing to measure '
              f'-> {path}')
        return 0
    if missing:
        print(f'gpu_check: a GPU is here, but these modules are missing: {", ".join(missing)} '
              '(pip install pyyaml safetensors, or carry their wheels: see docs/runtime.md, "The GPU check")')
        write({'gpu': torch.cuda.get_device_name(0), 'error': f'missing modules: {missing}'})
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the comparison with the CPU run)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    doc = {'gpu': torch.cuda.get_device_name(0), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version(), 'latency': {}, 'training': {}, 'skipped': []}
    jobs = [('latency', name, lambda n=name: latency(n, torch, 10, args.repeats))
            for name in ('student_edge', 'student')]
    jobs += [('training', stage, lambda s=stage: training(s, torch, args.train_steps, 3)) for stage in
             ('teacher', 'student')]
    for section, key, job in jobs:
        if time.monotonic() - t_start > args.budget_s:
            doc['skipped'].append(f'{section} {key} (time budget)')
            continue
        t0 = time.monotonic()
        try:
            doc[section][key] = job()
        except Exception as exc:  # noqa: BLE001 - report and go on with the next measurement
            doc[section][key] = {'error': f'{type(exc).__name__}: {exc}'[:500]}
        torch.cuda.empty_cache()  # the job's models and optimiser are gone with its frame
        doc[section][key]['wall_s'] = round(time.monotonic() - t0, 1)
        print(f'gpu_check: {section} {key}: {json.dumps(doc[section][key])[:400]}', flush=True)
        write(doc)
    path = write(doc)
    print(f'gpu_check: done in {time.monotonic() - t_start:.0f} s -> {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
