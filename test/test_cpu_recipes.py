"""The CPU-size recipes (config/train/*_cpu.yaml) build and take a training step, and the training caches
(train/cache.py) give the same first-batch loss as uncached training, under keys that change with the data."""
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mapkd_core.data.synth import SynthConfig
from mapkd_core.errors import ConfigError
from mapkd_core.data.synth.cache import synthetic_dataroot
from mapkd_core.models import build_model, save_weights
from mapkd_core.models.efficientnet_lite import LITE_MEAN
from mapkd_core.paths import config_dir
from mapkd_core.train.config import load_train_config
from mapkd_core.train.recipes import recipe_dict, untrained_frozen, with_frozen
from mapkd_core.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings('ignore:no ImageNet weights')
RECIPES = ('hd_prior_cpu', 'teacher_cpu', 'coach_cpu', 'student_edge_cpu_baseline', 'student_edge_cpu')


@pytest.fixture(scope='module')
def small_data(tmp_path_factory):
    """A data config over the small synthetic dataroot (scene-0061 in mini_train); the recipes' own dataset
    (synthetic_drives, geo_train) is far too large to generate in a test."""
    root = synthetic_dataroot(SynthConfig(scenes=('scene-0061', 'scene-0103', 'scene-0916'), limit=3), progress=False)
    path = tmp_path_factory.mktemp('cfg') / 'data.yaml'
    path.write_text(yaml.safe_dump({'dataset': {'dataroot': str(root), 'version': 'v1.0-mini'}}))
    return path


@pytest.fixture(scope='module')
def cpu_frozen(tmp_path_factory):
    """Untrained CPU-size hd_prior, teacher and coach packages (ImageNet encoders, the rest random)."""
    return untrained_frozen(tmp_path_factory.mktemp('frozen_cpu'), seed=1)


def recipe(name: str, data: Path, frozen: dict, **over) -> dict:
    cfg = with_frozen(recipe_dict(name), frozen)
    cfg.update({'data': str(data), 'train_split': 'mini_train', 'val_split': None, 'epochs': 1, 'train_limit': 1,
                'batch_size': 1, 'workers': 0, 'cache': False, 'log_every': 1})
    cfg.update(over)
    return cfg


def write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize('name', RECIPES)
def test_cpu_recipe_builds_and_takes_a_training_step(name, tmp_path, small_data, cpu_frozen):
    shipped = load_train_config(config_dir() / 'train' / f'{name}.yaml')
    assert (shipped.data, shipped.train_split, shipped.val_split) == ('data/synthetic_drives.yaml', 'geo_train',
                                                                      'geo_val')
    cfg = load_train_config(write(tmp_path, name, recipe(name, small_data, cpu_frozen)))
    trainer = Trainer(cfg, tmp_path / 'run', progress=False)
    model = trainer.stage.model
    assert model.cfg.grid.shape == (100, 200)
    if name != 'hd_prior_cpu':
        assert (model.cfg.image.height, model.cfg.image.width) == (128, 352)
        assert trainer.data_cfg.image.mean == pytest.approx(LITE_MEAN)  # the data follow the model's normalisation
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen and all('.trunk._' in n for n in frozen)  # the encoder's stem and first stages only
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = trainer.fit()
    assert result['steps'] == 1
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > len(before) // 2, f'{name}: only {len(moved)} of {len(before)} parameters moved'
    assert torch.isfinite(torch.tensor(result['history'][-1]['train_total']))


def test_the_coach_recipe_starts_from_the_teacher(tmp_path, small_data, cpu_frozen):
    """coach_cpu's init: every teacher tensor of the shared layout (camera branch, SD fusion, BEV layers, semantic
    decoder) copied, the simulated-LiDAR branch and the instance heads left to their own initialisation."""
    from mapkd_core.models.io import read_weights
    shipped = recipe_dict('coach_cpu')['init']
    assert shipped['path'] == recipe_dict('coach_cpu')['teacher']  # the teacher it distils from
    trainer = Trainer(load_train_config(write(tmp_path, 'coach', recipe('coach_cpu', small_data, cpu_frozen))),
                      tmp_path / 'run', progress=False)
    own = trainer.stage.model.state_dict()
    teacher, _ = read_weights(cpu_frozen['teacher'])
    shared = [k for k in own if k in teacher]
    assert {k.split('.')[0] for k in shared} == {'camera', 'sd', 'conv_bev', 'conv_up', 'decoder'}
    for key in shared:
        assert torch.equal(own[key], teacher[key]), key
    fresh = [k for k in own if k not in teacher]
    assert fresh and all(k.startswith(('sim_lidar.', 'decoder.heads.embedding.', 'decoder.heads.direction.'))
                         for k in fresh)
    # the untrained coach package differs from the teacher's there: the copy is the recipe's doing
    coach, _ = read_weights(cpu_frozen['coach'])
    assert not all(torch.equal(coach[k], teacher[k]) for k in shared if k.startswith('conv_bev.'))


def first_batch_losses(cfg_path: Path, out: Path) -> dict:
    trainer = Trainer(load_train_config(cfg_path), out, progress=False, resume=False)
    torch.manual_seed(0)
    batch = trainer._to_device(next(iter(trainer._loader(0))))
    trainer.module.eval()  # no dropout: the same loss from the same inputs
    with torch.no_grad():
        teacher_out, coach_out = trainer.frozen_outputs(batch)
        losses = trainer.module(batch, teacher_out, coach_out)
    return {k: float(v) for k, v in losses.items()}, trainer


def tiny_mapkd_student(tmp_path: Path, data: Path, monkeypatch, train_limit: int) -> dict:
    """A MapKD student stage's config (TGPD + MSRD from teacher and coach, tiny models for speed, batches of 2) with
    fresh tiny frozen models and an empty cache root."""
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path / 'cache'))
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        teacher = save_weights(build_model('teacher_tiny'), tmp_path / 'teacher.safetensors')
        coach = save_weights(build_model('coach_tiny'), tmp_path / 'coach.safetensors')
    return {'stage': 'student', 'model': 'student_edge_tiny', 'data': str(data), 'train_split': 'mini_train',
            'val_split': None, 'teacher': str(teacher), 'coach': str(coach), 'train_limit': train_limit,
            'batch_size': 2, 'distill': {'msrd_teacher': 0.75, 'msrd_coach': 0.001, 'tgpd_teacher': 0.5,
                                         'tgpd_coach': 0.01},
            'data_overrides': {'map_gt': {'line_width': 2, 'overlap_extra_width': 2}}}


def test_cached_and_uncached_training_give_the_same_first_batch_loss(tmp_path, small_data, monkeypatch):
    """The MapKD student stage (TGPD + MSRD from teacher and coach, tiny models for speed): the loss of the first
    batch read uncached, while the caches fill, and from the caches."""
    base = tiny_mapkd_student(tmp_path, small_data, monkeypatch, train_limit=4)
    plain, _ = first_batch_losses(write(tmp_path, 'plain', {**base, 'cache': False}), tmp_path / 'a')
    filling, trainer = first_batch_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'b')
    data_dir = trainer.train_set.cache_dir
    frozen_dirs = {role: c.dir for role, c in trainer.frozen_caches.items()}
    assert set(frozen_dirs) == {'teacher', 'coach'}
    assert len(list(data_dir.glob('*.npz'))) >= 2 and all(len(list(d.glob('*.pt'))) == 2
                                                         for d in frozen_dirs.values())
    cached, trainer = first_batch_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'c')
    assert trainer.train_set.cache_dir == data_dir  # the same key: read back, not recomputed
    for k, v in plain.items():
        assert filling[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        assert cached[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    assert {'msrd', 'tgpd', 'seg'} <= set(plain)
    # another data setting, or other frozen weights, never reuse these entries
    other = {**base, 'cache': True, 'data_overrides': {'map_gt': {'line_width': 3, 'overlap_extra_width': 2}}}
    t2 = Trainer(load_train_config(write(tmp_path, 'other', other)), tmp_path / 'd', progress=False)
    assert t2.train_set.cache_dir != data_dir and t2.frozen_caches['teacher'].dir != frozen_dirs['teacher']
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        teacher2 = save_weights(build_model('teacher_tiny'), tmp_path / 'teacher2.safetensors')
    t3 = Trainer(load_train_config(write(tmp_path, 'other_t', {**base, 'cache': True, 'teacher': str(teacher2)})),
                 tmp_path / 'e', progress=False)
    assert t3.train_set.cache_dir == data_dir
    assert t3.frozen_caches['teacher'].dir != frozen_dirs['teacher']
    assert t3.frozen_caches['coach'].dir == frozen_dirs['coach']
    # ERD reads the teacher's embedding too: the entries above lack it, so they are computed again and rewritten
    # with it (same key), and read back the same
    erd = {**base, 'distill': {**base['distill'], 'erd_teacher': 0.1}}
    plain_erd, _ = first_batch_losses(write(tmp_path, 'erd_plain', {**erd, 'cache': False}), tmp_path / 'f')
    filling_erd, t4 = first_batch_losses(write(tmp_path, 'erd', {**erd, 'cache': True}), tmp_path / 'g')
    assert t4.frozen_caches['teacher'].dir == frozen_dirs['teacher'] and t4.frozen_caches['teacher'].heads == \
        ('embedding',)
    entries = [torch.load(p, weights_only=True) for p in frozen_dirs['teacher'].glob('*.pt')]
    assert len(entries) == 2 and all('embedding' in e for e in entries)
    cached_erd, _ = first_batch_losses(write(tmp_path, 'erd', {**erd, 'cache': True}), tmp_path / 'h')
    assert plain_erd['erd_teacher'] > 0 and plain_erd['total'] > plain['total']
    for k, v in plain_erd.items():
        assert filling_erd[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        assert cached_erd[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    # and a run without ERD still reads the rewritten entries
    again, _ = first_batch_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'i')
    assert again['total'] == pytest.approx(plain['total'], rel=1e-6, abs=1e-7)
    # IRD reads the teacher's direction as well: rewritten once more, and the same loss cached and uncached (the
    # untrained tiny teacher is right nowhere, so IRD here reads every GT foreground pixel)
    ird = {**base, 'distill': {**base['distill'], 'ird_teacher': 0.1, 'ird_mask': 'foreground'}}
    plain_ird, _ = first_batch_losses(write(tmp_path, 'ird_plain', {**ird, 'cache': False}), tmp_path / 'j')
    filling_ird, t5 = first_batch_losses(write(tmp_path, 'ird', {**ird, 'cache': True}), tmp_path / 'k')
    assert t5.frozen_caches['teacher'].heads == ('embedding', 'direction')
    entries = [torch.load(p, weights_only=True) for p in frozen_dirs['teacher'].glob('*.pt')]
    assert len(entries) == 2 and all({'embedding', 'direction'} <= set(e) for e in entries)
    cached_ird, _ = first_batch_losses(write(tmp_path, 'ird', {**ird, 'cache': True}), tmp_path / 'l')
    assert plain_ird['ird_embedding'] > 0 and plain_ird['ird_direction'] > 0
    assert plain_ird['total'] == pytest.approx(plain['total'] + 0.1 * plain_ird['ird_teacher'], rel=1e-5)
    for k, v in plain_ird.items():
        assert filling_ird[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
        assert cached_ird[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k


def bn_stats(model, frozen: bool) -> dict:
    params = {n for n, p in model.named_parameters() if p.requires_grad != frozen}
    return {n: b.detach().clone() for n, b in model.named_buffers()
            if n.endswith('running_mean') and n.replace('running_mean', 'weight') in params}


def test_filled_frozen_caches_serve_the_training_with_the_same_first_batch_loss(tmp_path, small_data, monkeypatch):
    """``Trainer.fill_frozen_caches`` computes each training sample's frozen outputs once, per role, before any
    training (what bench_distillation's fill rows do): a second fill computes nothing, and a student trained after
    reads the filled entries with the loss of uncached training."""
    base = tiny_mapkd_student(tmp_path, small_data, monkeypatch, train_limit=3)
    filler = Trainer(load_train_config(write(tmp_path, 'cached', {**base, 'cache': True})), tmp_path / 'fill',
                     progress=False)
    calls = []
    filler.step_hook = lambda: calls.append(1)
    assert filler.fill_frozen_caches(('teacher',)) == 3  # the odd last sample included
    dirs = {role: c.dir for role, c in filler.frozen_caches.items()}
    assert len(list(dirs['teacher'].glob('*.pt'))) == 3 and not list(dirs['coach'].glob('*.pt'))
    assert len(calls) == 2  # after each of the two batches
    assert filler.fill_frozen_caches(('teacher', 'coach')) == 3  # the coach's alone: the teacher's are there
    assert filler.fill_frozen_caches() == 0
    assert not (tmp_path / 'fill').exists()  # filling trains nothing and writes no run
    plain, _ = first_batch_losses(write(tmp_path, 'plain', {**base, 'cache': False}), tmp_path / 'a')
    cached, trainer = first_batch_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'b')
    assert {role: c.dir for role, c in trainer.frozen_caches.items()} == dirs
    for k, v in plain.items():
        assert cached[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    uncached = Trainer(load_train_config(write(tmp_path, 'plain', {**base, 'cache': False})), tmp_path / 'c',
                       progress=False)
    with pytest.raises(ConfigError, match=r"no output cache for \['teacher'\]"):
        uncached.fill_frozen_caches(('teacher',))


@pytest.mark.parametrize('freeze_eval', [False, True])
def test_freeze_eval_keeps_the_frozen_batch_norm_statistics(freeze_eval, tmp_path, small_data, cpu_frozen):
    """Without freeze_eval a frozen layer's batch norm still normalises with (and tracks) each batch's statistics;
    with it the frozen layers run in eval mode and keep the ImageNet statistics, the trainable ones still learn."""
    name = 'student_edge_cpu_baseline'
    cfg = load_train_config(write(tmp_path, name, recipe(name, small_data, cpu_frozen, freeze_eval=freeze_eval)))
    trainer = Trainer(cfg, tmp_path / 'run', progress=False)
    model = trainer.stage.model
    frozen, trainable = bn_stats(model, frozen=True), bn_stats(model, frozen=False)
    assert frozen and trainable
    trainer.fit()
    moved = [n for n, v in frozen.items() if not torch.equal(model.get_buffer(n), v)]
    assert (moved == []) if freeze_eval else (len(moved) == len(frozen))
    assert all(not torch.equal(model.get_buffer(n), v) for n, v in trainable.items())
    assert trainer.prefix_caches == {}  # cache: false


def prefix_losses(cfg_path: Path, out: Path) -> tuple[dict, Trainer]:
    trainer = Trainer(load_train_config(cfg_path), out, progress=False, resume=False)
    batch = trainer._to_device(next(iter(trainer._loader(0))))
    trainer.stage.train_mode()
    torch.manual_seed(0)  # the trainable blocks' stochastic depth
    with torch.no_grad():
        losses = trainer.module(batch, None, None, trainer.model_input(batch, None))
    return {k: float(v) for k, v in losses.items()}, trainer


def test_the_cached_frozen_encoder_prefix_gives_the_same_first_batch_loss(tmp_path, small_data, cpu_frozen,
                                                                          monkeypatch):
    """With freeze_eval and cache, the edge student's frozen stem and blocks 0-4 run once per sample (cached): the
    first batch's losses in train mode equal the uncached ones, and another frozen part gets another folder."""
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path / 'cache'))
    name = 'student_edge_cpu_baseline'
    base = recipe(name, small_data, cpu_frozen, freeze_eval=True, train_limit=2, batch_size=2)
    plain, t0 = prefix_losses(write(tmp_path, 'plain', base), tmp_path / 'a')
    assert t0.prefix_caches == {}
    filling, t1 = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'b')
    c1 = t1.prefix_caches['encoder']
    assert list(t1.prefix_caches) == ['encoder'] and c1.blocks == 5 and len(list(c1.dir.glob('*.pt'))) == 2
    cached, t2 = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'c')
    assert t2.prefix_caches['encoder'].dir == c1.dir
    for k, v in plain.items():
        assert filling[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        assert cached[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # the entries are what the model reads: zeroed, they change the loss
    for path in c1.dir.glob('*.pt'):
        torch.save(torch.zeros_like(torch.load(path, weights_only=True)), path)
    zeroed, _ = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'z')
    assert zeroed['seg'] != pytest.approx(plain['seg'], rel=1e-3)
    # fewer frozen blocks: a shorter prefix under another key; without freeze_eval nothing is cached
    fewer = {**base, 'cache': True, 'freeze': base['freeze'][:-1]}
    t3 = Trainer(load_train_config(write(tmp_path, 'fewer', fewer)), tmp_path / 'd', progress=False)
    assert t3.prefix_caches['encoder'].blocks == 4 and t3.prefix_caches['encoder'].dir != c1.dir
    t4 = Trainer(load_train_config(write(tmp_path, 'off', {**base, 'cache': True, 'freeze_eval': False})),
                 tmp_path / 'e', progress=False)
    assert t4.prefix_caches == {}
    with pytest.raises(ConfigError, match='freeze_eval: true needs freeze'):
        load_train_config(write(tmp_path, 'bad', {**base, 'freeze': []}))


def test_the_coach_caches_its_two_encoders_shared_prefix_with_the_same_first_batch_loss(tmp_path, small_data,
                                                                                         cpu_frozen, monkeypatch):
    """The coach's camera and simulated-LiDAR encoders start from the same ImageNet weights with the same frozen
    stem and blocks 0-4 (coach_cpu.yaml, freeze_eval): one cache folder serves both, filled once per sample, and the
    first batch's losses equal the uncached ones (the distillation terms are computed too, though zero with this
    untrained teacher), and zeroed entries change them (the coach reads the cache). Encoders whose frozen prefixes
    differ get a folder each."""
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path / 'cache'))
    base = recipe('coach_cpu', small_data, cpu_frozen, train_limit=2, batch_size=2)
    assert base['freeze_eval'] is True  # the shipped recipe
    plain, t0 = prefix_losses(write(tmp_path, 'plain', base), tmp_path / 'a')
    assert t0.prefix_caches == {} and {'msrd_teacher', 'tgpd_teacher'} <= set(plain)
    filling, t1 = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'b')
    caches = t1.prefix_caches
    assert sorted(caches) == ['camera.encoder', 'sim_lidar.encoder']
    assert {c.blocks for c in caches.values()} == {5}
    assert caches['camera.encoder'].dir == caches['sim_lidar.encoder'].dir
    assert len(list(caches['camera.encoder'].dir.glob('*.pt'))) == 2
    cached, _ = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'c')
    for k, v in plain.items():
        assert filling[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        assert cached[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for path in caches['camera.encoder'].dir.glob('*.pt'):
        torch.save(torch.zeros_like(torch.load(path, weights_only=True)), path)
    zeroed, _ = prefix_losses(write(tmp_path, 'cached', {**base, 'cache': True}), tmp_path / 'z')
    assert zeroed['seg'] != pytest.approx(plain['seg'], rel=1e-3)
    # the simulated LiDAR's encoder with one block fewer frozen: two prefixes, two folders
    fewer = {**base, 'cache': True, 'freeze': [f for f in base['freeze'] if f != 'sim_lidar.encoder.trunk._blocks.4.']}
    t2 = Trainer(load_train_config(write(tmp_path, 'fewer', fewer)), tmp_path / 'd', progress=False)
    assert t2.prefix_caches['sim_lidar.encoder'].blocks == 4 and t2.prefix_caches['camera.encoder'].blocks == 5
    assert t2.prefix_caches['sim_lidar.encoder'].dir != t2.prefix_caches['camera.encoder'].dir


def test_the_frozen_models_read_their_encoder_prefix_from_the_folder_the_student_shares(tmp_path, small_data,
                                                                                      cpu_frozen, monkeypatch):
    """The MapKD student's frozen teacher and coach have ImageNet's Lite0 stem and blocks 0-4 like the student's
    frozen prefix: one folder serves the three (the prefix key is the images and the prefix weights, not the data
    settings that differ between stages: the baseline student, which loads no LiDAR, shares it). Their filled
    outputs equal uncached forwards, and the fill reads the entries: zeroed, they change the outputs."""
    from mapkd_core.data.dataset import collate
    from mapkd_core.train.cache import data_key
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path / 'cache'))
    cfg = recipe('student_edge_cpu', small_data, cpu_frozen, train_limit=2, batch_size=2, cache=True)
    trainer = Trainer(load_train_config(write(tmp_path, 'mapkd', cfg)), tmp_path / 'run', progress=False)
    folder = trainer.prefix_caches['encoder'].dir
    assert {role: {name: (c.blocks, c.dir) for name, c in caches.items()}
            for role, caches in trainer.frozen_prefix_caches.items()} == {
        'teacher': {'camera.encoder': (5, folder)},
        'coach': {'camera.encoder': (5, folder), 'sim_lidar.encoder': (5, folder)}}
    baseline = Trainer(load_train_config(write(tmp_path, 'base', recipe(
        'student_edge_cpu_baseline', small_data, cpu_frozen, train_limit=2, batch_size=2, cache=True))),
        tmp_path / 'b', progress=False)
    assert baseline.prefix_caches['encoder'].dir == folder
    assert data_key(baseline.train_set) != data_key(trainer.train_set)  # (the data caches stay apart)
    assert trainer.fill_frozen_caches() == 4  # 2 samples, 2 roles
    assert len(list(folder.glob('*.pt'))) == 2  # one prefix per sample for the three encoders
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=2, collate_fn=collate)))

    def outputs(role):
        return trainer.frozen_caches[role].get(batch['token'], 'cpu')
    with torch.no_grad():
        for role in ('teacher', 'coach'):
            direct = getattr(trainer.stage, role).forward_batch(batch)
            assert torch.allclose(outputs(role).semantic, direct.semantic, rtol=1e-4, atol=1e-5), role
            assert torch.allclose(outputs(role).bev, direct.bev, rtol=1e-4, atol=1e-5), role
        filled = {role: outputs(role).bev.clone() for role in ('teacher', 'coach')}
    for role in ('teacher', 'coach'):
        for path in trainer.frozen_caches[role].dir.glob('*.pt'):
            path.unlink()
    for path in folder.glob('*.pt'):
        torch.save(torch.zeros_like(torch.load(path, weights_only=True)), path)
    assert trainer.fill_frozen_caches() == 4
    for role in ('teacher', 'coach'):
        assert not torch.allclose(outputs(role).bev, filled[role], rtol=1e-3, atol=1e-4), role  # (BEV: the
        # untrained heads' logits hardly depend on their input)


def test_evaluation_reads_the_encoder_prefix_from_the_cache_with_the_same_scores(tmp_path, small_data, monkeypatch):
    """``evaluate(prefix_cache=True)`` (the ablation's evaluate_run, ``mapkd-eval --cache-prefix``) scores exactly
    what the plain evaluation scores; a second model with the same prefix weights and other later layers computes no
    prefix, it reads the first one's entries; the trainer's validation of a freeze_eval recipe reads them too, with
    the mIoU of an uncached validation."""
    from mapkd_core.config import load_config
    from mapkd_core.eval.evaluate import evaluate
    from mapkd_core.models.efficientnet_lite import EfficientNetLite
    monkeypatch.setenv('MAPKD_CACHE', str(tmp_path / 'cache'))
    data_cfg = load_config(small_data)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        first, second = build_model('student_edge_cpu'), build_model('student_edge_cpu')  # ImageNet encoders
    assert all(torch.equal(v, second.encoder.prefix_state(5)[k]) for k, v in first.encoder.prefix_state(5).items())
    assert not all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    plain = evaluate(first, data_cfg, 'mini_val', progress=False)
    cached = evaluate(first, data_cfg, 'mini_val', progress=False, prefix_cache=True)
    assert cached['timing']['prefix_cache'] and not plain['timing']['prefix_cache']
    for key in ('iou', 'miou', 'intersection', 'union', 'ap', 'map'):
        assert cached[key] == plain[key], key
    folders = list((tmp_path / 'cache' / 'train-prefix').iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob('*.pt'))) == plain['samples'] == 6
    calls = []
    original = EfficientNetLite.prefix
    monkeypatch.setattr(EfficientNetLite, 'prefix', lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    again = evaluate(second, data_cfg, 'mini_val', progress=False, prefix_cache=True)
    assert calls == [] and again['samples'] == 6 and again['timing']['prefix_cache']
    assert again['iou'] == evaluate(second, data_cfg, 'mini_val', progress=False)['iou']
    # the trainer's validation (freeze_eval: the same frozen ImageNet prefix) reads the same folder
    val = {'val_split': 'mini_val', 'val_limit': 0, 'cache': True}
    name = 'student_edge_cpu_baseline'
    trainer = Trainer(load_train_config(write(tmp_path, 'val', recipe(name, small_data, {}, **val))),
                      tmp_path / 'v', progress=False)
    assert trainer.prefix_caches['encoder'].dir == folders[0]
    calls.clear()
    read = trainer.validate()
    assert calls == []
    uncached = Trainer(load_train_config(write(tmp_path, 'val0', recipe(name, small_data, {}, **{**val, 'cache': False}))),
                       tmp_path / 'v0', progress=False)
    assert uncached.prefix_caches == {}
    assert uncached.validate() == read
    for path in folders[0].glob('*.pt'):  # (the counter counts: without the entries, the validation computes them)
        path.unlink()
    assert trainer.validate() == read and len(calls) == 6
