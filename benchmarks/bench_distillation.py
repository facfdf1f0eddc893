"""The MapKD ablation at CPU size on the synthetic drives, with error bars (a measurement, not a test).

Trains, with the shipped CPU recipes (``config/train/*_cpu.yaml``: 128 x 352 images, 0.3 m grid, ImageNet Lite0) on
the same ``geo_train`` frames: the HD-prior MAE, the teacher (camera + LiDAR + SD + HD prior, its HD branch from the
MAE), the coach (camera + simulated LiDAR + SD, distilled from the teacher), then the edge students: the baseline
(task losses only) and the full MapKD student (TGPD + MSRD from teacher and coach) with ``--seeds`` seeds each (seed
k of the MapKD student pairs with seed k of the baseline: same initialisation of the untrained layers, same batch
order), and the single-loss rows (TGPD only, MSRD only; seed 0). Every model is evaluated right after it is trained,
with ``mapkd-eval``'s code (pooled IoU per class, mIoU, vector AP with the P-MapNet protocol, mAP), on ``geo_val``
(``--val-frames`` frames evenly spread over it; 0 = all 1,032) and on the real-track ``mini_val`` (81 frames).

Writes ``benchmarks/results/distillation.json`` (every run, its budget, seconds and scores, the per-seed pairs and the
mean +- std rows), prints the Markdown table the README quotes, and draws ``benchmarks/results/distillation.png``.

    python -m benchmarks.bench_distillation [--out runs/ablation_cpu] [--seeds 3]

Resumable: each run trains into its own folder under ``--out`` (the trainer resumes an interrupted run from its last
epoch checkpoint and skips a finished one) and stores its evaluation as ``eval.json`` beside the weights, reused
when the weights are unchanged. The frozen teacher's and coach's outputs on the training frames are computed once,
by a row of their own right after each model (``FILLS``), and read from the cache by every student. ``--jobs 2``
trains two rows at once, each in its own process, a row starting as soon as the rows it needs are finished (the
baselines beside the HD prior -> teacher -> coach chain), the cores shared out among the rows running (a row left
alone takes them all); each row's output goes to ``<out>/<row>.log``. The tuning attempts (``ATTEMPTS``: recorded
rows of the rounds of tuning) train only with ``--attempts`` or when named in ``--only``. ``--estimate`` trains
nothing and prints the wall time a call would take, replaying its schedule with the work each row measured under
``--out`` (seconds at each thread count). Budget on the 2-core development CPU: docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import write_result

#: about 150 minutes on a 2-core CPU: `make bench` skips it unless BENCH_ALL=1
LONG = True

#: every stage trains on the same ``TRAIN_FRAMES`` geo_train frames (evenly spread over the 178 drives), so the
#: training caches (decoded images, the frozen teacher's and coach's outputs) are filled once and shared by all runs
TRAIN_FRAMES = 1200
#: the geo_val frames every model is scored on (evenly spread over the 1,032; ``--val-frames``)
VAL_FRAMES = 300
#: epochs over those frames per stage (the recipes' batch sizes: 8 for the HD prior, 2 for the others); the teacher
#: a third epoch at lr / 10 (54.2 -> 61.3 mIoU; rounds 3-5 and runs/ablation_cpu4: 2 epochs); the coach one epoch
#: from the teacher's weights since round 14 (45.4 geo_val mIoU after it, 42.7 after a second; rounds 6-13: two
#: epochs from ImageNet, 40.9-43.1)
EPOCHS = {'hd_prior': 6, 'teacher': 3, 'coach': 1, 'student': 2}
#: the epoch after which the learning rate drops 10x (default: never within the run, i.e. the stage's epochs)
LR_STEP = {'hd_prior': 5, 'teacher': 2}
#: rows that fill a frozen model's output cache (the teacher's, the coach's) over the training frames, once, right
#: after the model trains; every student distilling from it then reads the cache instead of running the model. Before
#: round 15 the students filled it themselves: two MapKD seeds started together each spent ~800 s of their first
#: epoch computing the same entries (1,449 s against 651 s for the second epoch, round 14)
FILLS = {'frozen_teacher': 'teacher', 'frozen_coach': 'coach'}
#: a row's speed on t threads relative to one thread is t ** THREAD_EXPONENT (the estimate's model): 2 threads 1.6x,
#: measured on a student's second epoch, 411 s alone on 2 threads against 651-669 s on one beside another row
#: (round 14, runs/ablation_cpu15)
THREAD_EXPONENT = math.log2(1.6)

#: MapKD's train_s.py weights with TGPD bounded (standardised features, the attention KL averaged over its rows): the
#: MapKD rows of rounds 3-6, kept as an attempt row. TGPD at these weights cost the student 11 points (round 4)
METHOD_TGPD = {'msrd_teacher': 0.75, 'msrd_coach': 0.001, 'tgpd_teacher': 0.5, 'tgpd_coach': 0.01}
MAPKD_METHOD = {**METHOD_TGPD, 'tgpd_normalize': True, 'tgpd_kl_reduction': 'mean'}
#: the MapKD rows since round 7 (config/train/student_edge_cpu.yaml): both TGPD weights at a tenth, its gradient
#: then below the task loss's (bench_loss_balance); MSRD as the method. Round 6: MSRD + TGPD (T) at a tenth 45.0 /
#: 41.0 against MSRD only (T) 44.4 / 42.0 (seed 0; the coach's terms of the method are 0.001 and 0.001)
MAPKD = {**MAPKD_METHOD, 'tgpd_teacher': 0.05, 'tgpd_coach': 0.001}
#: the teacher's MSRD of the method alone (the attempts built on it; rounds 4-6's best row)
MSRD_T = {**MAPKD_METHOD, 'tgpd_teacher': 0.0, 'tgpd_coach': 0.0, 'msrd_coach': 0.0}
#: ERD's weight in the attempt rows: its gradient on the student is then about that of the discriminative loss
#: (var and dist at 0.1 each), a third of the task loss's (measured on 8 geo_train frames, trained baseline)
ERD_WEIGHT = 0.1
#: IRD's weight in the attempt rows: that of the discriminative and direction task terms it works with (0.1 each);
#: not yet balanced by gradient (bench_loss_balance reports IRD's parts once a teacher is trained)
IRD_WEIGHT = 0.1
#: the single-loss rows: the other loss's weights set to zero (overrides merge into the recipe's ``distill``)
SINGLE = {
    'TGPD only (T+C)': {**MAPKD, 'msrd_teacher': 0.0, 'msrd_coach': 0.0},
    'MSRD only (T+C)': {**MAPKD, 'tgpd_teacher': 0.0, 'tgpd_coach': 0.0},
}
#: tuning attempts (seed 0), each a recorded row. The method's TGPD as written (raw features, the attention KL summed
#: over its 1 + N rows) had a gradient about 200x the task loss's and destroyed the student (docs/training.md)
ATTEMPTS = {
    # rounds 3-6's MapKD rows: the method's weights, TGPD bounded
    "MapKD, the method's weights": dict(MAPKD_METHOD),
    "MapKD, method's TGPD (raw, summed KL)":
        {**METHOD_TGPD, 'tgpd_normalize': False, 'tgpd_kl_reduction': 'sum'},
    # a teacher that misses a class (the CPU teacher has no crossings) pulls the student's pixels of that class
    # towards its mistake; distil only the foreground pixels where the teacher's argmax is right (not in the method)
    'MapKD, MSRD where the teacher is right': {**MAPKD_METHOD, 'msrd_mask': 'correct'},
    # the teacher's terms alone (the coach's weights, 0.001 MSRD and 0.01 TGPD, are under 2 % of the teacher's): they
    # need only the teacher, so they run before the coach is trained and tell which term moves the student
    'MSRD only (T)': dict(MSRD_T),
    'TGPD only (T)': {**MAPKD_METHOD, 'msrd_teacher': 0.0, 'msrd_coach': 0.0, 'tgpd_coach': 0.0},
    # round 4: MSRD only (T) beat its baseline (44.0 against 40.7), TGPD only (T) lost 11 points; two ways to get
    # more from MSRD: twice its weight, and every pixel distilled (background included; not in the method)
    'MSRD only (T) x2': {**MSRD_T, 'msrd_teacher': 1.5},
    'MSRD only (T), every pixel': {**MSRD_T, 'msrd_mask': 'all'},
    # round 5: the frozen encoder layers in eval mode (their batch norm keeps the ImageNet statistics, no
    # stochastic depth), which lets the trainer cache their output (a quarter of a student step): does it change
    # the baseline, and the MSRD student?
    'baseline, frozen layers in eval mode': {**MSRD_T, 'msrd_teacher': 0.0},
    'MSRD only (T), frozen layers in eval mode': dict(MSRD_T),
    # round 6: TGPD (bounded) at a tenth of its weight, its gradient then below the task loss's instead of 2.5x it
    # (bench_loss_balance): on top of the teacher's MSRD, and in the full MapKD recipe with the coach's terms
    # ('MapKD, TGPD x0.1', both TGPD weights at a tenth, is the MapKD rows' recipe since round 7)
    'MSRD + TGPD (T), TGPD x0.1': {**MSRD_T, 'tgpd_teacher': 0.05},
    # round 6: the teacher's embedding and direction heads are worth about 4 mAP on the student's own segmentation
    # (bench_map_gap) and MSRD distils neither: the embedding's relations distilled too (ERD, not in the method)
    'MSRD + ERD (T)': {**MSRD_T, 'erd_teacher': ERD_WEIGHT},
    # round 10: ERD made the student worse, and MapKD's mAP falls further behind its baseline's with training (x0.99
    # at 1,200 steps, x0.94 at 2,400): the teacher's embedding and direction regressed pixel by pixel where its
    # segmentation is right (IRD, not in the method), on top of the MapKD recipe and of the teacher's MSRD alone
    'MapKD + IRD (T)': {**MAPKD, 'ird_teacher': IRD_WEIGHT},
    'MSRD + IRD (T)': {**MSRD_T, 'ird_teacher': IRD_WEIGHT},
    # round 14: the coach started from the teacher (its camera features now a step from the student's), its terms
    # at the teacher's weights instead of the method's 0.001: does a camera-only coach carry what the student can use?
    "MapKD, the coach's terms as the teacher's": {**MAPKD, 'msrd_coach': MAPKD['msrd_teacher'],
                                                  'tgpd_coach': MAPKD['tgpd_teacher']},
    # round 14: the student's Lite0 encoder started from the coach's trained camera encoder (``init_from``, below;
    # weight inheritance, not in the method), with the MapKD losses and without any (what the inheritance alone gives)
    'MapKD, encoder from the coach': dict(MAPKD),
    'baseline, encoder from the coach': {**MSRD_T, 'msrd_teacher': 0.0},
}
#: attempts that change the recipe beyond ``distill``: their other overrides. ``init_from: <role>`` starts the
#: student's image encoder from that frozen model's camera encoder (``ENCODER_INIT``, the path under ``--out``)
RECIPE_OVERRIDES = {name: {'freeze_eval': True} for name in ATTEMPTS if name.endswith('frozen layers in eval mode')}
RECIPE_OVERRIDES.update({name: {'init_from': 'coach'} for name in ATTEMPTS if name.endswith('encoder from the coach')})
#: a student's ``init`` from a teacher's or coach's weights: its ``camera.encoder`` (the same Lite0 layout as the edge
#: student's ``encoder``) copied, every other part of the frozen model skipped, the student's BEV neck left fresh
ENCODER_INIT = {'rename': {'camera.encoder.': 'encoder.'},
                'exclude': ['sim_lidar.', 'pillars.', 'sd.', 'conv_bev.', 'conv_up.', 'decoder.', 'hd.', 'hd_decoder.'],
                'allow_uninitialized': ['neck.']}
#: attempts (or single-loss rows) trained with every seed, paired with the baseline seeds like MapKD (seed 0 is the
#: row's own): round 4's MSRD only (T) was the one distillation row above its baseline (docs/training.md); round 15's
#: MSRD only (T+C) scored as the full MapKD recipe (45.8 / 44.1 against 45.0 / 43.1 over 3 seeds, seed 0)
SEEDED_ATTEMPTS = ('MSRD only (T)', 'MSRD only (T+C)')
#: the seeded groups of the summary: mean +- std over seeds, and each one's ratio to the baseline
GROUPS = ('baseline', 'MapKD', *SEEDED_ATTEMPTS)


def seeded_name(group: str, seed: int) -> str:
    """The row name of a seeded group's seed (a seeded attempt's seed 0 is the attempt's own row)."""
    return group if group in SEEDED_ATTEMPTS and seed == 0 else f'{group} seed {seed}'


def slug(name: str) -> str:
    return ''.join(ch if ch.isalnum() else '_' for ch in name).strip('_').lower()


def train(config: str, out: Path, overrides: dict, hook=None) -> dict:
    from mapkd_core.train.config import load_train_config
    from mapkd_core.train.trainer import Trainer
    cfg = load_train_config(config, overrides)
    trainer = Trainer(cfg, out, progress=True)
    trainer.step_hook = hook
    t0 = time.perf_counter()
    result = trainer.fit()
    took = time.perf_counter() - t0
    # the training time of the whole run, summed over its epochs (also across interruptions)
    seconds = sum(float(row['seconds']) for row in result['history'])
    print(f'{config} -> {out}: {result["epochs"]} epochs, {result["steps"]} steps, {seconds:.0f} s '
          f'({took:.0f} s this call)', flush=True)
    return {'weights': result['weights'], 'steps': result['steps'], 'train_seconds': seconds,
            'samples': result['steps'] * cfg.batch_size, 'config': config, 'overrides': overrides}


def ablation_dataroot(train_frames: int = TRAIN_FRAMES, val_frames: int = VAL_FRAMES) -> str:
    """The dataroot every row trains and is scored on: only the geo_train / geo_val frames a call reads, rendered
    (``synthetic_drives[...]``: the same bytes as those frames of the full drives, with their LiDAR history; about a
    fifth of the keyframes, so a fresh machine generates it in minutes instead of 35-72)."""
    return f'synthetic_drives[geo_train={train_frames},geo_val={val_frames}]'


def student_data_config(dataroot: str | None = None):
    """The data the students trained on: the baseline recipe's data config and its overrides (line widths), on
    ``dataroot`` (default: the recipe's, the full drives)."""
    from mapkd_core.config import DataConfig, from_dict, load_yaml, merge
    from mapkd_core.paths import config_path
    recipe = load_yaml(config_path('train/student_edge_cpu_baseline.yaml'))
    data = merge(load_yaml(config_path(recipe['data'])), recipe.get('data_overrides') or {})
    if dataroot:
        data = merge(data, {'dataset': {'dataroot': dataroot}})
    return from_dict(DataConfig, data)


def evaluate_run(run: dict, val_frames: int, workers: int, mini_frames: int = 0,
                 train_frames: int = TRAIN_FRAMES) -> dict:
    """geo_val and mini_val scores of a run's weights, cached in eval.json beside them (keyed by the weights' digest
    and the evaluation settings), on the call's dataroot (``ablation_dataroot``: the frames the full drives' ``limit``
    would pick). The frames are read through the training data cache (decoded images, rasters) and the encoders'
    prefixes from the prefix cache (``evaluate(prefix_cache=True)``): every row's frozen prefix is ImageNet's, so the
    first row evaluated computes it for the 381 frames and the others read it."""
    from mapkd_core.eval.evaluate import data_config_for, evaluate
    from mapkd_core.models.io import load_any
    from mapkd_core.train.cache import CachedMapDataset, file_digest

    weights = Path(run['weights'])
    key = {'weights': file_digest(weights), 'val_frames': val_frames, 'mini_frames': mini_frames}
    cached = weights.parent / 'eval.json'
    if cached.is_file():
        doc = json.loads(cached.read_text())
        if doc.get('key') == key:
            return doc['scores']
    data_cfg = student_data_config(ablation_dataroot(train_frames, val_frames))
    model = load_any(weights)
    scores = {}
    for split, limit in (('geo_val', val_frames or None), ('mini_val', mini_frames or None)):
        t0 = time.perf_counter()
        dataset = CachedMapDataset(data_config_for(model, data_cfg), split=split)
        rep = evaluate(model, data_cfg, split, batch_size=4, workers=workers, limit=limit, progress=False,
                       dataset=dataset, prefix_cache=True)
        scores[split] = {'samples': rep['samples'], 'iou': rep['iou'], 'miou': rep['miou'], 'ap': rep['ap'],
                         'map': rep['map'], 'model_ms_per_sample': rep['timing']['model_ms_per_sample'],
                         'eval_seconds': time.perf_counter() - t0}
        print(f'  {weights.parent.name} {split}: mIoU {100 * (rep["miou"] or 0):.2f}, '
              f'mAP {100 * (rep["map"] or 0):.2f} ({rep["samples"]} frames)', flush=True)
    cached.write_text(json.dumps({'key': key, 'scores': scores}, indent=2) + '\n')
    return scores


def finished_run(folder: Path) -> dict | None:
    """A run finished and evaluated by an earlier call (weights, progress.json and eval.json present), as ``train``
    and ``evaluate_run`` would return it; None otherwise."""
    weights = sorted(folder.glob('*.safetensors'))
    progress, scores = folder / 'progress.json', folder / 'eval.json'
    if len(weights) != 1 or not progress.is_file():
        return None
    epochs = folder / 'epochs.csv'
    seconds = 0.0
    if epochs.is_file():
        import csv
        with open(epochs, encoding='utf-8') as fh:
            seconds = sum(float(row['seconds']) for row in csv.DictReader(fh))
    run = {'weights': str(weights[0]), 'steps': json.loads(progress.read_text())['step'], 'train_seconds': seconds,
           'from_earlier_call': True}
    if scores.is_file():
        run['scores'] = json.loads(scores.read_text())['scores']
    return run


def plan(seeds: int, attempts: bool = True) -> list[tuple[str, str, str, dict]]:
    """(row name, run folder, recipe, overrides) in the order they run: the frozen models first, each followed by the
    row that fills its output cache (``FILLS``; no recipe, no model), then the students seed by seed (each MapKD seed right
    after its baseline seed), then the single-loss rows (the ablation proper ends there: ``attempts=False``) and the
    tuning attempts."""
    rows = [('HD prior (MAE)', 'hd_prior', 'config/train/hd_prior_cpu.yaml', {}),
            ('teacher (C+L+SD+HD)', 'teacher', 'config/train/teacher_cpu.yaml', {}),
            ('teacher outputs (cache)', 'frozen_teacher', None, {}),
            ('coach (C+simL+SD)', 'coach', 'config/train/coach_cpu.yaml', {}),
            ('coach outputs (cache)', 'frozen_coach', None, {})]
    for s in range(seeds):
        rows.append((f'baseline seed {s}', f'student_baseline_s{s}', 'config/train/student_edge_cpu_baseline.yaml',
                     {'seed': s}))
        rows.append((f'MapKD seed {s}', f'student_mapkd_s{s}', 'config/train/student_edge_cpu.yaml',
                     {'seed': s, 'distill': dict(MAPKD)}))
    for name, distill in {**SINGLE, **(ATTEMPTS if attempts else {})}.items():
        rows.append((name, f'student_{slug(name)}', 'config/train/student_edge_cpu.yaml',
                     {'seed': 0, 'distill': dict(distill), **RECIPE_OVERRIDES.get(name, {})}))
    for name in SEEDED_ATTEMPTS if attempts else ():
        for s in range(1, seeds):
            rows.append((seeded_name(name, s), f'student_{slug(name)}_s{s}', 'config/train/student_edge_cpu.yaml',
                         {'seed': s, 'distill': dict({**SINGLE, **ATTEMPTS}[name]),
                          **RECIPE_OVERRIDES.get(name, {})}))
    return rows


def needs(folder: str, over: dict) -> set[str]:
    """The rows a row waits for: the run folders whose weights it starts from or distils, and the rows that fill the
    output caches of the models it distils (``FILLS``). The coach distils the teacher (``coach_cpu.yaml``) and reads
    the entries the teacher's fill row writes (the same data and weights): it waits for them instead of computing
    the teacher's outputs itself while the fill row computes the same ones beside it (since round 17)."""
    from mapkd_core.train.recipes import INIT_ROLE
    if folder in FILLS:
        return {FILLS[folder]}
    if folder in INIT_ROLE:  # the teacher starts from the HD prior, the coach from the teacher and distils it
        from mapkd_core.train.recipes import recipe_dict
        distils = distilled_from(recipe_dict(f'{folder}_cpu').get('distill') or {})
        return {INIT_ROLE[folder]} | {fill for fill, role in FILLS.items() if role in distils}
    frozen = distilled_from(over.get('distill', {}))
    return (frozen | {fill for fill, role in FILLS.items() if role in frozen}
            | ({over['init_from']} if over.get('init_from') else set()))


def distilled_from(distill: dict) -> set[str]:
    """The frozen models ('teacher', 'coach') a row's ``distill`` overrides read, as the trainer decides it
    (``DistillConfig.uses_teacher`` / ``uses_coach``)."""
    from mapkd_core.train.config import DistillConfig
    d = DistillConfig(**distill)
    return {role for role, used in (('teacher', d.uses_teacher), ('coach', d.uses_coach)) if used}


def threads_for(rows: list[str], cpus: int) -> dict[str, int]:
    """Every core shared out among the rows running now (the first ones in order take the remainder; one each at
    least): a row running alone gets them all."""
    base, extra = divmod(cpus, max(1, len(rows)))
    return {f: max(1, base + (i < extra)) for i, f in enumerate(rows)}


def row_done(out: Path, folder: str) -> bool:
    """Whether a row is finished: a fill row's cache filled from the weights now under ``out``; the HD prior
    trained; any other row trained and evaluated."""
    if folder in FILLS:
        return fill_record(out, folder) is not None
    d = finished_run(out / folder)
    return d is not None and (folder == 'hd_prior' or 'scores' in d)


def fill_record(out: Path, folder: str) -> dict | None:
    """A fill row's record (``fill.json``: samples computed, seconds) when it was written for the weights of its
    model now under ``out``; None otherwise (never filled, or the model trained again since)."""
    from mapkd_core.train.cache import file_digest
    role = FILLS[folder]
    path, weights = out / folder / 'fill.json', out / role / f'{role}.safetensors'
    if not path.is_file() or not weights.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get('weights') == file_digest(weights) else None


def run_parallel(out: Path, jobs: int, child_args: list[str], seeds: int, only: tuple = (),
                 poll_s: float = 10.0) -> dict[str, int]:
    """Train the planned rows ``jobs`` at a time, each in its own process (``--only <folder>``), a row starting as
    soon as the rows it needs are finished (plan order first, so the HD prior -> teacher -> coach chain goes before
    the students that can wait). The cores are shared out among the rows running (``threads_for``): a row starts with
    its share and follows it (``<out>/<folder>.threads``, read by ``ThreadBudget``) when rows start or finish beside
    it, so a row left alone runs on every core. A fill row that a named row needs is run too. Each row's output goes
    to ``<out>/<folder>.log``. A row that fails is reported and the rows that need it are skipped; the others go on.
    Returns {folder: exit code} of the rows run now."""
    cpus = os.cpu_count() or 1
    planned = [(folder, over) for _, folder, _, over in plan(seeds)]
    named = {folder for folder, _ in planned if not only or folder in only}
    named |= {n for folder, over in planned if folder in named for n in needs(folder, over) if n in FILLS}
    rows = [(folder, over) for folder, over in planned if folder in named]
    finished = {folder for folder, _ in rows if row_done(out, folder)}
    # rows trained by an earlier call count as done; a needed row outside ``only`` must be finished already
    done = finished | {f for f, _ in planned if f not in named and finished_run(out / f) is not None}
    pending = [(f, o) for f, o in rows if f not in finished]
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    shares: dict[str, int] = {}
    codes: dict[str, int] = {}
    out.mkdir(parents=True, exist_ok=True)
    while pending or running:
        for folder, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[folder]
            (out / f'{folder}.threads').unlink(missing_ok=True)
            codes[folder] = proc.returncode
            if proc.returncode == 0:
                done.add(folder)
                print(f'[jobs] {folder} finished', flush=True)
            else:
                print(f'[jobs] {folder} FAILED (exit {proc.returncode}): see {out / (folder + ".log")}', flush=True)
        failed = {f for f, c in codes.items() if c != 0}
        for f, o in list(pending):
            missing = needs(f, o) - done
            if missing & failed or any(m not in done and m not in {p for p, _ in pending} and m not in running
                                       for m in missing):
                pending.remove((f, o))
                codes[f] = -1
                print(f'[jobs] {f} skipped: it needs {sorted(missing)}, which did not finish', flush=True)
        starting = []
        while len(running) + len(starting) < jobs:
            ready = [(f, o) for f, o in pending if needs(f, o) <= done]
            if not ready:
                break
            pending.remove(ready[0])
            starting.append(ready[0][0])
        now = threads_for([*running, *starting], cpus)
        for folder in [*running, *starting]:
            if shares.get(folder) != now[folder]:
                (out / f'{folder}.threads').write_text(f'{now[folder]}\n')
                shares[folder] = now[folder]
        for folder in starting:
            log = open(out / f'{folder}.log', 'a', encoding='utf-8')
            cmd = [sys.executable, '-m', 'benchmarks.bench_distillation', *child_args, '--only', folder, '--child']
            env = {**os.environ, 'OMP_NUM_THREADS': str(now[folder]), 'MKL_NUM_THREADS': str(now[folder])}
            running[folder] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            print(f'[jobs] {folder} started ({now[folder]} thread{"s" if now[folder] > 1 else ""})', flush=True)
        if running:
            time.sleep(poll_s)
    return codes


class ThreadBudget:
    """A row's share of the cores and the seconds it ran at each share. Called after every training step and filled
    batch (``Trainer.step_hook``) and around each evaluation: it sets torch's thread count to the number in
    ``path`` (written by ``run_parallel`` as rows start and finish beside this one; read at most every ``poll_s``)
    and adds the time since its last call to the current thread count's seconds. ``save`` adds them to the row's
    ``bench_row.json`` (``row_work`` reads it: the estimate's measure of a row)."""

    def __init__(self, path: Path | None = None, poll_s: float = 5.0):
        import torch
        self.torch = torch
        self.path, self.poll_s = path, poll_s
        self.threads = torch.get_num_threads()
        self.seconds: dict[int, float] = {}
        self._last = self._read = time.perf_counter()
        self._follow()

    def _follow(self) -> None:
        try:
            wanted = int(self.path.read_text()) if self.path is not None else self.threads
        except (OSError, ValueError):  # no scheduler beside this row, or the file half-written: keep the threads
            return
        if wanted >= 1 and wanted != self.threads:
            self.torch.set_num_threads(wanted)
            self.threads = wanted

    def __call__(self) -> None:
        now = time.perf_counter()
        self.seconds[self.threads] = self.seconds.get(self.threads, 0.0) + now - self._last
        self._last = now
        if now - self._read >= self.poll_s:
            self._read = now
            self._follow()

    def save(self, folder: Path) -> dict:
        self()
        path = folder / 'bench_row.json'
        doc = json.loads(path.read_text()) if path.is_file() else {'thread_seconds': {}}
        for t, sec in self.seconds.items():
            doc['thread_seconds'][str(t)] = doc['thread_seconds'].get(str(t), 0.0) + sec
        self.seconds = {}
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + '\n')
        return doc


def speed(threads: float) -> float:
    """A row's speed on ``threads`` threads relative to one (``THREAD_EXPONENT``)."""
    return threads ** THREAD_EXPONENT


def row_work(out: Path, folder: str) -> float | None:
    """A finished row's work in one-thread seconds: the seconds it ran at each thread count (``bench_row.json``),
    each weighted by that count's ``speed``; for a row of an earlier version without that record, its training
    (summed over epochs) and evaluation seconds, as if on one thread. None if unfinished."""
    if not row_done(out, folder):
        return None
    path = out / folder / 'bench_row.json'
    if path.is_file():
        return sum(sec * speed(int(t)) for t, sec in json.loads(path.read_text())['thread_seconds'].items())
    if folder in FILLS:
        return fill_record(out, folder)['seconds']
    done = finished_run(out / folder)
    return done['train_seconds'] + sum(s.get('eval_seconds', 0.0) for s in done.get('scores', {}).values())


def estimate(out: Path, seeds: int, jobs: int, attempts: bool = False, cpus: int | None = None) -> dict:
    """The wall time a ``--jobs`` call would take over the ablation (with ``attempts``, the tuning rows too), from
    the work each row measured in ``out`` (``row_work``): ``run_parallel``'s schedule (plan order, a row starting
    when a slot is free and the rows it needs are done, the ``cpus`` shared out among the rows running) replayed,
    each row advancing at the ``speed`` of its share. A row not trained in ``out`` takes the median of the trained
    student rows that need the same rows, or else a part of them (a MapKD row: the students of the teacher alone); a
    frozen-model or fill row, or a row with no student to stand in for it, is an error. The rows' work was measured
    under whatever else ran beside them: the estimate is as loaded as they were."""
    cpus = cpus or os.cpu_count() or 1
    rows = [(folder, over) for _, folder, _, over in plan(seeds, attempts)]
    # every planned row's folder read once; the stand-ins are all trained student rows, tuning attempts included
    measured = {g: v for _, g, _, _ in plan(seeds) if (v := row_work(out, g)) is not None}
    students = [(measured[g], needs(g, p)) for _, g, _, p in plan(seeds) if g.startswith('student') and g in measured]
    work = dict(measured)
    for f, o in rows:
        if f in measured:
            continue
        alike = (sorted(v for v, n in students if n == needs(f, o))
                 or sorted(v for v, n in students if n and n < needs(f, o)))
        if not f.startswith('student') or not alike:
            raise ValueError(f'{out / f}: not trained and evaluated, and no trained row stands in for it')
        work[f] = alike[len(alike) // 2]
    clock, left, done, pending, timeline = 0.0, {}, set(), list(rows), {}
    while pending or left:
        while len(left) < jobs:
            ready = [(f, o) for f, o in pending if needs(f, o) <= done]
            if not ready:
                break
            f = ready[0][0]
            pending.remove(ready[0])
            left[f] = work[f]
            timeline[f] = {'row': f, 'start_min': clock / 60, 'measured': f in measured}
        if not left:  # something pending needs a row that is not planned
            raise ValueError(f'rows that can never start: {[f for f, _ in pending]}')
        rate = {f: speed(t) for f, t in threads_for(list(left), cpus).items()}
        first = min(left, key=lambda f: left[f] / rate[f])
        step = left[first] / rate[first]
        clock += step
        for f in list(left):
            left[f] -= rate[f] * step
            if f == first or left[f] <= 1e-9:
                del left[f]
                done.add(f)
                timeline[f]['minutes'] = clock / 60 - timeline[f]['start_min']
    return {'out': str(out), 'jobs': jobs, 'cpus': cpus, 'attempts': attempts, 'wall_minutes': clock / 60,
            'rows': list(timeline.values())}


def row_overrides(out: Path, folder: str, over: dict, train_frames: int, val_frames: int, workers: int) -> dict:
    """A planned row's overrides of its recipe as this call trains it: the stage's epochs and learning-rate step,
    the call's frames and dataroot, the weights it starts from and distils, all under ``out``. No validation inside
    the training (``evaluate_run`` scores every camera row right after; the HD prior keeps its reconstruction IoU)."""
    from mapkd_core.train.recipes import INIT_ROLE
    stage = 'student' if folder.startswith('student') else ('hd_prior' if folder == 'hd_prior' else folder)
    over = {**over, 'epochs': EPOCHS[stage], 'train_limit': train_frames, 'workers': workers,
            'lr_step': LR_STEP.get(stage, EPOCHS[stage]), 'val_every': EPOCHS[stage] if stage == 'hd_prior' else 0,
            'data_overrides': {'dataset': {'dataroot': ablation_dataroot(train_frames, val_frames)}}}
    if stage in INIT_ROLE:  # the recipe's init (HD prior -> teacher, teacher -> coach) from this call's weights
        role = INIT_ROLE[stage]
        over['init'] = {'path': str(out / role / f'{role}.safetensors')}
    if over.get('init_from'):
        role = over.pop('init_from')
        over['init'] = {**ENCODER_INIT, 'path': str(out / role / f'{role}.safetensors')}
    frozen = distilled_from(over.get('distill', {}))
    if stage == 'coach' or 'teacher' in frozen:
        over['teacher'] = str(out / 'teacher' / 'teacher.safetensors')
    if 'coach' in frozen:
        over['coach'] = str(out / 'coach' / 'coach.safetensors')
    return over


def fill(out: Path, folder: str, train_frames: int, val_frames: int, workers: int, hook=None) -> dict:
    """A fill row: the output cache of its frozen model (``FILLS``) over the students' training frames, filled by
    the trainer of a student that distils that model alone (the same data and weights, so the same cache entries as
    every student row), and its record ``fill.json`` (the model's weights digest, samples computed, seconds)."""
    from mapkd_core.train.cache import file_digest
    from mapkd_core.train.config import load_train_config
    from mapkd_core.train.trainer import Trainer
    role = FILLS[folder]
    distill = {**{k: 0.0 for k in MAPKD if k.startswith(('msrd_', 'tgpd_')) and k[5:] in ('teacher', 'coach')},
               f'msrd_{role}': MAPKD_METHOD['msrd_teacher']}
    over = row_overrides(out, 'student_fill', {'seed': 0, 'distill': distill}, train_frames, val_frames, workers)
    trainer = Trainer(load_train_config('config/train/student_edge_cpu.yaml', over), out / folder, progress=True)
    trainer.step_hook = hook
    t0 = time.perf_counter()
    samples = trainer.fill_frozen_caches((role,))
    record = {'role': role, 'weights': file_digest(out / role / f'{role}.safetensors'), 'samples': samples,
              'of': len(trainer.train_set), 'seconds': time.perf_counter() - t0}
    (out / folder).mkdir(parents=True, exist_ok=True)
    (out / folder / 'fill.json').write_text(json.dumps(record, indent=2) + '\n')
    print(f'{role} outputs -> cache: {samples} of {record["of"]} samples computed, {record["seconds"]:.0f} s',
          flush=True)
    return record


def run(out: Path, seeds: int, val_frames: int, workers: int, train_frames: int = TRAIN_FRAMES,
        mini_frames: int = 0, only: tuple = (), write: bool = True) -> dict:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    t_start = time.perf_counter()
    runs: dict[str, dict] = {}
    for name, folder, recipe, over in plan(seeds):
        if only and folder not in only:
            done = finished_run(out / folder)  # trained by an earlier call: still part of the summary
            if done is not None and folder not in FILLS:
                runs[name] = done
            continue
        # the row's share of the cores when a --jobs call runs it beside others (none when run alone)
        budget = ThreadBudget(out / f'{folder}.threads')
        if folder in FILLS:
            if fill_record(out, folder) is None:
                fill(out, folder, train_frames, val_frames, workers, hook=budget)
                budget.save(out / folder)
            continue
        runs[name] = train(recipe, out / folder, row_overrides(out, folder, over, train_frames, val_frames, workers),
                           hook=budget)
        if folder != 'hd_prior':  # the MAE reconstructs maps from masked maps: no camera model to score
            budget()
            runs[name]['scores'] = evaluate_run(runs[name], val_frames, workers, mini_frames, train_frames)
        budget.save(out / folder)
        if write:
            partial = summarize(runs, seeds, train_frames)
            partial.update({'complete': False, 'seconds_so_far': time.perf_counter() - t_start})
            write_result('distillation', partial)
    # rows read at the start from another call's folders may have finished (and been scored) since: read them again
    for name, folder, *_ in plan(seeds):
        if runs.get(name, {}).get('from_earlier_call') and 'scores' not in runs[name]:
            runs[name] = finished_run(out / folder) or runs[name]
    payload = summarize(runs, seeds, train_frames)
    if not write:  # a row of a parallel call: its parent writes the summary
        return payload
    # complete: every row of the ablation proper (the tuning attempts are extra) trained and evaluated, also by
    # earlier calls, not just the ones of this call
    payload['complete'] = all(name in runs and (name == 'HD prior (MAE)' or 'scores' in runs[name])
                              for name, folder, *_ in plan(seeds, attempts=False) if folder not in FILLS)
    payload['seconds_this_call'] = time.perf_counter() - t_start
    path = write_result('distillation', payload)
    print(table(payload))
    png = chart(payload, path.with_suffix('.png'))
    print(f'-> {path}, {png}')
    return payload


def _mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {'mean': mean, 'std': std, 'n': n, 'values': values}


def summarize(runs: dict, seeds: int, train_frames: int) -> dict:
    """The JSON payload: every run, the mean +- std of the seeded rows on each split, and the per-seed pairs."""
    from mapkd_core.constants import CLASS_NAMES
    groups: dict[str, dict] = {}
    for split in ('geo_val', 'mini_val'):
        g = groups.setdefault(split, {})
        for group in GROUPS:
            members = [runs[seeded_name(group, s)]['scores'][split] for s in range(seeds)
                       if 'scores' in runs.get(seeded_name(group, s), {})]
            if not members:
                continue
            g[group] = {'miou': _mean_std([m['miou'] for m in members]), 'map': _mean_std([m['map'] for m in members]),
                        'iou': {c: _mean_std([m['iou'][c] for m in members]) for c in CLASS_NAMES[1:]}}
        # each distilled group against the baseline: the per-seed pairs and the ratio of the means
        g['versus_baseline'] = {}
        for group in GROUPS[1:]:
            pairs = []
            for s in range(seeds):
                b, k = runs.get(seeded_name('baseline', s), {}), runs.get(seeded_name(group, s), {})
                if 'scores' in b and 'scores' in k:
                    bs, ks = b['scores'][split], k['scores'][split]
                    pairs.append({'seed': s, 'baseline_miou': bs['miou'], 'miou': ks['miou'],
                                  'baseline_map': bs['map'], 'map': ks['map'],
                                  'above_baseline_miou': ks['miou'] > bs['miou']})
            vs = {'pairs': pairs}
            base = g.get('baseline')
            if base and group in g and base['miou']['mean'] > 0 and base['map']['mean'] > 0:
                vs['ratio_miou'] = g[group]['miou']['mean'] / base['miou']['mean']
                vs['ratio_map'] = g[group]['map']['mean'] / base['map']['mean']
            g['versus_baseline'][group] = vs
    return {'data': 'synthetic drives: geo_train -> geo_val and the real-track mini_val; CPU-size models '
                    '(128x352 images, 0.3 m grid, ImageNet Lite0)',
            'train_frames': train_frames, 'epochs': EPOCHS, 'seeds': seeds, 'runs': runs, 'summary': groups}


def _row(name: str, r: dict, delta=None) -> str:
    def pct(v):
        return '-' if v is None else f'{100 * v:.1f}'
    iou = r['iou']
    return (f'| {name} | {pct(iou["divider"])} | {pct(iou["ped_crossing"])} | {pct(iou["boundary"])} | '
            f'{pct(r["miou"])} | {pct(r["map"])} |')


def table(payload: dict) -> str:
    """Markdown: geo_val and mini_val per run, then the mean +- std rows."""
    out = []
    for split in ('geo_val', 'mini_val'):
        out += [f'**{split}**', '', '| model | divider | ped crossing | boundary | mIoU | mAP |',
                '| --- | --- | --- | --- | --- | --- |']
        for name, r in payload['runs'].items():
            if 'scores' in r:
                out.append(_row(name, r['scores'][split]))
        g = payload['summary'].get(split, {})
        for group in GROUPS:
            if group in g:
                row = g[group]

                n = row['miou']['n']

                def ms(d):  # one seed has no spread: its value alone
                    return f'{100 * d["mean"]:.1f}' + (f' +- {100 * d["std"]:.1f}' if n > 1 else '')
                label = f'mean +- std of {_seeds(n)}' if n > 1 else _seeds(n)
                out.append(f'| **{group}, {label}** | {ms(row["iou"]["divider"])} | '
                           f'{ms(row["iou"]["ped_crossing"])} | {ms(row["iou"]["boundary"])} | {ms(row["miou"])} | '
                           f'{ms(row["map"])} |')
        for group, vs in g.get('versus_baseline', {}).items():
            if 'ratio_miou' in vs:
                above = sum(p['above_baseline_miou'] for p in vs['pairs'])
                out.append('')
                out.append(f'{group} / baseline: mIoU x{vs["ratio_miou"]:.2f}, mAP x{vs["ratio_map"]:.2f}; above its '
                           f'paired baseline seed in {above} of {_seeds(len(vs["pairs"]))}')
        out.append('')
    return '\n'.join(out)


def _seeds(n: int) -> str:
    return f'{n} seed' if n == 1 else f'{n} seeds'


def chart(payload: dict, path: Path) -> Path:
    """A bar chart of mIoU and mAP per run on both splits (error bars: std over seeds for the seeded rows)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = payload['runs']
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, split in zip(axes, ('geo_val', 'mini_val')):
        names, miou, miou_err, mAP, map_err = [], [], [], [], []
        g = payload['summary'].get(split, {})
        for name, r in runs.items():
            if 'scores' not in r or ' seed ' in name or name in SEEDED_ATTEMPTS:
                continue
            names.append(name)
            miou.append(100 * r['scores'][split]['miou'])
            mAP.append(100 * (r['scores'][split]['map'] or 0))
            miou_err.append(0)
            map_err.append(0)
        for group in GROUPS:
            if group in g:
                names.append(f'{group} ({_seeds(g[group]["miou"]["n"])})')
                miou.append(100 * g[group]['miou']['mean'])
                miou_err.append(100 * g[group]['miou']['std'])
                mAP.append(100 * g[group]['map']['mean'])
                map_err.append(100 * g[group]['map']['std'])
        x = list(range(len(names)))
        ax.bar([i - 0.2 for i in x], miou, 0.4, yerr=miou_err, capsize=3, label='mIoU')
        ax.bar([i + 0.2 for i in x], mAP, 0.4, yerr=map_err, capsize=3, label='mAP')
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha='right', fontsize=8)
        ax.set_title(split)
        ax.grid(axis='y', alpha=0.3)
    axes[0].set_ylabel('%')
    axes[0].legend()
    fig.suptitle(f'MapKD ablation, CPU size ({payload["train_frames"]} geo_train frames)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/ablation_cpu')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--val-frames', type=int, default=VAL_FRAMES,
                   help='geo_val frames evenly spread over the split (0 = all 1,032)')
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--train-frames', type=int, default=TRAIN_FRAMES,
                   help='geo_train frames every stage trains on (a small number: a quick check of the pipeline)')
    p.add_argument('--mini-frames', type=int, default=0, help='mini_val frames to evaluate (0 = all 81)')
    p.add_argument('--only', default='', help='comma-separated run folders to train / evaluate now (e.g. '
                   'student_baseline_s0,student_baseline_s1; default: the ablation proper, in order, and with '
                   '--attempts the tuning attempts after it)')
    p.add_argument('--jobs', type=int, default=1,
                   help='rows trained at once, each in its own process with cpus / jobs torch threads, as soon as '
                   'the runs they need are finished (2 on a 2-core machine: the teacher chain beside the baselines)')
    p.add_argument('--attempts', action='store_true', help='also the tuning attempts (by default only the '
                   'ablation proper: HD prior, teacher, coach, baseline and MapKD seeds, single-loss rows)')
    p.add_argument('--estimate', action='store_true', help='train nothing: the wall time of this call from the '
                   'seconds each row measured under --out (rows not trained there: the median of alike students)')
    p.add_argument('--summary', action='store_true', help='train nothing: the JSON, table and chart of the rows '
                   'already trained and evaluated under --out')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)  # one row of a --jobs call
    args = p.parse_args(argv)
    only = tuple(f for f in args.only.split(',') if f)
    unknown = set(only) - {folder for _, folder, _, _ in plan(args.seeds)}
    if unknown:
        p.error(f'--only: unknown run folders {sorted(unknown)}; planned: '
                f'{", ".join(folder for _, folder, _, _ in plan(args.seeds))}')
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    if args.estimate:
        try:
            est = estimate(Path(args.out), args.seeds, args.jobs, args.attempts)
        except ValueError as exc:
            p.error(str(exc))
        for r in est['rows']:
            print(f'{r["start_min"]:6.0f} min  {r["row"]:<45} {r["minutes"]:5.0f} min'
                  f'{"" if r["measured"] else "  (not trained there: median of alike students)"}')
        print(f'wall time with --jobs {args.jobs} on {est["cpus"]} cores: {est["wall_minutes"]:.0f} min')
        return
    def summary():  # '-' names no row: every row is read back from its folder, none is trained or evaluated
        run(Path(args.out), args.seeds, args.val_frames, args.workers, args.train_frames, args.mini_frames,
            only=('-',))

    if args.summary:
        if not Path(args.out).is_dir():
            p.error(f'--summary: no run folder {args.out}')
        summary()
        return
    only = only or tuple(folder for _, folder, _, _ in plan(args.seeds, args.attempts))
    if args.jobs > 1 and not args.child:
        child_args = ['--out', args.out, '--seeds', str(args.seeds), '--val-frames', str(args.val_frames),
                      '--workers', str(args.workers), '--train-frames', str(args.train_frames),
                      '--mini-frames', str(args.mini_frames)]
        codes = run_parallel(Path(args.out), args.jobs, child_args, args.seeds, only)
        summary()  # over every finished row
        bad = sorted(f for f, c in codes.items() if c != 0)
        if bad:
            print(f'not finished: {", ".join(bad)} (logs under {args.out})')
            sys.exit(1)
        return
    run(Path(args.out), args.seeds, args.val_frames, args.workers, args.train_frames, args.mini_frames, only,
        write=not args.child)


if __name__ == '__main__':
    main()
