"""ControlNet-LLLite for diffusers SDXL and Anima: load kohya's files, attach, train, sample.

    import lllite
    pipe = lllite.load_pipeline("stabilityai/stable-diffusion-xl-base-1.0")   # or "toy", a folder, a file
    network = lllite.load("controllllite_v01032064e_sdxl_canny.safetensors")
    network.apply_to(pipe)
    network.set_cond_image(canny_image)
    network.set_multiplier(0.8)
    image = pipe("a photo of a cat").images[0]

Anima's LLLite (kohya's v2, :mod:`lllite.anima`) loads the same way: ``lllite.load`` tells the files apart.
"""
from .errors import LLLiteError
from .fileformat import LLLiteFileError
from .module import LLLiteModule
from .network import LLLiteNetwork, create_network, load
from .pipelines import load_pipeline

__all__ = ["LLLiteError", "LLLiteFileError", "LLLiteModule", "LLLiteNetwork", "create_network", "load", "load_pipeline"]
__version__ = "0.1.0"
