"""Training: stages, frozen teacher/coach, TGPD projections in the optimiser, exact kill-and-resume, DDP on two CPU
processes, and the teacher overfitting the real keyframe."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mapkd_core.data.synth import SynthConfig
from mapkd_core.data.synth.cache import synthetic_dataroot
from mapkd_core.errors import ConfigError, WeightsMismatchError
from mapkd_core.models import build_model, save_weights
from mapkd_core.models.io import read_weights
from mapkd_core.train.config import TrainConfig, load_train_config
from mapkd_core.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')
ENV = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', OMP_NUM_THREADS='2')


@pytest.fixture(scope='module')
def data_yaml(tmp_path_factory):
    """A data config over the small synthetic dataroot (scene-0061 in mini_train, two mini_val scenes)."""
    root = synthetic_dataroot(SynthConfig(scenes=('scene-0061', 'scene-0103', 'scene-0916'), limit=3), progress=False)
    path = tmp_path_factory.mktemp('cfg') / 'data.yaml'
    path.write_text(yaml.safe_dump({'dataset': {'dataroot': str(root), 'version': 'v1.0-mini'},
                                    'map_gt': {'line_width': 2, 'overlap_extra_width': 2}}))
    return path


@pytest.fixture(scope='module')
def frozen_weights(tmp_path_factory):
    """Randomly initialised tiny teacher and coach packages (their training is not what these tests check)."""
    d = tmp_path_factory.mktemp('frozen')
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return (save_weights(build_model('teacher_tiny'), d / 'teacher.safetensors'),
                save_weights(build_model('coach_tiny'), d / 'coach.safetensors'))


def student_cfg(data_yaml, frozen, **over) -> dict:
    teacher, coach = frozen
    cfg = {'stage': 'student', 'model': 'student_tiny', 'data': str(data_yaml), 'train_split': 'all',
           'val_split': 'mini_val', 'val_limit': 2, 'teacher': str(teacher), 'coach': str(coach),
           'distill': {'msrd_teacher': 0.75, 'msrd_coach': 0.001, 'tgpd_teacher': 0.5, 'tgpd_coach': 0.01},
           'epochs': 2, 'batch_size': 2, 'log_every': 1, 'seed': 3}
    cfg.update(over)
    return cfg


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_student_stage_trains_tgpd_projections_and_keeps_teachers_frozen(tmp_path, data_yaml, frozen_weights):
    cfg = load_train_config(write_cfg(tmp_path / 's.yaml', student_cfg(data_yaml, frozen_weights, epochs=1)))
    trainer = Trainer(cfg, tmp_path / 'run', progress=False)
    tgpd = trainer.stage.module.tgpd
    assert tgpd is not None
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g['params']}
    assert all(id(p) in in_optimizer for p in tgpd.parameters())
    before = {n: p.detach().clone() for n, p in tgpd.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in trainer.stage.teacher.named_parameters()}
    result = trainer.fit()
    assert result['steps'] == 4  # 9 samples, batch 2, last partial batch dropped
    changed = [n for n, p in tgpd.named_parameters() if not torch.equal(p, before[n])]
    assert changed == list(before), 'every TGPD projection must be updated by the optimiser'
    assert trainer.stage.teacher.training is False and trainer.stage.coach.training is False
    assert all(not p.requires_grad for p in trainer.stage.teacher.parameters())
    assert all(torch.equal(p, teacher_before[n]) for n, p in trainer.stage.teacher.named_parameters())
    # outputs: checkpoint (weights_only), model package, event logs with validation
    ckpt = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)
    assert ckpt['epoch'] == 1 and 'tgpd' in ckpt and ckpt['tgpd']
    state, meta = read_weights(tmp_path / 'run' / 'student.safetensors')
    assert 'model_config' in meta and state
    rows = (tmp_path / 'run' / 'epochs.csv').read_text().splitlines()
    assert 'val_miou' in rows[0] and len(rows) == 2
    assert len((tmp_path / 'run' / 'steps.csv').read_text().splitlines()) == 5
    losses = rows[0].split(',')
    assert 'train_msrd' in losses and 'train_tgpd' in losses


def _train_cli(cfg_path, out, wait_epoch=None):
    """Run mapkd-train in a subprocess; with wait_epoch, SIGKILL it once that epoch's checkpoint exists."""
    cmd = [sys.executable, '-m', 'mapkd_core.train.cli', '--config', str(cfg_path), '--out', str(out), '--quiet']
    if wait_epoch is None:
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = Path(out) / 'progress.json'
    deadline = time.time() + 300
    while time.time() < deadline:
        if progress.is_file():
            try:
                if json.loads(progress.read_text())['epoch'] >= wait_epoch:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        if proc.poll() is not None:
            raise AssertionError(f'training ended before it could be killed: {proc.stderr.read()}')
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way through the next epoch
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_and_resume_gives_the_same_weights(tmp_path, data_yaml, frozen_weights):
    cfg = write_cfg(tmp_path / 's.yaml', student_cfg(data_yaml, frozen_weights, epochs=3, val_split=None))
    _train_cli(cfg, tmp_path / 'straight')
    _train_cli(cfg, tmp_path / 'killed', wait_epoch=1)
    assert json.loads((tmp_path / 'killed' / 'progress.json').read_text())['epoch'] < 3
    _train_cli(cfg, tmp_path / 'killed')  # resumes from the last checkpoint
    a = torch.load(tmp_path / 'straight' / 'checkpoint.pt', weights_only=True)
    b = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=True)
    assert a['epoch'] == b['epoch'] == 3 and a['step'] == b['step']
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    for key in a['tgpd']:
        assert torch.equal(a['tgpd'][key], b['tgpd'][key]), key
    first = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=True)  # and it did train
    assert not torch.equal(first['model']['decoder.stem.0.weight'],
                           build_model('student_tiny').state_dict()['decoder.stem.0.weight'])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_with_two_cpu_processes_keeps_replicas_identical(tmp_path, data_yaml, frozen_weights):
    cfg = write_cfg(tmp_path / 's.yaml', student_cfg(data_yaml, frozen_weights, epochs=2, val_split=None))
    torchrun = Path(sys.executable).parent / 'torchrun'
    r = subprocess.run([str(torchrun), '--nnodes', '1', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), '-m', 'mapkd_core.train.cli', '--config', str(cfg),
                        '--out', str(tmp_path / 'ddp'), '--device', 'cpu', '--quiet'],
                       env=dict(ENV, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'ddp' / 'checkpoint.pt', weights_only=True)
    history = json.loads(ckpt['history'])
    assert [row['world_size'] for row in history] == [2, 2]
    # each rank checksums its replica after every epoch; the spread across ranks is exactly zero
    assert all(row['replica_max_diff'] == 0.0 for row in history), history
    assert ckpt['step'] == 4  # 9 samples over 2 ranks at batch 2: 2 steps per epoch per rank


@pytest.mark.slow
def test_teacher_overfits_the_bundled_real_keyframe(tmp_path):
    cfg = TrainConfig(stage='teacher', model='teacher_tiny', data='data/bundled.yaml', train_split='mini_train',
                      val_split='mini_train', epochs=120, batch_size=1, lr=2e-3, lr_step=1000, val_every=120,
                      log_every=0)
    result = Trainer(cfg, tmp_path / 'overfit', progress=False).fit()
    last = result['history'][-1]
    assert last['val_miou'] > 0.9, last
    assert last['val_iou_divider'] > 0.85 and last['val_iou_boundary'] > 0.85


def test_hd_prior_pretraining_initialises_the_teacher(tmp_path, data_yaml):
    hd = load_train_config(write_cfg(tmp_path / 'hd.yaml', {
        'stage': 'hd_prior', 'model': 'hd_prior_tiny', 'data': str(data_yaml), 'train_split': 'all',
        'val_split': 'mini_val', 'val_limit': 2, 'epochs': 1, 'batch_size': 4,
        'hd_pretrain': {'mask_ratio': -1.0}}))
    trainer = Trainer(hd, tmp_path / 'hd', progress=False)
    assert 'images' not in trainer.train_set[0]  # the MAE learns from ground-truth rasters only
    trainer.fit()
    weights = tmp_path / 'hd' / 'hd_prior.safetensors'
    teacher_cfg = {'stage': 'teacher', 'model': 'teacher_tiny', 'data': str(data_yaml), 'train_split': 'all',
                   'val_split': None, 'epochs': 1, 'batch_size': 2,
                   'init': {'path': str(weights),
                            'allow_uninitialized': ['camera.', 'pillars.', 'conv_bev.', 'sd.', 'conv_up.',
                                                    'decoder.']}}
    t = Trainer(load_train_config(write_cfg(tmp_path / 't.yaml', teacher_cfg)), tmp_path / 't', progress=False)
    state, _ = read_weights(weights)
    own = t.stage.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert t.stage.init_report['loaded'] == len(state)
    # forgetting to allow the rest of the teacher to start from scratch is an error naming those keys
    teacher_cfg['init'] = {'path': str(weights)}
    with pytest.raises(WeightsMismatchError, match=r'missing key\(s\): camera\.'):
        Trainer(load_train_config(write_cfg(tmp_path / 't2.yaml', teacher_cfg)), tmp_path / 't2', progress=False)


def test_bad_training_configs_are_named(tmp_path, data_yaml, frozen_weights):
    bad = student_cfg(data_yaml, frozen_weights)
    del bad['teacher']
    with pytest.raises(ConfigError, match='teacher: teacher distillation weights are set but no teacher'):
        load_train_config(write_cfg(tmp_path / 'a.yaml', bad))
    erd_only = dict(bad, distill={'erd_teacher': 0.1})  # ERD needs the teacher too
    with pytest.raises(ConfigError, match='teacher: teacher distillation weights are set but no teacher'):
        load_train_config(write_cfg(tmp_path / 'a2.yaml', erd_only))
    ird_only = dict(bad, distill={'ird_teacher': 0.1})  # and IRD
    with pytest.raises(ConfigError, match='teacher: teacher distillation weights are set but no teacher'):
        load_train_config(write_cfg(tmp_path / 'a4.yaml', ird_only))
    with pytest.raises(ConfigError, match=r"distill: masks must be one of foreground, correct, all, got ird_mask "
                                          r"'teacher'"):
        load_train_config(write_cfg(tmp_path / 'a5.yaml', dict(student_cfg(data_yaml, frozen_weights),
                                                               distill={'ird_mask': 'teacher'})))
    with pytest.raises(ConfigError, match=r'distill: weights must be >= 0, got msrd_coach -0\.5'):
        load_train_config(write_cfg(tmp_path / 'a3.yaml', dict(student_cfg(data_yaml, frozen_weights),
                                                               distill={'msrd_coach': -0.5})))
    with pytest.raises(ConfigError, match='stage teacher trains a teacher'):
        Trainer(load_train_config(write_cfg(tmp_path / 'b.yaml', {
            'stage': 'teacher', 'model': 'student_tiny', 'data': str(data_yaml)})), tmp_path / 'b', progress=False)
    with pytest.raises(ConfigError, match=r"distill\.msrd_teachr: unknown key \(did you mean 'msrd_teacher'\?\)"):
        load_train_config(write_cfg(tmp_path / 'c.yaml', dict(student_cfg(data_yaml, frozen_weights),
                                                              distill={'msrd_teachr': 1.0})))
    # IRD regresses the teacher's embedding: a student with another embedding width is refused, naming both
    narrow = yaml.safe_load((Path(__file__).parent.parent / 'config' / 'models' / 'student_tiny.yaml').read_text())
    narrow['embedding_dim'] = 4
    model_path = tmp_path / 'student_narrow.yaml'
    model_path.write_text(yaml.safe_dump(narrow))
    with pytest.raises(ConfigError, match=r'ird_teacher regresses .* same channels: embedding 4 vs 16'):
        Trainer(load_train_config(write_cfg(tmp_path / 'f.yaml', student_cfg(
            data_yaml, frozen_weights, model=str(model_path), distill={'ird_teacher': 0.1}))), tmp_path / 'f',
            progress=False)
    # resuming a run with another config is refused
    cfg = student_cfg(data_yaml, frozen_weights, epochs=1, val_split=None)
    Trainer(load_train_config(write_cfg(tmp_path / 'd.yaml', cfg)), tmp_path / 'd', progress=False).fit()
    cfg['lr'] = 1e-3
    with pytest.raises(ValueError, match=r"another config \(different: \['lr'\]\)"):
        Trainer(load_train_config(write_cfg(tmp_path / 'e.yaml', cfg)), tmp_path / 'd', progress=False)


@pytest.mark.parametrize('path', sorted((Path(__file__).parent.parent / 'config' / 'train').glob('*.yaml')),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_config_loads(path):
    cfg = load_train_config(path)
    assert cfg.stage in ('hd_prior', 'teacher', 'coach', 'student')


def test_train_limit_spreads_over_the_split():
    from mapkd_core.data.dataset import spread
    assert spread(list(range(10)), 3) == [0, 3, 6]  # not the first three: frames are sorted by scene
    assert spread(list(range(10)), 1) == [0]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]


def test_trainer_validation_equals_mapkd_eval(tmp_path, data_yaml):
    """One evaluation loop: the last epoch's val IoU in epochs.csv is what ``mapkd-eval`` reports for the same
    weights, split and frames (``val_limit`` and ``--limit`` both spread over the split)."""
    import csv

    from mapkd_core.eval.cli import main as eval_main
    cfg = {'stage': 'student', 'model': 'student_tiny', 'data': str(data_yaml), 'train_split': 'mini_train',
           'val_split': 'mini_val', 'val_limit': 3, 'epochs': 1, 'batch_size': 2, 'train_limit': 4, 'seed': 5}
    out = tmp_path / 'run'
    result = Trainer(load_train_config(write_cfg(tmp_path / 'train.yaml', cfg)), out, progress=False).fit()
    with open(out / 'epochs.csv', encoding='utf-8') as fh:
        last = list(csv.DictReader(fh))[-1]
    assert eval_main(['--weights', result['weights'], '--data', str(data_yaml), '--split', 'mini_val', '--limit', '3',
                      '--out', str(tmp_path / 'eval'), '--quiet', '--batch-size', '1']) == 0
    report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert report['samples'] == 3
    for name, value in report['iou'].items():
        assert float(last[f'val_iou_{name}']) == pytest.approx(value, abs=1e-5), name
    assert float(last['val_miou']) == pytest.approx(report['miou'], abs=1e-5)
    assert report['miou'] > 0  # a real comparison, not 0 == 0 (the student draws some map after 2 steps)


def test_stage1_deep_supervision_adds_the_first_stage_segmentation_loss(data_yaml):
    """``loss.stage1_seg`` adds w x BCE(first-stage logits) to the teacher's loss and back-propagates into the first
    stage directly (not only through the HD head); a model without a first stage is a ConfigError naming the key."""
    from mapkd_core.data.dataset import MapDataset, collate
    from mapkd_core.train.stages import Stage

    base = {'stage': 'teacher', 'model': 'teacher_tiny', 'data': str(data_yaml), 'train_split': 'mini_train',
            'val_split': None}
    plain, deep = (Stage(from_dict_cfg({**base, 'loss': {'stage1_seg': w}})) for w in (0.0, 2.0))
    deep.model.load_state_dict(plain.model.state_dict())
    batch = collate([MapDataset(plain.data_config(), split='mini_train')[0]])
    torch.manual_seed(0)
    a = plain.module(batch)
    torch.manual_seed(0)
    b = deep.module(batch)
    assert 'stage1_seg' not in a and b['stage1_seg'] > 0
    expected = float(a["total"].detach()) + 2.0 * float(b["stage1_seg"].detach())
    assert float(b["total"].detach()) == pytest.approx(expected,
                                                       rel=1e-5)
    b['stage1_seg'].backward()  # the first-stage term alone reaches the first stage but not the HD head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.model.conv_bev.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in deep.model.hd.parameters())
    with pytest.raises(ConfigError, match='stage1_seg'):
        student = Stage(from_dict_cfg({**base, 'stage': 'student', 'model': 'student_tiny',
                                       'loss': {'stage1_seg': 1.0}}))
        student.module(batch)


def from_dict_cfg(d: dict) -> TrainConfig:
    from mapkd_core.config import from_dict
    return from_dict(TrainConfig, d)


def test_resume_accepts_a_checkpoint_written_before_a_config_key_existed(tmp_path, data_yaml):
    """A key added to TrainConfig later (with its default) does not make an older checkpoint 'another config'; a
    changed value still does."""
    cfg = {'stage': 'student', 'model': 'student_tiny', 'data': str(data_yaml), 'train_split': 'mini_train',
           'val_split': None, 'epochs': 1, 'batch_size': 2, 'train_limit': 2, 'seed': 1}
    out = tmp_path / 'run'
    Trainer(load_train_config(write_cfg(tmp_path / 't.yaml', cfg)), out, progress=False).fit()
    ckpt = torch.load(out / 'checkpoint.pt', weights_only=True)
    old = yaml.safe_load(ckpt['train_config'])
    del old['loss']['stage1_seg']  # as written before loss.stage1_seg existed
    ckpt['train_config'] = yaml.safe_dump(old)
    torch.save(ckpt, out / 'checkpoint.pt')
    resumed = Trainer(load_train_config(write_cfg(tmp_path / 't2.yaml', {**cfg, 'epochs': 2})), out, progress=False)
    assert resumed.epoch == 1
    with pytest.raises(ConfigError, match='another config'):
        Trainer(load_train_config(write_cfg(tmp_path / 't3.yaml', {**cfg, 'loss': {'stage1_seg': 0.5}})), out,
                progress=False)
