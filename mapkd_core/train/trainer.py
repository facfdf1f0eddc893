"""The trainer: single process or ``torchrun`` DDP, checkpoints each epoch, exact resume, validation, logs.

* Optimiser Adam (lr, weight decay) over the trained model and, with TGPD, its persistent projections; StepLR;
  gradient clipping; mixed precision (float16 + GradScaler) on CUDA.
* Reproducible: seeds; each epoch shuffles with a generator seeded by (seed, epoch) (``DistributedSampler`` with the
  same seed under DDP); the global torch RNG (dropout, stochastic depth) is saved in every checkpoint; the MAE
  masking uses a generator seeded by (seed, epoch, step).
* ``checkpoint.pt`` is written atomically at the end of every epoch (model, TGPD, optimiser, scheduler, scaler, RNG,
  history; loadable with ``torch.load(weights_only=True)``); a run finds it and continues from the next epoch, with
  the same result as a run that was never interrupted. The model is also exported each epoch as
  ``<model name>.safetensors`` (config embedded).
* Validation IoU on ``val_split`` every ``val_every`` epochs; ``epochs.csv`` (per epoch) and ``steps.csv`` (every
  ``log_every`` steps) are the event logs; a tqdm bar shows the epoch's progress.
* Several GPUs or nodes: launch with ``torchrun`` (``WORLD_SIZE`` > 1 switches DDP on; NCCL on CUDA, gloo on CPU;
  the device is ``LOCAL_RANK``'s GPU). Rank 0 validates, logs and writes checkpoints.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..config import from_dict, to_dict
from ..errors import ConfigError, MapkdError
from ..constants import CLASS_NAMES
from ..data.dataset import MapDataset, collate, spread
from ..models.io import model_config_yaml, save_weights
from .cache import CachedMapDataset, FrozenOutputCache, cached_prefixes, data_key, image_key, prefix_caches
from .config import TrainConfig
from .stages import Stage

CHECKPOINT = 'checkpoint.pt'


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not distributed."""
    return int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)), int(os.environ.get('LOCAL_RANK', 0))


def default_device(local_rank: int = 0) -> str:
    return f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)



class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str | None = None, resume: bool = True,
                 progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank, self.world, self.local_rank = distributed_env()
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group('nccl' if (device or default_device(self.local_rank)).startswith('cuda')
                                    else 'gloo')
        self.device = torch.device(device or default_device(self.local_rank))
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.stage = Stage(cfg, self.device)
        self.data_cfg = self.stage.data_config()
        dataset = CachedMapDataset if cfg.cache else MapDataset
        self.train_set = dataset(self.data_cfg, split=cfg.train_split)
        # frozen teacher / coach outputs, cached per sample (keyed by the training data and the weights files)
        self.frozen_caches = {}
        if cfg.cache:
            key = data_key(self.train_set)
            for role, path in (('teacher', cfg.teacher), ('coach', cfg.coach)):
                if getattr(self.stage, role) is not None:
                    self.frozen_caches[role] = FrozenOutputCache(
                        role, path, key, heads=cfg.distill.teacher_heads if role == 'teacher' else ())
        # the frozen encoder prefixes, cached per sample under a key of the images and the prefix weights, shared by
        # every split, stage and model reading them (train/cache.py): the trained model's (freeze_eval only; for
        # training and validation), the frozen teacher's and coach's (their outputs on a frozen-output cache miss
        # and in fill_frozen_caches); encoders with the same frozen prefix (the coach's two) share one folder and
        # one computation per batch
        self.prefix_caches, self.frozen_prefix_caches = {}, {}
        if cfg.cache:
            images = image_key(self.train_set)
            self.prefix_caches = prefix_caches(self.stage.model, self.stage.frozen_prefixes(), images)
            for role in ('teacher', 'coach'):
                model = getattr(self.stage, role)
                if model is not None:  # all frozen: the depth the trained models' frozen prefixes cache
                    self.frozen_prefix_caches[role] = prefix_caches(model, {
                        n: e.shared_prefix_blocks for n, e in model.prefix_encoders().items()}, images)
        if cfg.train_limit:
            self.train_set.frames = spread(self.train_set.frames, cfg.train_limit)
        self.val_set = None
        if cfg.val_split and cfg.val_every:
            self.val_set = dataset(self.data_cfg, split=cfg.val_split)
            if cfg.val_limit:
                self.val_set.frames = spread(self.val_set.frames, cfg.val_limit)
        self.module = self.stage.module
        params = self.stage.trainable_parameters()
        if not params:
            raise ConfigError(f'{cfg.model}: nothing to train: every parameter is frozen (freeze:)')
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.amp = self.device.type == 'cuda' and cfg.amp != 'off'
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        self.ddp = None
        if self.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        self.epoch = 0  # epochs completed
        self.step = 0
        #: called with no argument after every optimizer step and every filled batch (``fill_frozen_caches``): a
        #: caller's hook, e.g. one that follows a scheduler's thread budget (``benchmarks/bench_distillation``)
        self.step_hook = None
        self.history: list[dict] = []
        if resume and (self.out / CHECKPOINT).is_file():
            self._load_checkpoint(self.out / CHECKPOINT)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        state = {
            'model': self.stage.model.state_dict(),
            'model_config': model_config_yaml(self.stage.model.cfg),
            'train_config': yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            'tgpd': self.module.tgpd.state_dict() if self.module.tgpd is not None else {},
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(), 'epoch': self.epoch, 'step': self.step,
            'rng_cpu': torch.get_rng_state(),
            'history': json.dumps(self.history),
        }
        if torch.cuda.is_available():
            state['rng_cuda'] = torch.cuda.get_rng_state_all()
        return state

    def _load_checkpoint(self, path: Path) -> None:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        saved_cfg = yaml.safe_load(ckpt['train_config'])
        try:  # keys added to TrainConfig since the checkpoint was written take their defaults
            saved_cfg = to_dict(from_dict(TrainConfig, saved_cfg))
        except MapkdError:
            pass
        now = to_dict(self.cfg)
        # caching changes no result: a run may resume with it switched on or off
        changed = sorted(k for k in now if k not in ('epochs', 'cache') and saved_cfg.get(k) != now[k])
        if changed:
            raise ConfigError(f'{path} was written by a run with another config (different: {changed}); use another '
                             f'output folder or --no-resume')
        self.stage.model.load_state_dict(ckpt['model'], strict=True)
        if self.module.tgpd is not None:
            self.module.tgpd.load_state_dict(ckpt['tgpd'], strict=True)
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.scheduler.load_state_dict(ckpt['scheduler'])
        self.scaler.load_state_dict(ckpt['scaler'])
        self.epoch, self.step = int(ckpt['epoch']), int(ckpt['step'])
        torch.set_rng_state(ckpt['rng_cpu'])
        if 'rng_cuda' in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt['rng_cuda'])
        self.history = json.loads(ckpt['history'])
        if self.rank == 0 and self.progress:
            print(f'resuming {path} after epoch {self.epoch}')

    def _save(self) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_save(self._state(), self.out / CHECKPOINT)
        save_weights(self.stage.model, self.out / f'{self.stage.model.cfg.name}.safetensors',
                     extra={'epoch': self.epoch, 'train_config': str(self.cfg.model), 'stage': self.cfg.stage})
        (self.out / 'progress.json').write_text(json.dumps({'epoch': self.epoch, 'step': self.step}))

    # -- training -------------------------------------------------------------------------------------------------
    def _loader(self, epoch: int):
        ds = self.train_set
        drop_last = len(ds) > self.cfg.batch_size * self.world
        if self.distributed:
            sampler = torch.utils.data.DistributedSampler(ds, num_replicas=self.world, rank=self.rank, shuffle=True,
                                                          seed=self.cfg.seed, drop_last=drop_last)
            sampler.set_epoch(epoch)
        else:
            g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
            sampler = torch.utils.data.RandomSampler(ds, generator=g)
        return torch.utils.data.DataLoader(ds, batch_size=self.cfg.batch_size, sampler=sampler,
                                           num_workers=self.cfg.workers, collate_fn=collate, drop_last=drop_last,
                                           pin_memory=self.device.type == 'cuda')

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    def train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm
        self.stage.train_mode()
        runner = self.ddp or self.module
        sums: dict[str, float] = {}
        n = 0
        loader = self._loader(epoch)
        bar = tqdm(loader, desc=f'epoch {epoch + 1}/{self.cfg.epochs}', unit='batch', disable=not self.progress,
                   leave=False)
        for i, batch in enumerate(bar):
            batch = self._to_device(batch)
            gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1000003 + epoch * 10007 + i)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                teacher_out, coach_out = self.frozen_outputs(batch)
                losses = runner(batch, teacher_out, coach_out, self.model_input(batch, gen))
            loss = losses['total']
            if not torch.isfinite(loss):
                raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch + 1} step {i}: stopping (last good '
                                         f'checkpoint: {self.out / CHECKPOINT})')
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.stage.trainable_parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f'{float(loss.detach()):.4f}')
            if self.step_hook is not None:
                self.step_hook()
            if self.rank == 0 and self.cfg.log_every and self.step % self.cfg.log_every == 0:
                self._log_csv('steps.csv', {'epoch': epoch + 1, 'step': self.step,
                                            'lr': self.optimizer.param_groups[0]['lr'],
                                            **{k: float(v.detach()) for k, v in losses.items()}})
        bar.close()
        return {k: v / max(n, 1) for k, v in sums.items()}

    def model_input(self, batch: dict, generator: torch.Generator | None) -> dict | None:
        """The stage's model input (see ``Stage.model_input``); with a prefix cache, the batch's inputs plus the
        cached output of the frozen encoder prefix."""
        if not self.prefix_caches:
            return self.stage.model_input(batch, generator)
        return {**{k: batch[k] for k in self.stage.model.inputs},
                'encoder_prefix': cached_prefixes(self.prefix_caches, batch)}

    def _frozen_forward(self, role: str, batch: dict):
        """The frozen ``role``'s output for a batch, its encoder prefix from the cache when there is one."""
        caches = self.frozen_prefix_caches.get(role)
        return getattr(self.stage, role).forward_batch(batch, cached_prefixes(caches, batch) if caches else None)

    @torch.no_grad()
    def frozen_outputs(self, batch: dict):
        """The frozen teacher's and coach's outputs for the batch: from the cache when ``cache`` is on (computed and
        stored the first time a sample is seen), else computed."""
        if not self.frozen_caches:
            return self.stage.frozen_outputs(batch)
        outs = []
        for role in ('teacher', 'coach'):
            model, cache = getattr(self.stage, role), self.frozen_caches.get(role)
            if model is None:
                outs.append(None)
                continue
            out = cache.get(batch['token'], self.device)
            if out is None:
                out = self._frozen_forward(role, batch)
                cache.put(batch['token'], out)
            outs.append(out)
        return tuple(outs)

    @torch.no_grad()
    def fill_frozen_caches(self, roles: tuple[str, ...] = ('teacher', 'coach')) -> int:
        """Compute and store the outputs of the frozen models ``roles`` for every training sample not yet in their
        caches (the entries a later run on the same data and weights reads instead of running the model), in
        dataset order; returns the number of samples computed. Needs ``cache`` on and the frozen models configured."""
        from tqdm import tqdm
        caches = {r: self.frozen_caches[r] for r in roles if r in self.frozen_caches}
        missing = [r for r in roles if r not in caches]
        if missing:
            raise ConfigError(f'fill_frozen_caches: no output cache for {missing} (the config needs cache: true and '
                              f'a weights file for each of them)')
        self.stage.train_mode()  # the frozen models in eval mode
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=self.cfg.batch_size, shuffle=False,
                                             num_workers=self.cfg.workers, collate_fn=collate)
        computed = 0
        for batch in tqdm(loader, desc=f'{"+".join(caches)} outputs', unit='batch', disable=not self.progress):
            for role, cache in caches.items():
                if cache.get(batch['token'], 'cpu') is not None:  # every entry there, with its heads
                    continue
                batch = self._to_device(batch)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    cache.put(batch['token'], self._frozen_forward(role, batch))
                computed += len(batch['token'])
            if self.step_hook is not None:
                self.step_hook()
        return computed

    def validate(self) -> dict:
        """IoU of the trained model on the validation split, with ``mapkd-eval``'s loop (``eval.evaluate``; the
        hd_prior stage reconstructs block-masked maps, the same masks every epoch; a cached frozen prefix is read
        from its cache, which the validation frames share with training under one key)."""
        from ..eval.evaluate import evaluate

        def model_input(batch, i):
            return self.model_input(batch, torch.Generator(device=self.device).manual_seed(12345 + i))
        report = evaluate(self.stage.model, self.data_cfg, device=str(self.device), batch_size=self.cfg.batch_size,
                          workers=self.cfg.workers, vectors=False, progress=False, dataset=self.val_set,
                          model_input=model_input)
        return {'iou': report['iou'], 'miou': report['miou']}

    @torch.no_grad()
    def replica_spread(self) -> float:
        """Largest difference across ranks of a fingerprint of the trained parameters (0.0 = identical replicas).

        The fingerprint is (sum, sum of squares, a fixed random projection) in float64, all-gathered.
        """
        if not self.distributed:
            return 0.0
        flat = torch.cat([p.detach().double().reshape(-1) for p in self.module.parameters()])
        g = torch.Generator(device='cpu').manual_seed(0)
        proj = torch.rand(flat.numel(), generator=g, dtype=torch.float64).to(flat.device)
        mine = torch.stack([flat.sum(), (flat * flat).sum(), (flat * proj).sum()])
        gathered = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        stacked = torch.stack(gathered)
        return float((stacked - stacked[0]).abs().max())

    def _log_csv(self, name: str, row: dict) -> None:
        path = self.out / name
        self.out.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with open(path, 'a', newline='', encoding='utf-8') as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / 'train_config.yaml').write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            if self.stage.init_report and self.progress:
                print(f'initialised {self.stage.init_report["loaded"]} tensors from {cfg.init.path}')
            if self.progress:
                for name, cache in self.prefix_caches.items():
                    print(f'the frozen prefix of {name} (stem + {cache.blocks} blocks, eval mode) is cached in '
                          f'{cache.dir}')
        t_start = time.perf_counter()
        while self.epoch < cfg.epochs:
            e = self.epoch
            t0 = time.perf_counter()
            train = self.train_epoch(e)
            self.scheduler.step()
            self.epoch = e + 1
            spread = self.replica_spread()  # every rank takes part in the all-gather
            row = {'epoch': self.epoch, 'lr': self.optimizer.param_groups[0]['lr'],
                   'seconds': round(time.perf_counter() - t0, 2), 'world_size': self.world,
                   'replica_max_diff': spread,
                   **{f'train_{k}': round(v, 6) for k, v in train.items()}}
            if self.val_set is not None:  # the columns exist in every row (empty when not validated)
                row.update({f'val_iou_{k}': None for k in CLASS_NAMES})
                row['val_miou'] = None
            if self.rank == 0 and self.val_set is not None and (self.epoch % cfg.val_every == 0 or
                                                                 self.epoch == cfg.epochs):
                val = self.validate()
                row.update({f'val_iou_{k}': (None if v is None else round(v, 5)) for k, v in val['iou'].items()})
                row['val_miou'] = None if val['miou'] is None else round(val['miou'], 5)
            self.history.append(row)
            if self.rank == 0:
                self._log_csv('epochs.csv', {k: ('' if v is None else v) for k, v in row.items()})
                if self.progress:
                    print(f'epoch {self.epoch}/{cfg.epochs}: loss {train.get("total", math.nan):.4f}' +
                          (f', val mIoU {row["val_miou"]:.4f}' if row.get('val_miou') is not None else '') +
                          f' ({row["seconds"]} s)')
            self._save()
            if self.distributed:
                dist.barrier()
        result = {'epochs': self.epoch, 'steps': self.step, 'history': self.history,
                  'weights': str(self.out / f'{self.stage.model.cfg.name}.safetensors'),
                  'seconds': time.perf_counter() - t_start}
        return result

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ['CHECKPOINT', 'Trainer', 'distributed_env']
