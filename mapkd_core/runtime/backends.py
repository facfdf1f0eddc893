"""Inference backends behind one interface: ``run(inputs) -> (semantic, embedding, direction)`` numpy arrays.

* ``torch``: the PyTorch model on the CPU or CUDA (float16 autocast on CUDA when ``fp16``).
* ``onnxruntime``: the exported ONNX file; the CUDA execution provider when present and asked for, else the CPU.
* ``tensorrt``: an engine built from the ONNX file on first use (FP16 optional) and cached under a key of the GPU
  model, the TensorRT version, the ONNX file's hash and the precision, so a stale engine is never reused; a
  build-only mode just builds it (``mapkd-export --engine --build-only``).

TensorRT and CUDA are imported lazily: asking for them where they are missing raises
:class:`BackendUnavailableError` saying what is missing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import MapkdError
from .export import INPUTS, OUTPUTS, file_sha256



class BackendUnavailableError(MapkdError, RuntimeError):
    """The requested backend cannot run on this machine (the message says what is missing)."""


class TorchBackend:
    name = 'torch'

    def __init__(self, model, device: str = 'cpu', fp16: bool = False):
        import torch
        if str(device).startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailableError(f'torch backend on {device}: no CUDA GPU is visible to PyTorch '
                                          '(torch.cuda.is_available() is False); use device cpu')
        self.torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.fp16 = bool(fp16) and self.device.type == 'cuda'

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16, enabled=self.fp16):
            t = {k: torch.from_numpy(np.ascontiguousarray(inputs[k])).to(self.device) for k in INPUTS}
            out = self.model(**t)
        return tuple(x.float().cpu().numpy() for x in out.heads())


class OnnxRuntimeBackend:
    name = 'onnxruntime'

    def __init__(self, onnx_path: str | Path, device: str = 'cpu', threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError('onnxruntime backend: the onnxruntime package is not installed') from None
        available = ort.get_available_providers()
        providers = ['CPUExecutionProvider']
        if str(device).startswith('cuda'):
            if 'CUDAExecutionProvider' not in available:
                raise BackendUnavailableError(f'onnxruntime backend on {device}: this onnxruntime has no CUDA provider '
                                              f'(available: {available}); install onnxruntime-gpu or use device cpu')
            providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
        # all graph optimisations (incl. the NCHWc layout), one operator at a time with ``threads`` intra-op threads
        # (0: one per physical core), no inter-op pool, and no spin-waiting between operators: on a shared CPU (the
        # node beside the camera drivers) spinning threads take cores from the other processes and, here, made
        # inference 10% slower
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:
            from ..errors import WeightsMismatchError
            raise WeightsMismatchError(f'cannot load ONNX file {onnx_path}: {exc}') from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        # the paper student's MLP view transformer does not read the intrinsics: its graph has no such input
        missing = [n for n in ('images', 'cam_to_ego') if n not in self.input_names]
        if missing:
            from ..errors import WeightsMismatchError
            raise WeightsMismatchError(f'{onnx_path} lacks the inputs {missing} (it has {self.input_names})')

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self.input_names}
        return tuple(self.session.run(list(OUTPUTS), feed))


def engine_key(onnx_path: str | Path, fp16: bool, gpu_name: str, trt_version: str) -> str:
    """Cache key of a TensorRT engine: GPU model, TensorRT version, ONNX hash, precision."""
    gpu = re.sub(r'[^A-Za-z0-9]+', '-', gpu_name).strip('-').lower()
    return f'{gpu}_trt{trt_version}_{file_sha256(onnx_path)[:16]}_{"fp16" if fp16 else "fp32"}'


def default_engine_cache() -> Path:
    return Path(os.environ.get('MAPKD_CACHE') or Path.home() / '.cache' / 'mapkd') / 'engines'


class TensorRTBackend:
    name = 'tensorrt'

    def __init__(self, onnx_path: str | Path, fp16: bool = True, cache_dir: str | Path | None = None,
                 device: str = 'cuda', build_only: bool = False, workspace_gb: float = 2.0, log=print):
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailableError(
                'tensorrt backend: the TensorRT Python package is not installed here. It needs an NVIDIA GPU with '
                'CUDA: install it with `pip install ".[tensorrt]"` (tensorrt-cu12) on the GPU machine, or use the '
                'onnxruntime or torch backend.') from None
        import torch
        if not torch.cuda.is_available():
            raise BackendUnavailableError('tensorrt backend: no CUDA GPU is visible (torch.cuda.is_available() is '
                                          'False); TensorRT engines can only be built and run on an NVIDIA GPU')
        self.trt, self.torch = trt, torch
        self.device = torch.device(device if str(device).startswith('cuda') else 'cuda')
        self.logger = trt.Logger(trt.Logger.WARNING)
        gpu = torch.cuda.get_device_name(self.device)
        cache = Path(cache_dir) if cache_dir else default_engine_cache()
        cache.mkdir(parents=True, exist_ok=True)
        self.engine_path = cache / (engine_key(onnx_path, fp16, gpu, trt.__version__) + '.engine')
        if not self.engine_path.is_file():
            log(f'building the TensorRT engine for {gpu} ({"FP16" if fp16 else "FP32"}); this takes a while, once: '
                f'{self.engine_path}')
            self._build(onnx_path, fp16, workspace_gb)
        if build_only:
            self.context = None
            return
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f'TensorRT could not load {self.engine_path}; delete it to rebuild')
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        self.buffers = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16}[self.engine.get_tensor_dtype(name)]
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def _build(self, onnx_path, fp16: bool, workspace_gb: float) -> None:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(Path(onnx_path).read_bytes()):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailableError(f'TensorRT cannot parse {onnx_path}: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailableError(f'TensorRT failed to build an engine from {onnx_path}')
        tmp = self.engine_path.with_name(self.engine_path.name + '.tmp')
        tmp.write_bytes(bytes(serialized))
        tmp.replace(self.engine_path)

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.context is None:
            raise BackendUnavailableError('this TensorRT backend was created in build-only mode')
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for name in (n for n in INPUTS if n in self.buffers):
                buf = self.buffers[name]
                buf.copy_(torch.from_numpy(np.ascontiguousarray(inputs[name])).to(buf.dtype), non_blocking=True)
            self.context.execute_async_v3(self.stream.cuda_stream)
            outs = [self.buffers[n].float().cpu() for n in OUTPUTS]
        self.stream.synchronize()
        return tuple(o.numpy() for o in outs)
