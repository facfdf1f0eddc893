"""How strongly each distillation term pulls on the student: gradient norms of the task loss, MSRD and TGPD (the
method's form and the bounded one), and of IRD's two parts (unweighted, beside the weighted discriminative loss
they work with), with respect to the student's trainable parameters (a measurement, not a test).

On a few ``geo_train`` batches of the CPU recipes, with a trained student and the frozen teacher and coach of the
ablation (``benchmarks/bench_distillation.py``), it reports per batch and as medians: each term's value and the L2 norm
of its gradient, and each norm relative to the task loss's. The method's TGPD (raw features, the attention KL summed
over its 1 + N rows, ``batchmean``) is compared with the bounded TGPD of the CPU recipes (standardised features, KL
averaged over the rows); the KL and the MSE parts are reported separately. Both TGPD forms use the same projections.

It also reports where MSRD pulls (``pull``): at the GT pixels of each class (the pixels MSRD distils), the student's
and the teacher's mean probability of that class and of the background, how often each one's argmax is the GT class,
and the mean of MSRD's gradient on the student's logit of the class (sigmoid(student) - sigmoid(teacher): positive
means MSRD pushes the student's own class down at its own pixels, i.e. fewer pixels of the class).
The coach is optional: without ``<runs>/coach`` its terms are left out.

    python -m benchmarks.bench_loss_balance --runs runs/ablation_cpu [--student student_baseline_s0] [--batches 4]

Needs the ablation's trained runs (``hd_prior`` is not used): ``make bench`` skips it unless BENCH_ALL=1.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from benchmarks.harness import write_result

#: needs the trained runs of the distillation ablation
LONG = True


def grad_norm(loss, params) -> float:
    import torch
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(runs: Path, student: str, batches: int, seed: int = 0) -> dict:
    import itertools

    import torch
    from safetensors.torch import load_file

    from mapkd_core.distill.losses import instance_response_loss
    from mapkd_core.distill.tgpd import TgpdLoss
    from mapkd_core.errors import WeightsNotFoundError
    from mapkd_core.train.config import load_train_config
    from mapkd_core.train.trainer import Trainer

    paths = {'teacher': runs / 'teacher' / 'teacher.safetensors', 'coach': runs / 'coach' / 'coach.safetensors',
             'student': runs / student / 'student_edge.safetensors'}
    with_coach = paths['coach'].is_file()
    if not with_coach:
        del paths['coach']
    for role, p in paths.items():
        if not p.is_file():
            raise WeightsNotFoundError(f'{role} weights not found: {p} (train them with benchmarks.bench_distillation '
                                       f'--out {runs})')
    coach_w = {'msrd_coach': 0.001, 'tgpd_coach': 0.01} if with_coach else {'msrd_coach': 0.0, 'tgpd_coach': 0.0}
    over = {'seed': seed, 'train_limit': 1200, 'workers': 0, 'val_every': 0, 'teacher': str(paths['teacher']),
            'coach': str(paths['coach']) if with_coach else None,
            # ird_teacher only makes the trainer's teacher cache keep the embedding and direction heads
            'distill': {'msrd_teacher': 0.75, 'tgpd_teacher': 0.5, 'ird_teacher': 0.1, **coach_w}}
    cfg = load_train_config('config/train/student_edge_cpu.yaml', over)
    import tempfile
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix='mapkd-loss-balance-')), progress=False)
    model = trainer.stage.model
    model.load_state_dict(load_file(str(paths['student'])), strict=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bev = model.cfg.bev_channels
    h, w = model.cfg.grid.shape
    torch.manual_seed(seed)
    forms = {'method': TgpdLoss(channels=bev, feature_hw=(h // 8, w // 8)),
             'bounded': TgpdLoss(channels=bev, feature_hw=(h // 8, w // 8), normalize=True, kl_reduction='mean')}
    forms['bounded'].load_state_dict(forms['method'].state_dict())
    module = trainer.module
    rows, pulls = [], []
    for batch in itertools.islice(trainer._loader(0), batches):
        teacher, coach = trainer.frozen_outputs(batch)
        out = model.forward_batch(batch)
        pulls.append(msrd_pull(out.semantic.detach(), teacher.semantic, batch['semantic']))
        row = {}
        terms = module.task(out, batch)
        task = terms['total']
        row['task'] = {'value': task.item(), 'grad': grad_norm(task, params)}
        disc = module.task.weights['var'] * terms['var'] + module.task.weights['dist'] * terms['dist']
        row['discriminative (weighted)'] = {'value': disc.item(), 'grad': grad_norm(disc, params)}
        ird = instance_response_loss(out.embedding, out.direction, teacher.embedding, teacher.direction,
                                     teacher.semantic, batch['semantic'])
        for part, value in ird.items():
            row[f'ird teacher: {part}'] = {'value': value.item(), 'grad': grad_norm(value, params)}
        msrd = module.msrd(out.semantic, batch['semantic'], teacher_logits=teacher.semantic,
                           coach_logits=coach.semantic if coach is not None else None)['msrd']
        row['msrd (weighted)'] = {'value': msrd.item(), 'grad': grad_norm(msrd, params)}
        for form, tg in forms.items():
            for role, target in (('teacher', teacher.bev), ('coach', coach.bev if coach is not None else None)):
                if target is None:
                    continue
                kl, mse = tg.parts(out.bev, target)
                row[f'tgpd {form} {role}: kl'] = {'value': kl.item(), 'grad': grad_norm(kl, params)}
                row[f'tgpd {form} {role}: mse'] = {'value': mse.item(), 'grad': grad_norm(mse, params)}
            total = tg(out.bev, teacher.bev, coach.bev if coach is not None else None)['tgpd']
            row[f'tgpd {form} (weighted)'] = {'value': total.item(), 'grad': grad_norm(total, params)}
        for v in row.values():
            v['grad_vs_task'] = v['grad'] / row['task']['grad']
        rows.append(row)
    median = {k: {m: statistics.median(r[k][m] for r in rows) for m in ('value', 'grad', 'grad_vs_task')}
              for k in rows[0]}
    return {'runs': str(runs), 'student': student, 'batches': batches, 'coach': with_coach, 'median': median,
            'pull': merge_pulls(pulls), 'per_batch': rows}


def msrd_pull(student_logits, teacher_logits, gt) -> dict:
    """Sums over the GT pixels of each foreground class (see the module doc) of one batch: pixel count, the
    student's and teacher's sigmoid of the class and of the background, argmax hits, and the gradient sign term."""
    import torch
    from mapkd_core.constants import CLASS_NAMES
    s, t = torch.sigmoid(student_logits.float()), torch.sigmoid(teacher_logits.float())
    s_arg, t_arg = student_logits.argmax(1), teacher_logits.argmax(1)
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        if c == 0:
            continue
        m = gt[:, c] > 0
        out[name] = {'pixels': int(m.sum()), 'student_p': float(s[:, c][m].sum()), 'teacher_p': float(t[:, c][m].sum()),
                     'student_p_background': float(s[:, 0][m].sum()), 'teacher_p_background': float(t[:, 0][m].sum()),
                     'student_hit': int((s_arg[m] == c).sum()), 'teacher_hit': int((t_arg[m] == c).sum()),
                     'msrd_grad': float((s[:, c] - t[:, c])[m].sum())}
    return out


def merge_pulls(pulls: list[dict]) -> dict:
    """Means over all batches' pixels of :func:`msrd_pull`'s sums."""
    merged = {}
    for name in pulls[0]:
        n = sum(p[name]['pixels'] for p in pulls)
        merged[name] = {'pixels': n, **{k: (sum(p[name][k] for p in pulls) / n if n else None)
                                        for k in pulls[0][name] if k != 'pixels'}}
    return merged


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', default='runs/ablation_cpu', help='the ablation folder (bench_distillation --out)')
    p.add_argument('--student', default='student_baseline_s0', help='the run folder of the student to probe')
    p.add_argument('--batches', type=int, default=4)
    args = p.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    payload = measure(Path(args.runs), args.student, args.batches)
    path = write_result('loss_balance', payload)
    width = max(len(k) for k in payload['median'])
    print(f'{"term":<{width}}  value    grad norm  x task')
    for k, v in payload['median'].items():
        print(f'{k:<{width}}  {v["value"]:7.3f}  {v["grad"]:9.3f}  {v["grad_vs_task"]:7.1f}')
    print('at the GT pixels of each class: p(class) student / teacher, p(background) student / teacher, '
          'argmax right student / teacher, mean MSRD gradient on the class logit')
    for name, v in payload['pull'].items():
        if v['pixels']:
            print(f'{name:<14} {v["student_p"]:.3f} / {v["teacher_p"]:.3f}   {v["student_p_background"]:.3f} / '
                  f'{v["teacher_p_background"]:.3f}   {v["student_hit"]:.3f} / {v["teacher_hit"]:.3f}   '
                  f'{v["msrd_grad"]:+.3f}')
    print(f'-> {path}')
    return payload


if __name__ == '__main__':
    main()
