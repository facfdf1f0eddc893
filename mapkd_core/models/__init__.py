"""The MapKD model family (teacher, coach, paper student, edge student), built by name from config/models/*.yaml."""
from .config import ModelConfig, load_model_config
from .io import load_model, load_weights, save_weights
from .networks import MODELS, MapModel, MapOutput, build_model

__all__ = ['MODELS', 'MapModel', 'MapOutput', 'ModelConfig', 'build_model', 'load_model', 'load_model_config',
           'load_weights', 'save_weights']
