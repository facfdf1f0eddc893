"""Evaluate a model over a split: pooled IoU, vector AP, speed; JSON report, table and BEV pictures.

``evaluate`` is the one evaluation loop: ``mapkd-eval`` runs it, and the trainer's validation calls it on its val
set (``vectors=False``: IoU only; the HD-prior stage passes ``model_input`` to feed masked maps), so ``epochs.csv``
and ``mapkd-eval`` agree on the same weights and frames (``test_training.py`` holds them together). The data follows
the model: the model config's grid and image size override the data config's, and
LiDAR / SD rasters are loaded only for the models that read them.

``prefix_cache=True`` reads each camera encoder's prefix (the stem and the blocks before the stride-8 endpoint,
three quarters of the CPU edge student's forward at 128 x 352) from the training caches' ``EncoderPrefixCache``
instead of computing it, computing and storing the samples not there yet: the same output (the model runs in eval
mode), and worth it when several models with the same prefix weights read the same frames (the ablation's rows,
whose frozen prefixes are all ImageNet's Lite0; a fine-tuned prefix gets a folder of its own and gains nothing).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import DataConfig, replace
from ..constants import CLASS_NAMES
from ..data.dataset import MapDataset, collate, spread
from .ap import APConfig, APMeter
from .iou import IoUMeter
from .pictures import raster_picture, side_by_side, vector_picture
from .vectorize import VectorizeConfig, vectorize


def data_config_for(model, data_cfg: DataConfig) -> DataConfig:
    """The data config with the model's grid and images (size, cameras, normalisation), loading only the inputs the
    model reads."""
    mc = model.cfg
    ds = replace(data_cfg.dataset, load_lidar='lidar' in model.inputs, load_sd_prior='sd_prior' in model.inputs,
                 load_map_gt=True)
    return replace(data_cfg, grid=mc.grid, image=replace(data_cfg.image, height=mc.image.height,
                                                         width=mc.image.width, cameras=mc.image.cameras,
                                                         mean=mc.image.mean, std=mc.image.std),
                   dataset=ds)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, data_cfg: DataConfig, split: str | None = None, *, device='cpu', batch_size: int = 2,
             workers: int = 0, limit: int | None = None, vectors: bool = True, ap_cfg: APConfig | None = None,
             vec_cfg: VectorizeConfig | None = None, pictures: int = 0, picture_tokens=(), out_dir: Path | None = None,
             progress: bool = True, dataset: MapDataset | None = None, model_input=None,
             prefix_cache: bool = False) -> dict:
    """Run ``model`` over the split and return the report dict (see module docstring).

    ``limit`` frames are taken evenly spread over the split (``data.dataset.spread``), as the trainer's ``val_limit``.
    ``dataset`` replaces the split's dataset (the trainer passes its own, maybe cached, val set). ``model_input``:
    ``f(batch, batch_index) -> dict | None``, the model's keyword inputs for a batch instead of
    ``model.forward_batch(batch)`` (None: forward_batch). ``prefix_cache``: the encoders' prefixes cached (module
    docstring)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval().to(device)
    cfg = dataset.cfg if dataset is not None else data_config_for(model, data_cfg)
    ds = dataset if dataset is not None else MapDataset(cfg, split=split)
    if limit:
        ds.frames = spread(ds.frames, limit)
    prefixes = None  # batch -> the encoder_prefix argument
    if prefix_cache:
        from ..train.cache import cached_prefixes, image_key, prefix_caches
        caches = prefix_caches(model, {n: e.shared_prefix_blocks for n, e in model.prefix_encoders().items()},
                               image_key(ds))
        if caches:
            prefixes = lambda batch: cached_prefixes(caches, batch)  # noqa: E731
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    # one IoU and one AP meter per scene (a split's pooled score hides a scene the model cannot read); the pooled
    # scores are their merge
    scene_iou: dict[str, IoUMeter] = {}
    scene_ap: dict[str, APMeter] = {}
    t_model, t_vec, n = 0.0, 0.0, 0
    picked = set(picture_tokens)
    frames = {f.token: f for f in ds.frames}
    drawn = []
    if out_dir and (pictures or picked):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    for b, batch in enumerate(tqdm(loader, desc='mapkd-eval', unit='batch', disable=not progress)):
        batch = to_device(batch, device)
        if str(device) != 'cpu' and torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        kwargs = model_input(batch, b) if model_input is not None else None
        if kwargs is not None:
            out = model(**kwargs)
        else:
            out = model.forward_batch(batch, prefixes(batch) if prefixes else None)
        if str(device) != 'cpu' and torch.cuda.is_available():
            torch.cuda.synchronize()
        t_model += time.perf_counter() - t0
        for i, token in enumerate(batch['token']):
            scene = frames[token].scene_name
            scene_iou.setdefault(scene, IoUMeter()).update(out.semantic[i:i + 1].float(), batch['semantic'][i:i + 1])
        n += out.semantic.shape[0]
        if not vectors:
            continue
        sem = out.semantic.float().cpu().numpy()
        emb = out.embedding.float().cpu().numpy()
        dirs = out.direction.float().cpu().numpy()
        for i, token in enumerate(batch['token']):
            t0 = time.perf_counter()
            pred = vectorize(sem[i], emb[i], dirs[i], cfg.grid, vec_cfg)
            t_vec += time.perf_counter() - t0
            frame = frames[token]
            gt = ds._map_gt.vectors(frame.city, frame.ego_to_global)
            scene_ap.setdefault(frame.scene_name, APMeter(cfg.grid, ap_cfg)).update(pred, gt)
            if out_dir and (token in picked or (len(drawn) < pictures and not picked)):
                drawn.append(_picture(out_dir, token, batch['semantic'][i].cpu().numpy(), sem[i], pred, gt, cfg.grid))
    model.train(was_training)
    iou = IoUMeter()
    ap = APMeter(cfg.grid, ap_cfg)
    for scene in scene_iou:
        iou.merge(scene_iou[scene])
        if scene in scene_ap:
            ap.merge(scene_ap[scene])
    report = {'split': split or getattr(ds, 'split', None) or cfg.dataset.split, 'samples': n, 'classes': list(CLASS_NAMES), **iou.compute()}
    if vectors:
        report.update(ap.compute())
    report['scenes'] = {}
    for scene in sorted(scene_iou):
        m = scene_iou[scene].compute()
        report['scenes'][scene] = {'samples': m['samples'], 'iou': m['iou'], 'miou': m['miou'],
                                   'map': scene_ap[scene].compute()['map'] if scene in scene_ap else None,
                                   'intersection': m['intersection'], 'union': m['union']}
    report['timing'] = {'model_ms_per_sample': 1e3 * t_model / max(n, 1),
                        'vectorize_ms_per_sample': 1e3 * t_vec / max(n, 1) if vectors else None,
                        'fps_model_and_vectorize': n / max(t_model + t_vec, 1e-9), 'device': str(device),
                        'batch_size': batch_size, 'prefix_cache': prefixes is not None}
    report['pictures'] = [str(p) for p in drawn]
    return report


def _picture(out_dir, token, gt_semantic, pred_semantic, pred_vectors, gt_vectors, grid) -> Path:
    pic = side_by_side(raster_picture(gt_semantic, grid, title='ground truth'),
                       raster_picture(pred_semantic, grid, title='prediction (argmax)'),
                       vector_picture(gt_vectors, grid, title='ground-truth polylines'),
                       vector_picture(pred_vectors, grid, title='predicted polylines', show_scores=True))
    path = Path(out_dir) / f'{token}.png'
    cv2.imwrite(str(path), pic)
    return path


def _pct(v) -> str:
    return '-' if v is None else f'{100 * v:.2f}'


def format_table(report: dict, scenes: bool = False) -> str:
    """A plain-text table: IoU per class, mIoU, AP per class and threshold, mAP, speed (``scenes``: then one line
    per scene)."""
    lines = [f'samples: {report["samples"]}   split: {report["split"]}']
    iou = report['iou']
    lines.append('IoU   ' + '  '.join(f'{c}: {_pct(iou[c])}' for c in CLASS_NAMES[1:]) +
                 f'   mIoU: {_pct(report["miou"])}')
    if 'ap' in report:
        ths = [f'{t:g}' for t in report['thresholds']]
        kind = 'bidirectional' if report['bidirectional'] else 'one-directional'
        lines.append(f'AP ({kind} Chamfer, IoU gate {report["iou_gate"]:g})  ' + '  '.join(f'{t} m' for t in ths))
        for c in CLASS_NAMES[1:]:
            row = report['ap'][c]
            cells = '  '.join(f'{100 * row[t]:6.2f}' for t in ths) if row else '  (no frame)'
            lines.append(f'  {c:<14}{cells}')
        lines.append(f'mAP: {_pct(report["map"])}')
    t = report['timing']
    vec = t['vectorize_ms_per_sample']
    lines.append(f'speed: model {t["model_ms_per_sample"]:.1f} ms/sample' +
                 (f', vectorize {vec:.1f} ms/sample' if vec is not None else '') +
                 f', {t["fps_model_and_vectorize"]:.2f} frames/s ({t["device"]})')
    if scenes and report.get('scenes'):
        lines.append('per scene: samples, IoU ' + ' / '.join(CLASS_NAMES[1:]) + ', mIoU, mAP')
        for name, r in report['scenes'].items():
            lines.append(f'  {name:<24}{r["samples"]:5d}  ' + ' / '.join(_pct(r['iou'][c]) for c in CLASS_NAMES[1:]) +
                         f'  {_pct(r["miou"])}  {_pct(r["map"])}')
    return '\n'.join(lines)


def write_report(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + '\n', encoding='utf-8')
    return path


def _json_default(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)
