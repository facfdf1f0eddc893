"""Where the student's vector mAP is lost against the teacher's: its semantic head, or the instance embedding and
direction heads that the vectorizer reads (a measurement, not a test).

MSRD distils the semantic logits only. Whether that can close the teacher's mAP lead depends on where the lead is:
this scores, with ``mapkd-eval``'s code on the same ``geo_val`` frames, the vectorized output of every mix of a
semantic head and an instance (embedding + direction) head from the student, the teacher, and the ground truth (the
GT one-hot as logits of +-10, i.e. a perfect segmentation): ``S/S`` is the student, ``T/T`` the teacher, ``S/T`` the
student's segmentation vectorized with the teacher's embedding and direction, and so on. If ``S/T`` is close to
``S/S`` and ``T/S`` to ``T/T``, the teacher's lead is in its segmentation (what MSRD distils); if not, in the heads
MSRD leaves alone.

    python -m benchmarks.bench_map_gap --runs runs/ablation_cpu4 --student student_baseline_s0 [--val-frames 300]

Each real model runs once per frame (its heads are kept, in float16, for the mixes). Needs the ablation's trained
runs: ``make bench`` skips it unless BENCH_ALL=1.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.harness import write_result

#: needs the trained runs of the distillation ablation
LONG = True
#: semantic source / instance source of each scored mix
MIXES = (('S', 'S'), ('T', 'T'), ('S', 'T'), ('T', 'S'), ('GT', 'S'), ('GT', 'T'))


class HeadStore:
    """Each real model's heads per frame token, computed on first use (float16 on the CPU)."""

    def __init__(self, models: dict):
        self.models = models
        self.heads: dict[tuple[str, str], tuple] = {}

    def get(self, role: str, batch: dict) -> list[tuple]:
        import torch
        tokens = list(batch['token'])
        if role == 'GT':  # a perfect segmentation: the GT one-hot as confident logits
            sem = (batch['semantic'].float() * 2.0 - 1.0) * 10.0
            return [(sem[i], None, None) for i in range(len(tokens))]
        if any((role, t) not in self.heads for t in tokens):
            with torch.no_grad():
                out = self.models[role].forward_batch(batch)
            for i, t in enumerate(tokens):
                self.heads[(role, t)] = tuple(h[i].detach().to('cpu', torch.float16)
                                              for h in (out.semantic, out.embedding, out.direction))
        return [self.heads[(role, t)] for t in tokens]


def mix_model(store: HeadStore, sem: str, inst: str, cfg):
    """A stand-in model for ``evaluate``: the semantic head of ``sem``, embedding and direction of ``inst``."""
    import torch

    from mapkd_core.models.networks import MapOutput

    class Mix(torch.nn.Module):
        inputs = ()

        def __init__(self):
            super().__init__()
            self.cfg = cfg

        def forward_batch(self, batch):
            s, i = store.get(sem, batch), store.get(inst, batch)
            return MapOutput(semantic=torch.stack([x[0].float() for x in s]),
                             embedding=torch.stack([x[1].float() for x in i]),
                             direction=torch.stack([x[2].float() for x in i]), bev=None)
    return Mix()


def measure(runs: Path, student: str, val_frames: int) -> dict:
    from benchmarks.bench_distillation import ablation_dataroot, student_data_config
    from mapkd_core.data.dataset import MapDataset, spread
    from mapkd_core.errors import WeightsNotFoundError
    from mapkd_core.eval.evaluate import data_config_for, evaluate
    from mapkd_core.models.io import load_any

    paths = {'T': runs / 'teacher' / 'teacher.safetensors', 'S': runs / student / 'student_edge.safetensors'}
    for role, p in paths.items():
        if not p.is_file():
            raise WeightsNotFoundError(f'{role} weights not found: {p} (train them with benchmarks.bench_distillation '
                                       f'--out {runs})')
    models = {role: load_any(p).eval() for role, p in paths.items()}
    if models['T'].cfg.grid != models['S'].cfg.grid:
        raise ValueError(f'teacher and student grids differ: {models["T"].cfg.grid} / {models["S"].cfg.grid}')
    # the students' data (the baseline recipe's line widths), loading every input the teacher reads
    data_cfg = student_data_config(ablation_dataroot(val_frames=val_frames))  # the ablation's frames, rendered
    ds = MapDataset(data_config_for(models['T'], data_cfg), split='geo_val')
    if val_frames:
        ds.frames = spread(ds.frames, val_frames)
    store = HeadStore(models)
    rows = {}
    for sem, inst in MIXES:
        rep = evaluate(mix_model(store, sem, inst, models['T'].cfg), data_cfg, dataset=ds, batch_size=4,
                       progress=False)
        name = f'{sem}/{inst}'
        rows[name] = {'miou': rep['miou'], 'map': rep['map'], 'iou': rep['iou'], 'ap': rep['ap']}
        print(f'{name:6s} semantic from {sem:2s}, embedding + direction from {inst}: mIoU {100 * rep["miou"]:.1f}, '
              f'mAP {100 * rep["map"]:.1f}', flush=True)
    return {'runs': str(runs), 'student': student, 'frames': len(ds.frames), 'mixes': rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', default='runs/ablation_cpu', help='the bench_distillation --out folder')
    p.add_argument('--student', default='student_baseline_s0', help='the student run folder under --runs')
    p.add_argument('--val-frames', type=int, default=300, help='geo_val frames evenly spread (0 = all)')
    args = p.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    payload = measure(Path(args.runs), args.student, args.val_frames)
    print(f'-> {write_result("map_gap", payload)}')


if __name__ == '__main__':
    main()
