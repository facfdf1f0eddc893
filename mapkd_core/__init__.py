"""mapkd_core: MapKD models, distillation training, nuScenes data, evaluation and export. No ROS imports here."""

__version__ = '0.1.0'
