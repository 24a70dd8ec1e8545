"""The toy world: a tiny offline SDXL and a coloured-shapes task where control is visible and measurable.

``lllite.load_pipeline("toy")`` loads the pretrained toy; :func:`build_pipeline` builds one with random weights.
"""
from lllite.toy.pipeline import CONFIGS, ToyConfig, build_pipeline

__all__ = ["CONFIGS", "ToyConfig", "build_pipeline"]
