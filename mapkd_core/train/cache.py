"""Training caches: what does not change between epochs (and between runs) is computed once and read back.

* :class:`CachedMapDataset` stores each sample's :meth:`MapDataset.raw` arrays (the six decoded, resized camera
  images as uint8, intrinsics, the LiDAR points, the map rasters, the SD raster) in one ``.npz`` file. Normalisation,
  padding and tensors are applied on every read, so an item read from the cache equals the uncached item exactly.
* :class:`FrozenOutputCache` stores the frozen teacher's and coach's outputs (``semantic`` logits and the ``bev``
  feature, the only parts MSRD and TGPD read) per sample token, so the student stages run each frozen model once per
  sample instead of once per sample and epoch, and the three seeds of a recipe share them. This is valid because the
  frozen models run in eval mode (no dropout, batch norm with running statistics) on inputs that are a fixed
  function of the sample: the data pipeline has no random augmentation. Whoever adds one must bypass this cache
  for augmented samples (the data cache stays valid if the augmentation is applied after :meth:`MapDataset.raw`).
* :class:`EncoderPrefixCache` stores the output of a frozen encoder prefix (the stem and first blocks of a camera
  encoder, in eval mode: then its output is a fixed function of the sample's images) per sample token: the trained
  model's under ``freeze_eval`` (it was a quarter of the edge student's step), the frozen teacher's and coach's
  (most of their forward when their outputs are computed), and every model's in an evaluation
  (``evaluate(prefix_cache=True)``). Its folder is keyed by the images (:func:`image_key`) and the prefix's weights
  only, so every stage, split and model that reads the same images through the same prefix weights (all the CPU
  recipes: ImageNet's Lite0 stem and blocks 0-4, frozen) computes each sample's prefix once.

All live under the project cache root (:func:`mapkd_core.paths.cache_root`: ``$MAPKD_CACHE``, default
``~/.cache/mapkd``) in a folder named by a key over everything that determines their content: the data config
(grid, image size and normalisation, cameras, map ground truth and SD settings, dataset options), the resolved
dataroot and the size and modification time of its tables, the split's sample tokens, a digest of the data-layer
code, and for the frozen outputs the SHA-256 of each frozen weights file (the prefixes: the image part of that and
the prefix's weights). A change of any of these gives a new
folder; nothing stale is ever reused. Files are written to a temporary name and renamed, so concurrent DataLoader
workers and interrupted runs never leave half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..data.dataset import MapDataset
from ..paths import cache_root

#: bump when the layout of the cached files changes
CACHE_VERSION = 1


def _code_digest() -> str:
    """Digest of the data layer's code (not the synthetic generator's, whose output is keyed by its own cache)."""
    h = hashlib.sha256()
    data_dir = Path(__file__).resolve().parent.parent / 'data'
    for path in sorted(data_dir.glob('*.py')):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _tables_stamp(dataroot: Path, version: str) -> list:
    tables = Path(dataroot) / version
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tables.glob('*.json')) \
        if tables.is_dir() else []


def _key(ds: MapDataset, **content) -> str:
    """Digest of ``content`` with what every key shares: the cache version, the resolved dataroot, the size and
    modification time of its tables, the data-layer code."""
    doc = {'version': CACHE_VERSION, 'dataroot': str(Path(ds.dataroot).resolve()),
           'tables': _tables_stamp(ds.dataroot, ds.cfg.dataset.version), 'code': _code_digest(), **content}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def data_key(ds: MapDataset) -> str:
    """Key of a dataset's cached samples (see the module docstring)."""
    return _key(ds, config=to_dict(ds.cfg), tokens=[f.token for f in ds.frames])


def image_key(ds: MapDataset) -> str:
    """Key of a dataset's network images, what an encoder prefix reads: the image config (size, cameras,
    normalisation) and the dataset version besides what every key holds. Not the split, the frames or the other data
    settings (LiDAR, map rasters, SD prior): a sample token names the same images in every split and stage over one
    dataroot, so they all share the prefix entries."""
    return _key(ds, image=to_dict(ds.cfg.image), dataset_version=ds.cfg.dataset.version)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (the same digest the ONNX export records for its weights)."""
    from ..runtime.export import file_sha256
    return file_sha256(path)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f'{path.name}.{uuid.uuid4().hex}.tmp')
    try:
        with open(tmp, 'wb') as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CachedMapDataset(MapDataset):
    """A :class:`MapDataset` whose :meth:`raw` arrays are read from (or, the first time, written to) the cache."""

    def __init__(self, *args, root: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache_dir = Path(root or cache_root()) / 'train-data' / data_key(self)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, i: int) -> Path:
        return self.cache_dir / f'{self.frames[i].token}.npz'

    def raw(self, i: int) -> dict[str, np.ndarray]:
        path = self._path(i)
        if path.is_file():
            try:
                with np.load(path) as z:
                    return {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError):  # damaged (e.g. disk full): recompute and rewrite it
                pass
        raw = super().raw(i)
        _atomic_write(path, lambda fh: np.savez(fh, **raw))
        return raw


class CachedOutput:
    """The parts of a frozen model's ``MapOutput`` that the distillation losses read (``embedding`` and
    ``direction``: only when the cache keeps them, for ERD and IRD)."""

    def __init__(self, semantic: torch.Tensor, bev: torch.Tensor, embedding: torch.Tensor | None = None,
                 direction: torch.Tensor | None = None):
        self.semantic = semantic
        self.bev = bev
        self.embedding = embedding
        self.direction = direction


#: the instance heads a frozen-output cache can keep besides ``semantic`` and ``bev``
INSTANCE_HEADS = ('embedding', 'direction')


class FrozenOutputCache:
    """Per-sample ``semantic`` and ``bev`` outputs of one frozen model (teacher or coach) over one dataset, and the
    instance heads named in ``heads`` (``embedding``, ``direction``; an entry without one of them is then computed
    again and rewritten with it; the entries stay readable by a cache that needs fewer heads)."""

    def __init__(self, role: str, weights: str | Path, dataset_key: str, root: str | Path | None = None,
                 heads: tuple[str, ...] = ()):
        unknown = [h for h in heads if h not in INSTANCE_HEADS]
        if unknown:
            raise ValueError(f'frozen output cache: unknown head(s) {unknown}; it keeps {", ".join(INSTANCE_HEADS)}')
        key = hashlib.sha256(json.dumps({'version': CACHE_VERSION, 'role': role, 'data': dataset_key,
                                         'weights': file_digest(weights)}).encode()).hexdigest()[:20]
        self.role = role
        self.heads = tuple(heads)
        self.dir = Path(root or cache_root()) / 'train-frozen' / key
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, token: str) -> Path:
        return self.dir / f'{token}.pt'

    def get(self, tokens: list[str], device) -> CachedOutput | None:
        """The batch's outputs when every token is cached (with every head of ``heads``), else None."""
        paths = [self._path(t) for t in tokens]
        if not all(p.is_file() for p in paths):
            return None
        try:
            parts = [torch.load(p, map_location='cpu', weights_only=True) for p in paths]
        except Exception:  # a damaged file: recompute the batch
            return None
        if not all(h in p for h in self.heads for p in parts):
            return None
        stacked = {k: torch.stack([p[k] for p in parts]).to(device) for k in ('semantic', 'bev', *self.heads)}
        return CachedOutput(**stacked)

    def put(self, tokens: list[str], out) -> None:
        parts = {k: getattr(out, k).detach().float().cpu() for k in ('semantic', 'bev', *self.heads)}
        for i, token in enumerate(tokens):
            entry = {k: v[i].clone() for k, v in parts.items()}
            _atomic_write(self._path(token), lambda fh, e=entry: torch.save(e, fh))


class EncoderPrefixCache:
    """Per-sample output of a model's frozen encoder prefix (``CamEncoder.prefix``: the stem and the first
    ``blocks`` blocks, in eval mode), one (N, C, h, w) tensor per sample token, keyed by the images
    (:func:`image_key`) and the prefix's parameters and batch-norm statistics. The caller runs those layers in eval
    mode (``freeze_eval``, a frozen model, an evaluation)."""

    def __init__(self, encoder, blocks: int, images_key: str, root: str | Path | None = None):
        h = hashlib.sha256(json.dumps({'version': CACHE_VERSION, 'images': images_key, 'blocks': blocks}).encode())
        for name, tensor in encoder.prefix_state(blocks).items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.encoder = encoder
        self.blocks = blocks
        self.dir = Path(root or cache_root()) / 'train-prefix' / h.hexdigest()[:20]
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, token: str) -> Path:
        return self.dir / f'{token}.pt'

    @torch.no_grad()
    def __call__(self, tokens: list[str], images: torch.Tensor) -> torch.Tensor:
        """The prefix of a batch's images (B, N, 3, H, W) -> (B, N, C, h, w): read when every token is cached,
        else computed and stored."""
        paths = [self._path(t) for t in tokens]
        if all(p.is_file() for p in paths):
            try:
                return torch.stack([torch.load(p, map_location='cpu', weights_only=True)
                                    for p in paths]).to(images.device)
            except Exception:  # a damaged file: recompute the batch
                pass
        b, n = images.shape[:2]
        out = self.encoder.prefix(images.flatten(0, 1), self.blocks)
        out = out.contiguous().view(b, n, *out.shape[1:])
        stored = out.detach().float().cpu()
        for i, path in enumerate(paths):
            _atomic_write(path, lambda fh, t=stored[i].clone(): torch.save(t, fh))
        return out


def prefix_caches(model, blocks: dict[str, int], images_key: str,
                  root: str | Path | None = None) -> dict[str, EncoderPrefixCache]:
    """A cache for each of ``model``'s camera encoders named in ``blocks`` ({module name: prefix blocks}, e.g.
    ``Stage.frozen_prefixes()``); encoders with the same prefix weights (the coach's two) get the same folder."""
    encoders = model.prefix_encoders()
    return {name: EncoderPrefixCache(encoders[name], n, images_key, root) for name, n in blocks.items() if n}


def cached_prefixes(caches: dict[str, EncoderPrefixCache], batch: dict) -> dict:
    """The ``encoder_prefix`` argument of a model's forward for ``batch`` ({name: (blocks, (B, N, C, h, w))}) from
    its :func:`prefix_caches`: read, or computed and stored, once per folder for encoders that share one."""
    shared: dict[Path, torch.Tensor] = {}
    for cache in caches.values():
        if cache.dir not in shared:
            shared[cache.dir] = cache(batch['token'], batch['images'])
    return {name: (c.blocks, shared[c.dir]) for name, c in caches.items()}


__all__ = ['CACHE_VERSION', 'CachedMapDataset', 'CachedOutput', 'EncoderPrefixCache', 'FrozenOutputCache',
           'cached_prefixes', 'data_key', 'file_digest', 'image_key', 'prefix_caches']
