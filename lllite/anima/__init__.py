"""ControlNet-LLLite for Anima (kohya's DiT LLLite: architectures v2, v2.1 and v3) on diffusers' Anima pipeline.

    import lllite
    network = lllite.load("anima_lllite_lineart.safetensors")   # an AnimaLLLiteNetwork, read from its metadata
    network.apply_to(pipe)                                      # an AnimaModularPipeline, or pipe.transformer
    network.set_cond_image(lineart)                             # v2.1 / v3: encoded by pipe.vae, or set_cond_latent

One module per role, as in every family (:mod:`lllite.families`): ``config``, ``module``, ``names``,
``network``, ``fileformat``, ``objective``, ``pipeline``, ``training``, ``toy``, ``pretrain``; and ``reference``,
v3's reference forward of the frozen DiT.
"""
from .config import KINDS, AnimaLLLiteConfig
from .module import AnimaLLLiteModule, ConditioningTrunk, LatentTrunk, SemanticTrunk, inpaint_condition
from .network import AnimaLLLiteNetwork, create_network

__all__ = ["KINDS", "AnimaLLLiteConfig", "AnimaLLLiteModule", "AnimaLLLiteNetwork", "ConditioningTrunk", "LatentTrunk",
           "SemanticTrunk", "create_network", "inpaint_condition"]
