"""Training throughput of the CPU-size recipes: samples/s per stage, uncached against cached (train/cache.py),
and the data loader alone; then what the recipes' step budgets cost (a measurement, not a test).

Every stage runs its shipped recipe (config/train/*_cpu.yaml) with untrained frozen teacher / coach packages (the
speed does not depend on their training) on the data given (default: the recipes' own synthetic drives when that
dataset is already generated, else the synthetic mini_train scenes). A timed run is ``--steps`` optimiser steps of
``--batch`` samples through ``Trainer.train_epoch`` (loading, frozen models, forward, backward, Adam); the median of
``--repeats`` runs after one warm-up run is reported. "uncached" reads and decodes every sample and runs the frozen
models; "cached" reads the caches filled by the warm-up. The caches live in a temporary folder, not in
$MAPKD_CACHE. The machine's load average is recorded: other processes on the machine slow every number down.

    python -m benchmarks.bench_training [--batch 2] [--steps 3] [--repeats 3] [--threads 1] [--workers 1]

``--set KEY=VALUE`` changes every stage's recipe (e.g. ``--set freeze_eval=true``: the frozen layers in eval mode,
and the edge student's frozen encoder prefix cached) and ``--tag NAME`` writes ``training_NAME.json``, so that two
settings can be compared under the same conditions:

    python -m benchmarks.bench_training --stages student_edge_cpu_baseline --no-threads --no-loader --tag recipe
    python -m benchmarks.bench_training --stages student_edge_cpu_baseline --no-threads --no-loader \
        --set freeze_eval=true --tag freeze_eval

``--modules`` instead times where one training step of a stage's model goes (``training_modules.json``): on one
batch of the recipe's data, with its ``freeze`` applied, the forward and the backward pass, and the forward time of
each submodule down to ``--depth`` levels and of the frozen part (the largest submodules whose parameters are all
frozen: it gets no backward, and with no augmentation its output is the same every epoch). Medians of ``--repeats``
steps after one warm-up step.

    python -m benchmarks.bench_training --modules [--stages teacher_cpu,student_edge_cpu_baseline] [--depth 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.harness import write_result

STAGES = ('hd_prior_cpu', 'teacher_cpu', 'coach_cpu', 'student_edge_cpu_baseline', 'student_edge_cpu')
#: the ablation the budget is for: stage -> runs (3 seeds of each student)
RUNS = {'hd_prior_cpu': 1, 'teacher_cpu': 1, 'coach_cpu': 1, 'student_edge_cpu_baseline': 3, 'student_edge_cpu': 3}


def default_data() -> tuple[str, str]:
    """(data config, train split): the recipes' synthetic drives when generated, else the synthetic mini_train."""
    from mapkd_core.data.synth.cache import DRIVES, cache_key
    from mapkd_core.paths import cache_root
    if (cache_root() / f'synth-{cache_key(DRIVES)}' / 'synth.json').is_file():
        return 'data/synthetic_drives.yaml', 'geo_train'
    return 'data/synthetic.yaml', 'mini_train'


def recipe(stage: str, data: str, split: str, frozen: dict, batch: int, steps: int, dataroot: str, **over):
    from mapkd_core.config import from_dict, merge
    from mapkd_core.train.config import TrainConfig
    from mapkd_core.train.recipes import recipe_dict, with_frozen
    cfg = with_frozen(recipe_dict(stage), frozen)
    cfg.update({'data': data, 'train_split': split, 'val_split': None, 'epochs': 1, 'batch_size': batch,
                'train_limit': batch * steps, 'log_every': 0,
                'data_overrides': merge(cfg.get('data_overrides') or {}, {'dataset': {'dataroot': dataroot}})})
    cfg.update(over)
    return from_dict(TrainConfig, cfg, source=f'{stage} (benchmark)')


def time_stage(cfg, out: Path, repeats: int) -> dict:
    """Median seconds per sample of ``repeats`` train_epoch runs after one warm-up run (which fills the caches)."""
    from mapkd_core.train.trainer import Trainer
    trainer = Trainer(cfg, out, progress=False, resume=False)
    n = len(trainer.train_set) // cfg.batch_size * cfg.batch_size
    trainer.train_epoch(0)
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        trainer.train_epoch(r + 1)
        runs.append((time.perf_counter() - t0) / n)
    return {'seconds_per_sample': statistics.median(runs), 'samples_per_s': 1.0 / statistics.median(runs),
            'runs_seconds_per_sample': runs, 'samples_per_run': n}


def time_loader(cfg, out: Path, repeats: int) -> dict:
    """Samples/s of the training DataLoader alone (no model), after one warm-up pass."""
    from mapkd_core.train.trainer import Trainer
    trainer = Trainer(cfg, out, progress=False, resume=False)
    runs = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        n = sum(len(b['token']) for b in trainer._loader(r))
        if r:
            runs.append((time.perf_counter() - t0) / n)
    return {'samples_per_s': 1.0 / statistics.median(runs), 'runs_seconds_per_sample': runs}


@contextmanager
def workspace(data: str | None, split: str | None, threads: int, prefix: str):
    """A temporary folder with untrained frozen packages, the resolved dataroot, ``threads`` torch threads and the
    training caches under the folder (not $MAPKD_CACHE); everything restored and removed afterwards. Yields (folder,
    frozen packages, dataroot, data config, split)."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import torch
    if data is None:
        data, split = default_data()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    default_threads = torch.get_num_threads()
    saved_cache = os.environ.get('MAPKD_CACHE')
    try:
        from mapkd_core.config import load_yaml
        from mapkd_core.data.dataroot import resolve_data_path
        from mapkd_core.train.recipes import untrained_frozen
        from mapkd_core.train.stages import resolve_config_path
        frozen = untrained_frozen(work)
        # the synthetic dataroot is found through MAPKD_CACHE: generate or find it first, then point the training
        # caches at the temporary folder (the dataroot's path is resolved once, in the data config)
        root = str(resolve_data_path(load_yaml(resolve_config_path(data))['dataset']['dataroot']))
        os.environ['MAPKD_CACHE'] = str(work / 'cache')
        torch.set_num_threads(threads)
        yield work, frozen, root, data, split
    finally:
        torch.set_num_threads(default_threads)
        if saved_cache is None:
            os.environ.pop('MAPKD_CACHE', None)
        else:
            os.environ['MAPKD_CACHE'] = saved_cache
        shutil.rmtree(work, ignore_errors=True)


def run(stages, batch: int, steps: int, repeats: int, data: str | None, split: str | None,
        threads_check: bool = True, threads: int = 1, workers: int = 1, loader_check: bool = True,
        overrides: dict | None = None, tag: str = '') -> dict:
    """The throughput table (``training.json``; with ``tag``, ``training_<tag>.json``); ``overrides`` are set in
    every stage's recipe (e.g. ``{'freeze_eval': True}``)."""
    import torch
    overrides = dict(overrides or {})
    results: dict = {}
    loader, threads_rows = {}, {}
    with workspace(data, split, threads, 'mapkd-bench-training-') as (work, frozen, root, data, split):
        for stage in stages:
            row = {}
            for cached in (False, True):
                cfg = recipe(stage, data, split, frozen, batch, steps, root, cache=cached, workers=workers,
                             **overrides)
                row['cached' if cached else 'uncached'] = time_stage(cfg, work / stage, repeats)
                print(f'{stage}: {"cached" if cached else "uncached"} '
                      f'{row["cached" if cached else "uncached"]["samples_per_s"]:.2f} samples/s', flush=True)
            row['cache_speedup'] = row['cached']['samples_per_s'] / row['uncached']['samples_per_s']
            results[stage] = row
        for cached in ((False, True) if loader_check else ()):
            for n_workers in (0, 1):
                cfg = recipe('student_edge_cpu', data, split, frozen, batch, steps, root, cache=cached,
                             workers=n_workers)
                key = f'{"cached" if cached else "uncached"}_workers{n_workers}'
                loader[key] = time_loader(cfg, work / 'loader', repeats)
                print(f'loader {key}: {loader[key]["samples_per_s"]:.1f} samples/s', flush=True)
        if threads_check:
            for n_threads, n_workers in ((1, 0), (2, 0), (1, 1), (2, 1)):
                torch.set_num_threads(n_threads)
                cfg = recipe('student_edge_cpu_baseline', data, split, frozen, batch, steps, root, cache=True,
                             workers=n_workers, **overrides)
                key = f'threads{n_threads}_workers{n_workers}'
                threads_rows[key] = time_stage(cfg, work / 'threads', repeats)
                print(f'student baseline, cached, {n_threads} torch threads, {n_workers} workers: '
                      f'{threads_rows[key]["samples_per_s"]:.2f} samples/s', flush=True)
    plan = budget(results, overrides)
    payload = {'data': data, 'split': split, 'batch_size': batch, 'steps_per_run': steps, 'repeats': repeats,
               'torch_threads': threads, 'workers': workers, 'overrides': overrides,
               'load_average_1_5_15': list(os.getloadavg()), 'stages': results, 'loader': loader,
               'threads_and_workers': threads_rows, 'budget': plan}
    path = write_result(f'training_{tag}' if tag else 'training', payload)
    print(table(results, plan))
    print(f'-> {path}')
    return payload


def frozen_roots(model) -> list[str]:
    """Names of the largest submodules whose parameters are all frozen (requires_grad False) and that have some."""
    def frozen(m):
        params = list(m.parameters())
        return bool(params) and not any(p.requires_grad for p in params)
    return [name for name, m in model.named_modules() if name and frozen(m)
            and not frozen(model.get_submodule(name.rpartition('.')[0]) if '.' in name else model)]


def module_times(stage: str, data: str, split: str, frozen: dict, batch: int, repeats: int, root: str, out: Path,
                 depth: int = 2) -> dict:
    """Seconds of one training step of ``stage``'s model on one batch: forward, backward (of the sum of its outputs'
    means), each submodule's forward to ``depth`` levels and the frozen part's forward (medians)."""
    import torch

    from mapkd_core.train.trainer import Trainer
    cfg = recipe(stage, data, split, frozen, batch, 1, root, cache=False, workers=0)
    trainer = Trainer(cfg, out, progress=False, resume=False)
    model = trainer.stage.model.train()
    batch_ = next(iter(trainer._loader(0)))
    roots = set(frozen_roots(model))
    named = {n: m for n, m in model.named_modules() if n and (n.count('.') < depth or n in roots)}
    starts: dict[str, float] = {}
    spent: dict[str, float] = {}

    def pre(name):
        return lambda mod, inp: starts.__setitem__(name, time.perf_counter())

    def post(name):
        return lambda mod, inp, outp: spent.__setitem__(name, spent.get(name, 0.0) + time.perf_counter() - starts[name])
    hooks = [h for n, m in named.items()
             for h in (m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n)))]
    rows = []
    try:
        for r in range(repeats + 1):
            spent.clear()
            t0 = time.perf_counter()
            out_ = model.forward_batch(batch_)
            t1 = time.perf_counter()
            total = sum(t.float().mean() for t in out_.heads()) + sum(
                v.float().mean() for v in out_.features.values() if torch.is_tensor(v) and v.requires_grad)
            total.backward()
            t2 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            if r:
                rows.append({'forward': t1 - t0, 'backward': t2 - t1, 'modules': dict(spent)})
    finally:
        for h in hooks:
            h.remove()
    med = statistics.median
    modules = {n: med(r['modules'].get(n, 0.0) for r in rows) for n in named}
    return {'batch_size': batch, 'forward_s': med(r['forward'] for r in rows),
            'backward_s': med(r['backward'] for r in rows), 'frozen_modules': sorted(roots),
            'frozen_forward_s': sum(modules[n] for n in roots),
            'modules_forward_s': dict(sorted(modules.items(), key=lambda kv: -kv[1]))}


def run_modules(stages, batch: int, repeats: int, data: str | None, split: str | None, depth: int,
                threads: int = 1) -> dict:
    with workspace(data, split, threads, 'mapkd-bench-modules-') as (work, frozen, root, data, split):
        results = {st: module_times(st, data, split, frozen, batch, repeats, root, work / st, depth) for st in stages}
    payload = {'data': data, 'split': split, 'batch_size': batch, 'repeats': repeats, 'torch_threads': threads,
               'load_average_1_5_15': list(os.getloadavg()), 'stages': results}
    path = write_result('training_modules', payload)
    for st, r in results.items():
        step = r['forward_s'] + r['backward_s']
        print(f'{st}: forward {r["forward_s"]:.2f} s, backward {r["backward_s"]:.2f} s; frozen part '
              f'{r["frozen_forward_s"]:.2f} s ({100 * r["frozen_forward_s"] / step:.0f} % of the step)')
        for n, t in list(r['modules_forward_s'].items())[:8]:
            print(f'  {n:<40} {t:6.3f} s forward')
    print(f'-> {path}')
    return payload


def budget(results: dict, overrides: dict | None = None) -> dict:
    """Minutes of the shipped CPU recipes' schedules (epochs x train_limit samples; with ``overrides`` set) at the
    cached speed; the first epoch of a run fills the caches at the uncached speed unless an earlier run (another
    seed) did."""
    from mapkd_core.paths import config_dir
    from mapkd_core.train.config import load_train_config
    out, total = {}, 0.0
    for stage, row in results.items():
        cfg = load_train_config(config_dir() / 'train' / f'{stage}.yaml', overrides)
        samples = cfg.epochs * cfg.train_limit
        first = cfg.train_limit / row['uncached']['samples_per_s']
        rest = (samples - cfg.train_limit) / row['cached']['samples_per_s']
        later = samples / row['cached']['samples_per_s']
        runs = RUNS.get(stage, 1)
        minutes = (first + rest + (runs - 1) * later) / 60
        out[stage] = {'runs': runs, 'steps_per_run': samples // cfg.batch_size, 'samples_per_run': samples,
                      'minutes_all_runs': round(minutes, 1)}
        total += minutes
    out['total_minutes'] = round(total, 1)
    return out


def table(results: dict, plan: dict) -> str:
    lines = ['| stage | uncached samples/s | cached samples/s | speed-up | runs x steps | minutes (all runs) |',
             '| --- | --- | --- | --- | --- | --- |']
    for stage, row in results.items():
        p = plan[stage]
        lines.append(f'| {stage} | {row["uncached"]["samples_per_s"]:.2f} | {row["cached"]["samples_per_s"]:.2f} | '
                     f'{row["cache_speedup"]:.2f}x | {p["runs"]} x {p["steps_per_run"]} | {p["minutes_all_runs"]} |')
    lines.append(f'| total | | | | | {plan["total_minutes"]} |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--stages', default=','.join(STAGES))
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--steps', type=int, default=3, help='optimiser steps per timed run')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--data', default=None, help='data config (default: synthetic drives if generated)')
    p.add_argument('--split', default=None)
    p.add_argument('--threads', type=int, default=1, help='torch threads of the per-stage runs (1: see README)')
    p.add_argument('--workers', type=int, default=1, help='DataLoader workers of the per-stage runs')
    p.add_argument('--no-threads', action='store_true', help='skip the torch threads / workers comparison')
    p.add_argument('--no-loader', action='store_true', help='skip the data loader timings')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a recipe key in every stage (YAML value), e.g. --set freeze_eval=true')
    p.add_argument('--tag', default='', help='write training_<tag>.json instead of training.json')
    p.add_argument('--plan', action='store_true', help='only recompute the budget of the shipped recipes from the '
                                                       'last results (benchmarks/results/training.json)')
    p.add_argument('--modules', action='store_true', help='time the forward / backward of each stage\'s model and '
                   'its submodules on one batch instead (training_modules.json)')
    p.add_argument('--depth', type=int, default=2, help='--modules: submodule levels to time')
    args = p.parse_args(argv)
    if args.modules:
        stages = args.stages.split(',') if args.stages != ','.join(STAGES) else [
            'teacher_cpu', 'coach_cpu', 'student_edge_cpu_baseline']
        run_modules(stages, args.batch, args.repeats, args.data, args.split or None, args.depth, args.threads)
        return
    if args.plan:
        import json
        from benchmarks.harness import RESULTS_DIR
        doc = json.loads((RESULTS_DIR / 'training.json').read_text())
        doc['budget'] = budget(doc['stages'])
        (RESULTS_DIR / 'training.json').write_text(json.dumps(doc, indent=2) + '\n')
        print(table(doc['stages'], doc['budget']))
        return
    import yaml
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep or not key:
            p.error(f'--set {item!r}: expected KEY=VALUE')
        overrides[key] = yaml.safe_load(value)
    run(args.stages.split(','), args.batch, args.steps, args.repeats, args.data, args.split or None,
        threads_check=not args.no_threads, threads=args.threads, workers=args.workers,
        loader_check=not args.no_loader, overrides=overrides, tag=args.tag)


if __name__ == '__main__':
    main()
