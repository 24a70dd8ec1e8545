"""The toy world: a tiny offline SDXL and a coloured-shapes task where control is visible and measurable."""
from lllite.toy.pipeline import CONFIGS, ToyConfig, build_pipeline, load_pipeline

__all__ = ["CONFIGS", "ToyConfig", "build_pipeline", "load_pipeline"]
