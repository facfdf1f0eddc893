"""The ablation's scheduler (``bench_distillation --jobs``): rows start when what they need is trained, the cores
shared out among the rows running, and a failed row stops only the rows that need it. The training itself is faked here (the
real rows take hours); the rows' processes are stand-ins that record their start and exit with a chosen code."""
from __future__ import annotations

import json

import pytest

import benchmarks.bench_distillation as bd


class FakeProc:
    """A finished-at-once stand-in for a row's process: exit code from ``codes``, start recorded in ``log``."""

    def __init__(self, cmd, stdout=None, stderr=None, env=None, *, codes, log):
        self.folder = cmd[cmd.index('--only') + 1]
        assert '--child' in cmd
        log.append((self.folder, env['OMP_NUM_THREADS']))
        self.returncode = codes.get(self.folder, 0)

    def poll(self):
        return self.returncode


def _run(monkeypatch, tmp_path, codes=None, jobs=2, cpus=2, only=()):
    started: list[tuple[str, str]] = []
    monkeypatch.setattr(bd.subprocess, 'Popen', lambda cmd, **kw: FakeProc(cmd, **kw, codes=codes or {}, log=started))
    monkeypatch.setattr(bd.os, 'cpu_count', lambda: cpus)
    result = bd.run_parallel(tmp_path / 'out', jobs, ['--out', str(tmp_path / 'out')], seeds=2, only=only,
                             poll_s=0.0)
    return started, result


def test_needs_follow_the_distillation_weights():
    rows = {folder: over for _, folder, _, over in bd.plan(3)}
    assert bd.needs('teacher', rows['teacher']) == {'hd_prior'}
    assert bd.needs('coach', rows['coach']) == {'teacher', 'frozen_teacher'}  # it distils the teacher
    assert bd.needs('student_baseline_s1', rows['student_baseline_s1']) == set()
    # a distilling row waits for the model and for the row that fills the model's output cache
    assert bd.needs('frozen_teacher', rows['frozen_teacher']) == {'teacher'}
    assert bd.needs('frozen_coach', rows['frozen_coach']) == {'coach'}
    assert bd.needs('student_mapkd_s0', rows['student_mapkd_s0']) == {'teacher', 'coach', 'frozen_teacher',
                                                                      'frozen_coach'}
    assert bd.needs('student_msrd_only__t', rows['student_msrd_only__t']) == {'teacher', 'frozen_teacher'}
    # each weight on the teacher's or the coach's outputs alone (ERD and IRD included) makes a row wait for that
    # model: a row started before it would fail on a missing weights file
    for key in ('msrd_teacher', 'tgpd_teacher', 'erd_teacher', 'ird_teacher', 'msrd_coach', 'tgpd_coach'):
        role = key.rsplit('_', 1)[1]
        assert bd.needs('student_x', {'distill': {key: 0.1}}) == {role, f'frozen_{role}'}, key
    assert bd.needs('student_x', {'distill': {'msrd_mask': 'correct', 'msrd_teacher': 0.0}}) == set()


def test_rows_start_after_what_they_need_with_their_share_of_the_cores(monkeypatch, tmp_path):
    started, codes = _run(monkeypatch, tmp_path, cpus=4)
    order = [f for f, _ in started]
    assert set(order) == {folder for _, folder, _, _ in bd.plan(2)} and all(c == 0 for c in codes.values())
    for _, folder, _, over in bd.plan(2):
        for need in bd.needs(folder, over):
            assert order.index(need) < order.index(folder), (need, folder)
    # the ablation proper (no tuning attempts to run beside the chain)
    started, codes = _run(monkeypatch, tmp_path / 'proper', cpus=4,
                          only=tuple(folder for _, folder, _, _ in bd.plan(2, attempts=False)))
    order = [f for f, _ in started]
    threads = dict(started)
    # started together, two rows share the 4 cores; the coach's fill row starts alone (everything left needs it)
    assert threads['hd_prior'] == threads['student_baseline_s0'] == '2' and threads['frozen_coach'] == '4'
    assert not list((tmp_path / 'proper' / 'out').glob('*.threads'))  # a finished row's share is taken back
    # the chain first, the baselines beside it
    assert order[:2] == ['hd_prior', 'student_baseline_s0']


def test_a_failed_row_skips_only_the_rows_that_need_it(monkeypatch, tmp_path):
    started, codes = _run(monkeypatch, tmp_path, codes={'coach': 3})
    order = [f for f, _ in started]
    assert codes['coach'] == 3
    assert 'student_mapkd_s0' not in order and codes['student_mapkd_s0'] == -1  # needs the coach
    assert 'student_msrd_only__t' in order and codes['student_msrd_only__t'] == 0  # needs the teacher only
    assert 'student_baseline_s1' in order


def test_only_runs_the_named_rows_and_skips_those_whose_inputs_are_missing(monkeypatch, tmp_path):
    started, codes = _run(monkeypatch, tmp_path, only=('student_baseline_s0', 'student_msrd_only__t'))
    assert [f for f, _ in started] == ['student_baseline_s0']
    assert codes['student_msrd_only__t'] == -1  # no trained teacher under --out


def _scores(miou: float, map_: float) -> dict:
    split = {'miou': miou, 'map': map_, 'iou': {'background': 0.8, 'divider': miou, 'ped_crossing': miou,
                                                'boundary': miou}}
    return {'scores': {'geo_val': split, 'mini_val': split}}


def test_seeded_attempts_are_planned_for_every_seed_and_summarised_against_the_baseline(tmp_path):
    """A seeded attempt (MSRD only (T)) gets seeds 1..n-1 beside its seed-0 row, and the summary pairs it with the
    baseline seeds like MapKD: mean +- std, ratio of the means, seeds above their paired baseline."""
    name = bd.SEEDED_ATTEMPTS[0]
    rows = {row: (folder, over) for row, folder, _, over in bd.plan(3)}
    assert rows[name][1]['seed'] == 0
    for s in (1, 2):
        folder, over = rows[bd.seeded_name(name, s)]
        assert folder == f'student_{bd.slug(name)}_s{s}' and over['seed'] == s
        assert over['distill'] == bd.ATTEMPTS[name] and bd.needs(folder, over) == {'teacher', 'frozen_teacher'}
    runs = {'baseline seed 0': _scores(0.40, 0.42), 'baseline seed 1': _scores(0.38, 0.40),
            'baseline seed 2': _scores(0.42, 0.44), name: _scores(0.44, 0.46),
            f'{name} seed 1': _scores(0.37, 0.39), f'{name} seed 2': _scores(0.45, 0.47),
            'MapKD seed 0': _scores(0.30, 0.30)}
    payload = bd.summarize(runs, seeds=3, train_frames=1200)
    g = payload['summary']['geo_val']
    assert g[name]['miou']['n'] == 3 and abs(g[name]['miou']['mean'] - 0.42) < 1e-9
    vs = g['versus_baseline'][name]
    assert abs(vs['ratio_miou'] - 0.42 / 0.40) < 1e-9
    assert [p['above_baseline_miou'] for p in vs['pairs']] == [True, False, True]
    assert [p['seed'] for p in g['versus_baseline']['MapKD']['pairs']] == [0]
    text = bd.table(payload)
    assert f'{name} / baseline: mIoU x1.05' in text and 'above its paired baseline seed in 2 of 3 seeds' in text
    png = bd.chart(payload, tmp_path / 'chart.png')
    assert png.is_file() and png.stat().st_size > 1000


def test_the_eval_mode_attempts_set_freeze_eval_and_only_they_do():
    """Round 5's attempts train with the frozen layers in eval mode (a recipe key beyond ``distill``): the baseline
    one distils nothing (needs no teacher), the MSRD one needs the teacher; no other row sets freeze_eval."""
    rows = {row: (folder, over) for row, folder, _, over in bd.plan(3)}
    base_folder, base = rows['baseline, frozen layers in eval mode']
    msrd_folder, msrd = rows['MSRD only (T), frozen layers in eval mode']
    assert base['freeze_eval'] is True and msrd['freeze_eval'] is True
    assert bd.needs(base_folder, base) == set() and bd.needs(msrd_folder, msrd) == {'teacher', 'frozen_teacher'}
    assert msrd['distill'] == bd.ATTEMPTS['MSRD only (T)']
    assert [r for r, (_, o) in rows.items() if o.get('freeze_eval')] == [
        'baseline, frozen layers in eval mode', 'MSRD only (T), frozen layers in eval mode']


def test_a_row_another_call_finishes_meanwhile_is_read_again_for_the_summary(monkeypatch, tmp_path):
    """Two calls side by side: a row still training when this call starts is scored by the time it writes the
    summary; the summary carries its scores, not the half-finished state read at the start."""
    other = tmp_path / 'coach'  # planned before the row trained here: read at the start, still training
    other.mkdir()
    (other / 'coach.safetensors').write_bytes(b'x')
    (other / 'progress.json').write_text(json.dumps({'step': 600}))

    def fake_train(recipe, out, over, hook=None):
        # while this call trains, the other call finishes and scores its row
        (other / 'eval.json').write_text(json.dumps({'key': {}, **_scores(0.41, 0.43)}))
        return {'weights': str(out / 'student_edge.safetensors'), 'steps': 1, 'train_seconds': 1.0}
    monkeypatch.setattr(bd, 'train', fake_train)
    monkeypatch.setattr(bd, 'evaluate_run', lambda run, *a, **k: _scores(0.40, 0.42)['scores'])
    monkeypatch.setattr(bd, 'write_result', lambda name, payload: tmp_path / f'{name}.json')
    monkeypatch.setattr(bd, 'chart', lambda payload, path: path)
    payload = bd.run(tmp_path, seeds=3, val_frames=1, workers=0, only=('student_baseline_s0',))
    assert payload['runs']['coach (C+simL+SD)']['scores']['geo_val']['miou'] == 0.41


def test_every_row_trains_and_is_scored_on_the_subset_of_the_frames_it_reads(monkeypatch, tmp_path):
    """The rows train on ``synthetic_drives[geo_train=<train frames>,geo_val=<val frames>]`` (only those frames
    rendered) with the recipe's own data overrides kept, and are scored on the same dataroot."""
    from mapkd_core.data.dataroot import parse_subset
    from mapkd_core.train.config import load_train_config
    seen = {}

    def fake_train(recipe, out, over, hook=None):
        seen['data'] = load_train_config(recipe, over).data_overrides
        return {'weights': str(out / 'student_edge.safetensors'), 'steps': 1, 'train_seconds': 1.0}

    def fake_eval(run, val_frames, workers, mini_frames=0, train_frames=bd.TRAIN_FRAMES):
        seen['eval'] = bd.ablation_dataroot(train_frames, val_frames)
        return _scores(0.40, 0.42)['scores']
    monkeypatch.setattr(bd, 'train', fake_train)
    monkeypatch.setattr(bd, 'evaluate_run', fake_eval)
    monkeypatch.setattr(bd, 'write_result', lambda name, payload: tmp_path / f'{name}.json')
    monkeypatch.setattr(bd, 'chart', lambda payload, path: path)
    bd.run(tmp_path, seeds=1, val_frames=30, workers=0, train_frames=40, only=('student_baseline_s0',))
    assert seen['data']['dataset']['dataroot'] == seen['eval'] == 'synthetic_drives[geo_train=40,geo_val=30]'
    assert seen['data']['map_gt'] == {'line_width': 3, 'overlap_extra_width': 2}  # the recipe's, kept
    assert parse_subset(bd.ablation_dataroot()) == (('geo_train', bd.TRAIN_FRAMES), ('geo_val', bd.VAL_FRAMES))
    assert bd.student_data_config(seen['eval']).dataset.dataroot == seen['eval']


def _recording_run(monkeypatch, tmp_path, fake_train):
    """``bd.run`` with ``train`` replaced by ``fake_train`` and no evaluation, result file or chart."""
    monkeypatch.setattr(bd, 'train', fake_train)
    monkeypatch.setattr(bd, 'evaluate_run', lambda *a, **k: _scores(0.40, 0.42)['scores'])
    monkeypatch.setattr(bd, 'write_result', lambda name, payload: tmp_path / f'{name}.json')
    monkeypatch.setattr(bd, 'chart', lambda payload, path: path)


def test_the_teacher_and_the_coach_start_from_the_weights_under_out(monkeypatch, tmp_path):
    """The teacher's HD head from the call's HD prior, the coach from the call's teacher (the recipe's exclusions
    kept): never the recipes' default paths."""
    from mapkd_core.train.config import load_train_config
    seen = {}

    def fake_train(recipe, out, over, hook=None):
        seen[out.name] = load_train_config(recipe, over).init
        return {'weights': str(out / f'{out.name}.safetensors'), 'steps': 1, 'train_seconds': 1.0}
    _recording_run(monkeypatch, tmp_path, fake_train)
    bd.run(tmp_path, seeds=1, val_frames=30, workers=0, train_frames=40, only=('teacher', 'coach'))
    assert seen['teacher'].path == str(tmp_path / 'hd_prior' / 'hd_prior.safetensors')
    assert seen['coach'].path == str(tmp_path / 'teacher' / 'teacher.safetensors')
    assert 'pillars.' in seen['coach'].exclude and 'sim_lidar.' in seen['coach'].allow_uninitialized


def test_encoder_inheritance_rows_wait_for_and_start_from_the_coach(monkeypatch, tmp_path):
    """``init_from: coach`` rows need the coach, and start the student's encoder from the call's coach weights: every
    encoder tensor the coach's camera encoder, the BEV neck the student's own initialisation."""
    import warnings
    import torch
    from mapkd_core.models import build_model, save_weights
    from mapkd_core.train.config import load_train_config
    from mapkd_core.train.stages import init_from
    rows = {f: o for _, f, _, o in bd.plan(1)}
    assert bd.needs('student_baseline__encoder_from_the_coach', rows['student_baseline__encoder_from_the_coach']) \
        == {'coach'}
    assert bd.needs('student_mapkd__encoder_from_the_coach', rows['student_mapkd__encoder_from_the_coach']) \
        == {'teacher', 'coach', 'frozen_teacher', 'frozen_coach'}
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        coach = build_model('coach_cpu')
        save_weights(coach, tmp_path / 'coach' / 'coach.safetensors')
        student = build_model('student_edge_cpu')
    seen = {}

    def fake_train(recipe, out, over, hook=None):
        seen[out.name] = load_train_config(recipe, over).init
        return {'weights': str(out / 'student_edge.safetensors'), 'steps': 1, 'train_seconds': 1.0}
    _recording_run(monkeypatch, tmp_path, fake_train)
    bd.run(tmp_path, seeds=1, val_frames=30, workers=0, train_frames=40, only=('student_baseline__encoder_from_the_coach',
                                                                              'student_baseline_s0'))
    assert seen['student_baseline_s0'] is None  # the baseline proper starts from ImageNet
    init = seen['student_baseline__encoder_from_the_coach']
    assert init.path == str(tmp_path / 'coach' / 'coach.safetensors')
    neck_before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith('neck.')}
    init_from(student, init)
    own, ref = student.state_dict(), coach.state_dict()
    enc = [k for k in own if k.startswith('encoder.')]
    assert enc and all(torch.equal(own[k], ref['camera.' + k]) for k in enc)
    assert all(torch.equal(own[k], v) for k, v in neck_before.items())


def test_the_ablation_proper_excludes_the_tuning_attempts_and_decides_completeness():
    """Without --attempts a call plans the issue's rows only (frozen models, baseline and MapKD seeds, single-loss
    rows); the attempts are extra rows, trained when asked for."""
    proper = [row for row, *_ in bd.plan(3, attempts=False)]
    assert proper[:5] == ['HD prior (MAE)', 'teacher (C+L+SD+HD)', 'teacher outputs (cache)', 'coach (C+simL+SD)',
                          'coach outputs (cache)']
    assert {f'{g} seed {s}' for g in ('baseline', 'MapKD') for s in range(3)} | set(bd.SINGLE) == set(proper[5:])
    everything = [row for row, *_ in bd.plan(3)]
    assert everything[:len(proper)] == proper and set(bd.ATTEMPTS) <= set(everything[len(proper):])


def _finished(folder, train_seconds: list[float], eval_seconds: float | None, weights: str = 'model'):
    folder.mkdir(parents=True)
    (folder / f'{weights}.safetensors').write_bytes(folder.name.encode())
    (folder / 'progress.json').write_text(json.dumps({'step': 10}))
    (folder / 'epochs.csv').write_text('epoch,seconds\n' + ''.join(f'{i},{s}\n' for i, s in enumerate(train_seconds)))
    if eval_seconds is not None:
        split = {'eval_seconds': eval_seconds / 2, 'miou': 0.4, 'map': 0.4}
        (folder / 'eval.json').write_text(json.dumps({'key': {}, 'scores': {'geo_val': split, 'mini_val': split}}))


def _filled(out, folder: str, seconds: float):
    from mapkd_core.train.cache import file_digest
    role = bd.FILLS[folder]
    (out / folder).mkdir(parents=True)
    (out / folder / 'fill.json').write_text(json.dumps(
        {'role': role, 'weights': file_digest(out / role / f'{role}.safetensors'), 'seconds': seconds}))


def _measured_ablation(out):
    _finished(out / 'hd_prior', [600.0], None)
    _finished(out / 'teacher', [1200.0, 1200.0], 60.0, 'teacher')      # 41 min
    _finished(out / 'coach', [1200.0], 60.0, 'coach')                    # 21 min
    for folder in bd.FILLS:
        _filled(out, folder, 60.0)                                         # 1 min each
    for s in range(2):
        _finished(out / f'student_baseline_s{s}', [300.0, 300.0], 60.0)  # 11 min
    for name in ('student_msrd_only__t', 'student_tgpd_only__t', 'student_msrd_only__t_s1'):
        _finished(out / name, [540.0, 540.0], 120.0)     # 20 min each: the stand-in of the MapKD rows


def test_estimate_replays_the_schedule_with_the_measured_seconds(tmp_path):
    """The wall time of a --jobs call from the rows' measured seconds (training + evaluation), one core per row:
    the chain in order, the baselines beside it, the fill rows after their models, a missing MapKD row standing in
    as the median of the students of the teacher."""
    out = tmp_path / 'out'
    _measured_ablation(out)
    one = bd.estimate(out, seeds=2, jobs=1, cpus=1)
    # every row one after the other: 10 + 41 + 21 + 2 x 1 + 2 x 11 + 4 x 20 (MapKD seeds 0-1, the single-loss rows)
    assert abs(one['wall_minutes'] - (10 + 41 + 21 + 2 + 22 + 80)) < 1e-6
    two = bd.estimate(out, seeds=2, jobs=2, cpus=1)
    rows = {r['row']: r for r in two['rows']}
    assert rows['student_baseline_s0']['start_min'] == 0 and rows['student_baseline_s1']['start_min'] == 11
    # the coach after the teacher's fill row (it distils the teacher and reads the filled outputs)
    assert rows['teacher']['start_min'] == 10 and rows['frozen_teacher']['start_min'] == 51
    assert rows['coach']['start_min'] == 52 and rows['frozen_coach']['start_min'] == 73
    assert not rows['student_mapkd_s0']['measured'] and rows['student_mapkd_s0']['minutes'] == 20
    # after the coach's fill row (74 min) the four students that need it, two at a time
    assert abs(two['wall_minutes'] - (74 + 40)) < 1e-6
    (out / 'coach' / 'eval.json').unlink()  # a frozen model never stands in: an error that names it
    with pytest.raises(ValueError, match='coach: not trained and evaluated'):
        bd.estimate(out, seeds=2, jobs=2, cpus=1)


def test_estimate_gives_a_row_left_alone_every_core(tmp_path):
    """On 2 cores a row alone runs at ``speed(2)`` (1.6x), two rows side by side at one core each: the replay of
    the same measured rows as above."""
    out = tmp_path / 'out'
    _measured_ablation(out)
    two = bd.estimate(out, seeds=2, jobs=2, cpus=2)
    rows = {r['row']: r for r in two['rows']}
    # 0-10: HD prior beside baseline 0; 10-22: the teacher beside baseline 0's last minute, then baseline 1; the rest
    # of the teacher's 2,460 s alone at 1.6x: 1,740 / 1.6 s; the teacher's fill row alone, then the coach alone; the
    # coach's fill row alone; the four students two at a time
    teacher_end = 22 + 1740 / 1.6 / 60
    coach_start = teacher_end + 60 / 1.6 / 60
    coach_end = coach_start + 1260 / 1.6 / 60
    assert rows['frozen_teacher']['start_min'] == pytest.approx(teacher_end)
    assert rows['coach']['start_min'] == pytest.approx(coach_start)
    assert rows['frozen_coach']['start_min'] == pytest.approx(coach_end)
    assert two['wall_minutes'] == pytest.approx(coach_end + 60 / 1.6 / 60 + 40)
    assert bd.speed(2) == pytest.approx(1.6) and bd.threads_for(['a', 'b', 'c'], 4) == {'a': 2, 'b': 1, 'c': 1}


def test_a_fill_row_is_done_only_for_the_weights_it_filled_from(tmp_path):
    """A fill row's record holds its model's weights digest: retraining the model makes the row pending again."""
    out = tmp_path / 'out'
    _finished(out / 'teacher', [1.0], 1.0, 'teacher')
    assert not bd.row_done(out, 'frozen_teacher')
    _filled(out, 'frozen_teacher', 5.0)
    assert bd.row_done(out, 'frozen_teacher') and bd.row_work(out, 'frozen_teacher') == 5.0
    (out / 'teacher' / 'teacher.safetensors').write_bytes(b'retrained')
    assert not bd.row_done(out, 'frozen_teacher') and bd.row_work(out, 'frozen_teacher') is None


def test_a_row_follows_its_share_of_the_cores_and_records_its_work(tmp_path):
    """``ThreadBudget``: torch's thread count follows the scheduler's file, the seconds are counted per thread
    count and saved (added to an earlier call's) in bench_row.json, whose work ``row_work`` weights by speed."""
    import torch
    before = torch.get_num_threads()
    share = tmp_path / 'row.threads'
    share.write_text('1\n')
    try:
        budget = bd.ThreadBudget(share, poll_s=0.0)
        assert torch.get_num_threads() == 1
        budget()
        share.write_text('2\n')
        budget()  # the new share applies from here
        assert torch.get_num_threads() == 2
        share.write_text('x')  # half-written: the share stays
        budget()
        assert torch.get_num_threads() == 2
        folder = tmp_path / 'out' / 'student_baseline_s0'
        _finished(folder, [1.0], 1.0)
        doc = budget.save(folder)
        assert set(doc['thread_seconds']) == {'1', '2'}
        first = sum(doc['thread_seconds'].values())
        doc = bd.ThreadBudget().save(folder)  # a resumed call adds its seconds
        assert sum(doc['thread_seconds'].values()) >= first
        work = bd.row_work(tmp_path / 'out', 'student_baseline_s0')
        assert work == pytest.approx(sum(s * bd.speed(int(t)) for t, s in doc['thread_seconds'].items()))
    finally:
        torch.set_num_threads(before)


def test_the_mapkd_rows_train_the_shipped_student_recipe():
    """The MapKD seeds distil with the weights of config/train/student_edge_cpu.yaml (the recipe users train), and
    the single-loss rows are that recipe with the other loss's weights at zero."""
    from mapkd_core.config import load_yaml
    from mapkd_core.paths import config_path
    shipped = load_yaml(config_path('train/student_edge_cpu.yaml'))['distill']
    assert bd.MAPKD == shipped
    rows = {row: over for row, _, _, over in bd.plan(3, attempts=False)}
    assert all(rows[f'MapKD seed {s}']['distill'] == shipped for s in range(3))
    assert rows['MSRD only (T+C)']['distill'] == {**shipped, 'tgpd_teacher': 0.0, 'tgpd_coach': 0.0}


def test_summary_trains_nothing_and_tabulates_the_finished_rows(monkeypatch, tmp_path, capsys):
    """``--summary``: the table of the rows found finished under --out, nothing trained or evaluated; a group of one
    seed has no spread to show."""
    out = tmp_path / 'out'
    for folder, miou in (('student_baseline_s0', 0.40), ('student_mapkd_s0', 0.44)):
        (out / folder).mkdir(parents=True)
        (out / folder / 'student_edge.safetensors').write_bytes(b'x')
        (out / folder / 'progress.json').write_text(json.dumps({'step': 1200}))
        (out / folder / 'eval.json').write_text(json.dumps({'key': {}, **_scores(miou, miou)}))

    def refuse(*a, **k):
        raise AssertionError('--summary must not train or evaluate')
    monkeypatch.setattr(bd, 'train', refuse)
    monkeypatch.setattr(bd, 'evaluate_run', refuse)
    written = {}

    def write_result(name, payload):
        written[name] = payload
        return tmp_path / f'{name}.json'
    monkeypatch.setattr(bd, 'write_result', write_result)
    monkeypatch.setattr(bd, 'chart', lambda payload, path: path)
    bd.main(['--out', str(out), '--summary'])
    text = capsys.readouterr().out
    assert '| **MapKD, 1 seed** | 44.0 | 44.0 | 44.0 | 44.0 | 44.0 |' in text
    assert 'MapKD / baseline: mIoU x1.10, mAP x1.10; above its paired baseline seed in 1 of 1 seed' in text
    assert written['distillation']['complete'] is False
    with pytest.raises(SystemExit):
        bd.main(['--out', str(tmp_path / 'missing'), '--summary'])
