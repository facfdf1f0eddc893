"""A nuScenes-format synthetic dataset rendered from the real maps and tracks (``mapkd-synth``)."""
from .generate import SynthConfig, generate

__all__ = ['SynthConfig', 'generate']
