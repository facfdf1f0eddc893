"""Inference: preprocessing, backends (torch / onnxruntime / tensorrt), ONNX export and the Pipeline."""
from ..constants import BACKENDS
from .backends import BackendUnavailableError
from .pipeline import MapPrediction, Pipeline

__all__ = ['BACKENDS', 'BackendUnavailableError', 'MapPrediction', 'Pipeline']
