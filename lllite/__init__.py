"""ControlNet-LLLite for diffusers SDXL and Anima: load kohya's files, attach, train, sample.

    import lllite
    pipe = lllite.load_pipeline("stabilityai/stable-diffusion-xl-base-1.0")   # or "toy", a folder, a file
    network = lllite.load("controllllite_v01032064e_sdxl_canny.safetensors")
    network.apply_to(pipe)
    network.set_cond_image(canny_image)
    network.set_multiplier(0.8)
    image = pipe("a photo of a cat").images[0]

Each model family is a package with the same modules (:mod:`lllite.sdxl`, :mod:`lllite.anima`);
:mod:`lllite.families` tells them apart, so ``lllite.load``, ``lllite.load_pipeline`` and
``lllite.create_network`` take either family's files and models.
"""
from .auto import create_network, load, load_pipeline
from .errors import LLLiteError
from .fileformat import LLLiteFileError
from .sdxl import LLLiteModule, LLLiteNetwork

__all__ = ["LLLiteError", "LLLiteFileError", "LLLiteModule", "LLLiteNetwork", "create_network", "load", "load_pipeline"]
__version__ = "0.1.0"
