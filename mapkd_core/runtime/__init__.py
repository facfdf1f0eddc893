"""Inference: preprocessing, backends (torch / onnxruntime / tensorrt), ONNX export and the Pipeline."""
from .backends import BACKENDS, BackendUnavailableError
from .pipeline import MapPrediction, Pipeline

__all__ = ['BACKENDS', 'BackendUnavailableError', 'MapPrediction', 'Pipeline']
