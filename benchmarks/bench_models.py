"""Model size and speed at paper size (128x352 images, six cameras, 200x400 grid): parameters, MACs, CPU latency.

MACs are counted by torch's ``FlopCounterMode`` on the meta device (its FLOPs / 2: convolutions, matrix products,
attention); ops it does not count (grid_sample, index_add, interpolation, element-wise) are left out, which is
negligible here. Latency: batch 1, ``torch.no_grad``, median of ``--repeats`` runs after one warm-up run, on the CPU
with torch's default thread count.

    python -m benchmarks.bench_models [--models teacher,coach,student,student_edge] [--repeats 3]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import time_runs, write_result


def _inputs(cfg, device='cpu', points=81920):
    b, n = 1, len(cfg.image.cameras)
    h, w = cfg.grid.shape
    k = torch.tensor([[280.0, 0, cfg.image.width / 2], [0, 280.0, cfg.image.height / 2], [0, 0, 1]])
    return {'images': torch.randn(b, n, 3, cfg.image.height, cfg.image.width, device=device),
            'intrinsics': k.expand(b, n, 3, 3).clone().to(device),
            'cam_to_ego': torch.eye(4).expand(b, n, 4, 4).clone().to(device),
            'lidar': torch.randn(b, points, 5, device=device) * 10,
            'lidar_mask': torch.ones(b, points, dtype=torch.bool, device=device),
            'sd_prior': torch.ones(b, 1, h, w, device=device)}


def measure(name: str, repeats: int) -> dict:
    from mapkd_core.models import build_model
    warnings.filterwarnings('ignore', message='no ImageNet weights')
    torch.manual_seed(0)
    model = build_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    if name == 'teacher':  # data-dependent pillar scatter: count on real tensors
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.forward_batch(_inputs(model.cfg))
    else:
        with torch.device('meta'):
            meta_model = build_model(name).eval()
            counter = FlopCounterMode(display=False)
            with counter:
                meta_model.forward_batch(_inputs(meta_model.cfg, device='meta'))
    batch = _inputs(model.cfg)
    with torch.no_grad():
        latency = time_runs(lambda: model.forward_batch(batch), warmup=1, repeats=repeats)
    return {'parameters': params, 'macs': counter.get_total_flops() / 2, 'latency_s': latency}


def run(models: str, repeats: int) -> dict:
    results = {name: measure(name, repeats) for name in models.split(',')}
    payload = {'image_size': [128, 352], 'cameras': 6, 'grid': [200, 400], 'batch': 1, 'models': results}
    path = write_result('models', payload)
    print(f'{"model":<14}{"params (M)":>12}{"GMACs":>10}{"CPU latency (s)":>18}')
    for name, r in results.items():
        print(f'{name:<14}{r["parameters"] / 1e6:>12.2f}{r["macs"] / 1e9:>10.1f}{r["latency_s"]["median"]:>18.2f}')
    print(f'-> {path}')
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default='teacher,coach,student,student_edge')
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args(argv)
    run(args.models, args.repeats)


if __name__ == '__main__':
    main()
