"""The CPU training kernels we replaced, against PyTorch's (a measurement, not a test; JSON in
``benchmarks/results/kernels.json``):

* **depthwise weight gradient**: Lite0's 5 x 5 depthwise convolutions compute their weight gradient as a depthwise
  convolution (``DepthwiseConv2dFn``) instead of PyTorch's oneDNN kernel: forward + backward of each shape a CPU
  student trains (batch 2 x 6 cameras, 128 x 352 images: Lite0 stages 5-6 and the stride-2 block into stage 6);
* **direction loss on the masked pixels**: ``DirectionLoss`` gathers the few pixels that have a direction instead of
  computing the BCE over the whole (B, 37, 100, 200) grid and masking it (the form before 2026-12-07, kept below as
  the reference);
* **training steps** (``--stages``): each stage's recipe, ``Trainer.train_epoch`` with both kernels ours and both
  the old ones (PyTorch's depthwise weight gradient, the whole-grid direction loss below) in alternating runs of
  ``--steps`` steps in one process (the same data, caches and machine load for both), on the recipes' data like
  ``bench_training`` (untrained frozen teacher / coach), the data loaded in the training process (``workers: 0``:
  a worker's start-up in every short run would weigh on both sides alike and hide the ratio).

    python -m benchmarks.bench_kernels [--threads 1] [--repeats 15] [--stages student_edge_cpu_baseline,teacher_cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.harness import time_runs, write_result

#: (images, channels, height, width, stride) entering the 5 x 5 depthwise convolutions a CPU student trains (the
#: blocks after its frozen prefix, stages 5-6 of Lite0, at 128 x 352): one batch of 2 samples x 6 cameras
DEPTHWISE_SHAPES = ((12, 480, 8, 22, 1), (12, 672, 8, 22, 1), (12, 672, 8, 22, 2), (12, 1152, 4, 11, 1))
DIRECTION_GRID = (2, 37, 100, 200)


def direction_loss_whole_grid(logits, direction):
    """The direction BCE as computed before 2026-12-07: over every pixel and channel, then masked (the reference of
    ``DirectionLoss``; ``test/test_losses.py`` checks the two agree)."""
    import torch
    import torch.nn.functional as F
    from mapkd_core.data.rasterize import direction_onehot
    from mapkd_core.distill.losses import PROB_EPS
    k = logits.shape[1]
    target = direction_onehot(direction, k)
    mask = (direction != 0).any(dim=1)
    log_p = F.log_softmax(logits.float(), dim=1)
    log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(PROB_EPS))
    bce = -(target * log_p + (1.0 - target) * log_not_p)
    return (bce * mask[:, None].to(bce.dtype)).sum() / (int(mask.sum()) * k)


def depthwise_rows(repeats: int) -> list[dict]:
    import torch
    from mapkd_core.models.efficientnet_lite import SameConv2d
    rows = []
    for n, c, h, w, stride in DEPTHWISE_SHAPES:
        conv = SameConv2d(c, c, 5, stride, groups=c, in_hw=(h, w))
        x = torch.randn(n, c, h, w, requires_grad=True)
        grad = torch.randn(n, c, *conv.out_hw)

        def step():
            conv(x).backward(grad)
        row = {'input': [n, c, h, w], 'kernel': 5, 'stride': stride}
        for name, ours in (('ours', True), ('torch', False)):
            conv.fast_weight_grad = ours
            row[f'{name}_ms'] = 1e3 * time_runs(step, warmup=2, repeats=repeats)['median']
        row['speedup'] = row['torch_ms'] / row['ours_ms']
        rows.append(row)
        print(f'depthwise {tuple(row["input"])} stride {stride}: PyTorch {row["torch_ms"]:.1f} ms, ours '
              f'{row["ours_ms"]:.1f} ms (x{row["speedup"]:.2f})', flush=True)
    return rows


def direction_row(repeats: int) -> dict:
    import torch
    from mapkd_core.distill.losses import DirectionLoss
    gen = torch.Generator().manual_seed(0)
    b, k, h, w = DIRECTION_GRID
    logits = torch.randn(b, k, h, w, generator=gen, requires_grad=True)
    # about 5 % of the pixels with a direction, as on the 0.3 m grid of the drives
    bins = torch.randint(1, k, (b, 2, h, w), generator=gen) * (torch.rand(b, 1, h, w, generator=gen) < 0.05)
    bins = bins.to(torch.uint8)
    row = {'logits': list(DIRECTION_GRID), 'masked_fraction': float((bins != 0).any(1).float().mean())}
    for name, fn in (('ours', DirectionLoss()), ('whole_grid', direction_loss_whole_grid)):
        row[f'{name}_ms'] = 1e3 * time_runs(lambda: fn(logits, bins).backward(), warmup=2,
                                              repeats=repeats)['median']
    row['speedup'] = row['whole_grid_ms'] / row['ours_ms']
    print(f'direction loss {DIRECTION_GRID}: whole grid {row["whole_grid_ms"]:.1f} ms, ours {row["ours_ms"]:.1f} ms '
          f'(x{row["speedup"]:.2f})', flush=True)
    return row


def stage_row(stage: str, steps: int, rounds: int, data, split, threads: int) -> dict:
    """Seconds per sample of ``stage``'s training with the kernels ours / the old ones, alternating."""
    from benchmarks.bench_training import recipe, workspace
    from mapkd_core.distill.losses import DirectionLoss
    from mapkd_core.models.efficientnet_lite import SameConv2d
    from mapkd_core.train.trainer import Trainer
    ours_direction = DirectionLoss.forward
    with workspace(data, split, threads, 'mapkd-kernels-') as (work, frozen, root, data, split):
        cfg = recipe(stage, data, split, frozen, 2, steps, root, workers=0)
        trainer = Trainer(cfg, work / stage, progress=False, resume=False)
        convs = [m for m in trainer.stage.module.modules() if isinstance(m, SameConv2d) and m.fast_weight_grad]
        trainer.train_epoch(0)  # warm-up: fills the caches
        runs = {'ours': [], 'old': []}
        for r in range(rounds):
            for name in (('ours', 'old') if r % 2 == 0 else ('old', 'ours')):
                for m in convs:
                    m.fast_weight_grad = name == 'ours'
                DirectionLoss.forward = (ours_direction if name == 'ours' else
                                         lambda self, logits, direction: direction_loss_whole_grid(logits, direction))
                try:
                    t0 = time.perf_counter()
                    trainer.train_epoch(r + 1)
                    runs[name].append((time.perf_counter() - t0) / (steps * 2))
                finally:
                    DirectionLoss.forward = ours_direction
    row = {'stage': stage, 'data': data, 'split': split, 'threads': threads, 'steps_per_run': steps,
           'trained_depthwise_5x5': len(convs),
           **{f'{k}_s_per_sample': statistics.median(v) for k, v in runs.items()},
           'runs': runs}
    row['speedup'] = row['old_s_per_sample'] / row['ours_s_per_sample']
    print(f'{stage}: old kernels {row["old_s_per_sample"]:.3f} s/sample, ours {row["ours_s_per_sample"]:.3f} '
          f'(x{row["speedup"]:.2f}; {len(convs)} trained 5 x 5 depthwise convolutions)', flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=15, help='timed runs of each kernel (median)')
    p.add_argument('--stages', default='student_edge_cpu_baseline',
                   help='comma-separated training recipes to time ("" for none), e.g. teacher_cpu,coach_cpu')
    p.add_argument('--steps', type=int, default=8, help='optimiser steps per timed training run')
    p.add_argument('--rounds', type=int, default=6, help='timed training runs per setting (alternating)')
    p.add_argument('--data', default=None, help='data config (default: synthetic drives if generated)')
    p.add_argument('--split', default=None)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    doc = {'threads': args.threads, 'depthwise': depthwise_rows(args.repeats),
           'direction_loss': direction_row(args.repeats),
           'stages': [stage_row(s, args.steps, args.rounds, args.data, args.split, args.threads)
                      for s in args.stages.split(',') if s]}
    print(f'wrote {write_result("kernels", doc)}')


if __name__ == '__main__':
    main()
