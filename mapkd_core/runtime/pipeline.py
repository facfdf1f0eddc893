"""The one inference pipeline that the ROS node, the demo, the benchmarks and offline tools call:
preprocess -> backend -> vectorize -> :class:`MapPrediction`.

A model package is the ``.safetensors`` weights file written by training (its model config is embedded) and,
optionally, the ONNX file exported from it (``mapkd-export``) and a TensorRT engine cache folder. When the
onnxruntime or TensorRT backend is asked for and no ONNX file is given, the pipeline exports one next to the cache
(keyed by the weights' hash) on first use. An ONNX file exported from other weights is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import BACKENDS
from ..data.vectors import MapVector
from ..errors import UsageError, WeightsMismatchError
from ..eval.vectorize import VectorizeConfig, compile_kernels, vectorize
from ..models.io import load_model
from .backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from .export import EXPORT_FORMAT, check_onnx_matches, export_onnx, file_sha256
from .preprocess import prepare_inputs


@dataclass
class MapPrediction:
    """The map around the vehicle at ``stamp``: polylines in metres in ``frame_id`` (REP-103 ego frame)."""

    polylines: list[MapVector]
    stamp: float | None = None
    frame_id: str = 'base_link'
    timing_ms: dict[str, float] = field(default_factory=dict)

    def by_class(self) -> dict[str, list[MapVector]]:
        out: dict[str, list[MapVector]] = {}
        for v in self.polylines:
            out.setdefault(v.class_name, []).append(v)
        return out


class Pipeline:
    """Load a model package once; call with six images and their calibration.

    ``backend``: 'torch', 'onnxruntime' or 'tensorrt'; ``device``: 'cpu' or 'cuda' ('cuda:N');
    ``fp16``: half precision on the GPU (torch autocast / TensorRT FP16); ``threads``: ONNX Runtime's intra-op
    threads (0: its default, one per physical core; torch's are global: ``torch.set_num_threads``).
    """

    def __init__(self, weights: str | Path, backend: str = 'torch', device: str = 'cpu', onnx: str | Path | None = None,
                 engine_cache: str | Path | None = None, fp16: bool = False, vectorize_cfg: VectorizeConfig | None = None,
                 frame_id: str = 'base_link', cache_dir: str | Path | None = None, log=print, threads: int = 0):
        if backend not in BACKENDS:
            raise UsageError(f'unknown backend {backend!r}: use one of {", ".join(BACKENDS)}')
        self.weights = Path(weights)
        self.model = load_model(self.weights)
        self.cfg = self.model.cfg
        if self.cfg.name not in ('student', 'student_edge', 'hdmapnet_cam'):
            raise WeightsMismatchError(f'{weights} holds a {self.cfg.name}; the pipeline runs camera-only models (students, '
                             'hdmapnet_cam)')
        self.grid = self.cfg.grid
        self.cameras = tuple(self.cfg.image.cameras)
        self.frame_id = frame_id
        self.vectorize_cfg = vectorize_cfg or VectorizeConfig()
        self.backend_name = backend
        if backend == 'torch':
            self.backend = TorchBackend(self.model, device, fp16)
            return
        onnx = Path(onnx) if onnx else self._cached_onnx(cache_dir, log)
        check_onnx_matches(onnx, self.weights)
        self.onnx = onnx
        if backend == 'onnxruntime':
            self.backend = OnnxRuntimeBackend(onnx, device, threads=threads)
        else:
            self.backend = TensorRTBackend(onnx, fp16=fp16, cache_dir=engine_cache, device=device, log=log)

    def _cached_onnx(self, cache_dir, log) -> Path:
        from .backends import default_engine_cache
        root = Path(cache_dir) if cache_dir else default_engine_cache().parent / 'onnx'
        path = root / f'{self.cfg.name}_{file_sha256(self.weights)[:16]}_f{EXPORT_FORMAT}.onnx'
        if not path.is_file():
            log(f'exporting {self.weights} to ONNX (once): {path}')
            export_onnx(self.model, path, self.weights)
        return path

    def __call__(self, images: Sequence[np.ndarray], intrinsics, cam_to_ego, stamp: float | None = None) -> MapPrediction:
        """Six RGB uint8 images (any size, in the model's camera order), their (N, 3, 3) intrinsics at each image's
        size and (N, 4, 4) camera-to-ego extrinsics -> polylines in metres in the ego frame."""
        t0 = time.perf_counter()
        inputs = prepare_inputs(images, intrinsics, cam_to_ego, self.cfg.image)
        t1 = time.perf_counter()
        semantic, embedding, direction = self.backend.run(inputs)
        t2 = time.perf_counter()
        polylines = vectorize(semantic[0], embedding[0], direction[0], self.grid, self.vectorize_cfg)
        t3 = time.perf_counter()
        timing = {'preprocess': 1e3 * (t1 - t0), 'inference': 1e3 * (t2 - t1), 'vectorize': 1e3 * (t3 - t2),
                  'total': 1e3 * (t3 - t0)}
        return MapPrediction(polylines, stamp, self.frame_id, timing)

    def warmup(self, runs: int = 2) -> None:
        """Run the backend on zero images at the model's size and compile (or load) the vectorizer's kernels, so the
        first real frame pays no lazy start-up."""
        compile_kernels(self.grid)
        n = len(self.cameras)
        h, w = self.cfg.image.height, self.cfg.image.width
        k = np.tile(np.array([[w, 0.0, w / 2], [0.0, w, h / 2], [0.0, 0.0, 1.0]]), (n, 1, 1))
        images = [np.zeros((h, w, 3), np.uint8)] * n
        for _ in range(runs):
            self.raw(images, k, np.tile(np.eye(4), (n, 1, 1)))

    def raw(self, images, intrinsics, cam_to_ego):
        """The backend's raw outputs (semantic, embedding, direction) for one set of images."""
        return self.backend.run(prepare_inputs(images, intrinsics, cam_to_ego, self.cfg.image))
