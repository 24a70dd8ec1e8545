"""ControlNet-LLLite for Anima (kohya's DiT LLLite, architecture "v2") on diffusers' Anima pipeline.

    import lllite
    network = lllite.load("anima_lllite_lineart.safetensors")   # an AnimaLLLiteNetwork, read from its metadata
    network.apply_to(pipe)                                      # an AnimaModularPipeline, or pipe.transformer
    network.set_cond_image(lineart)

One module per role, as in every family (:mod:`lllite.families`): ``config``, ``module``, ``names``,
``network``, ``fileformat``, ``objective``, ``pipeline``, ``training``, ``toy``, ``pretrain``.
"""
from .config import AnimaLLLiteConfig
from .module import AnimaLLLiteModule, ConditioningTrunk, inpaint_condition
from .network import AnimaLLLiteNetwork, create_network

__all__ = ["AnimaLLLiteConfig", "AnimaLLLiteModule", "AnimaLLLiteNetwork", "ConditioningTrunk", "create_network",
           "inpaint_condition"]
