"""ControlNet-LLLite for SDXL (kohya's first LLLite) on diffusers' SDXL UNet.

    import lllite
    network = lllite.load("controllllite_v01032064e_sdxl_canny.safetensors")   # an LLLiteNetwork
    network.apply_to(pipe)                                                    # a StableDiffusionXLPipeline, or pipe.unet
    network.set_cond_image(canny_image)

One module per role, as in every family (:mod:`lllite.families`): ``config``, ``module``, ``names``,
``network``, ``fileformat``, ``objective``, ``pipeline``, ``training``, ``toy``, ``pretrain``; and ``group``,
SDXL's modules that read one input computed as one.
"""
from .config import LLLiteConfig
from .module import LLLiteModule
from .network import LLLiteNetwork, create_network

__all__ = ["LLLiteConfig", "LLLiteModule", "LLLiteNetwork", "create_network"]
