"""Training: stages (HD-prior MAE pre-training, teacher, coach, student / baseline), the trainer, checkpoints."""
from .config import TrainConfig, load_train_config
from .trainer import Trainer

__all__ = ['TrainConfig', 'Trainer', 'load_train_config']
