"""The MapKD model family (teacher, coach, paper student, edge student, and HDMapNet camera, the paper's baseline),
built by name from config/models/*.yaml; ``import_reference`` imports the authors' checkpoints into them."""
from .config import ModelConfig, load_model_config
from .import_ref import import_reference
from .io import load_model, load_weights, save_weights
from .networks import MODELS, MapModel, MapOutput, build_model

__all__ = ['MODELS', 'MapModel', 'MapOutput', 'ModelConfig', 'build_model', 'import_reference', 'load_model',
           'load_model_config', 'load_weights', 'save_weights']
