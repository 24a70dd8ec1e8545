"""LLLite inside diffusers' SDXL pipelines, unmodified: CFG, batches, step range, variants, LoRA, ControlNet."""
import numpy as np
import pytest
import torch
from conftest import edges, randomize
from PIL import Image

import lllite
from lllite.sdxl.toy import build_pipeline

SIZE = 64


@pytest.fixture
def pipe():
    pipe = build_pipeline("test", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def network(pipe):
    return randomize(lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8), scale=0.3)


def generate(pipe, prompt="a red circle", seed=0, steps=4, **kwargs):
    prompts = [prompt] if isinstance(prompt, str) else prompt
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    kwargs.setdefault("height", SIZE)
    kwargs.setdefault("width", SIZE)
    return np.stack([np.asarray(im, dtype=np.float32) for im in
                     pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=generators,
                          **kwargs).images])


def test_control_changes_the_image_and_strength_zero_does_not(pipe, network):
    bare = generate(pipe)
    network.apply_to(pipe)
    network.set_cond_image(edges(0))
    controlled = generate(pipe)
    network.set_multiplier(0)
    assert np.array_equal(generate(pipe), bare)
    assert np.abs(controlled - bare).mean() > 1.0


def test_each_prompt_follows_its_own_control_image(pipe, network):
    network.apply_to(pipe)
    network.set_cond_image([edges(1), edges(2)])
    both = generate(pipe, ["a red circle", "a blue square"])
    network.set_cond_image(edges(2))
    second = generate(pipe, "a blue square", seed=1)
    np.testing.assert_allclose(both[1], second[0], atol=2.0)


def test_step_range_follows_diffusers_control_guidance_rule(pipe, network):
    network.apply_to(pipe)
    network.set_cond_image(edges(0))
    network.set_step_range(0.2, 0.6)
    active = []
    pipe.unet.register_forward_hook(lambda *args: active.append(network._step_active))
    generate(pipe, steps=10)
    # step i of n is controlled when i/n >= start and (i+1)/n <= end
    assert active == [0.2 <= i / 10 and (i + 1) / 10 <= 0.6 for i in range(10)]


@pytest.mark.parametrize("height, width", [(1080, 1440), (872, 504)])
def test_sizes_that_other_tools_break_on(pipe, network, height, width):
    network.apply_to(pipe)
    network.set_cond_image(edges(0, size=(height, width)))
    image = generate(pipe, steps=2, height=height, width=width)
    network.set_multiplier(0)
    assert image.shape == (1, height, width, 3)
    assert np.abs(image - generate(pipe, steps=2, height=height, width=width)).mean() > 0.5


def test_img2img_and_inpaint_pipelines_take_the_same_network(pipe, network):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    network.apply_to(pipe.unet)
    network.set_cond_image(edges(0))
    start = Image.fromarray(np.full((SIZE, SIZE, 3), 128, dtype=np.uint8))
    mask = Image.fromarray(np.full((SIZE, SIZE), 255, dtype=np.uint8))
    for cls, extra in ((StableDiffusionXLImg2ImgPipeline, {}), (StableDiffusionXLInpaintPipeline, {"mask_image": mask})):
        variant = cls(**pipe.components)
        variant.set_progress_bar_config(disable=True)
        results = []
        for multiplier in (1.0, 0.0):
            network.set_multiplier(multiplier)
            results.append(generate(variant, image=start, strength=0.9, **extra))
        network.set_multiplier(1.0)
        assert np.abs(results[0] - results[1]).mean() > 0.5, cls.__name__


def test_with_a_diffusers_controlnet_in_the_same_pipeline(pipe, network):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    controlnet = ControlNetModel.from_unet(pipe.unet)
    both = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=controlnet)
    both.set_progress_bar_config(disable=True)
    kwargs = dict(image=edges(3), controlnet_conditioning_scale=0.5)
    without = generate(both, **kwargs)
    network.apply_to(both)
    network.set_cond_image(edges(0))
    with_lllite = generate(both, **kwargs)
    network.set_multiplier(0)
    assert np.array_equal(generate(both, **kwargs), without)
    assert np.abs(with_lllite - without).mean() > 0.5


def test_lora_loaded_with_load_lora_weights_composes_in_either_order(pipe, network, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = build_pipeline("test", seed=0)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in donor.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor.unet))

    pipe.load_lora_weights(tmp_path)
    lora_only = generate(pipe)
    network.apply_to(pipe)
    network.set_cond_image(edges(0))
    lora_then_lllite = generate(pipe)
    network.remove()
    assert np.array_equal(generate(pipe), lora_only)

    other = build_pipeline("test", seed=0)
    other.set_progress_bar_config(disable=True)
    network.apply_to(other)
    other.load_lora_weights(tmp_path)
    network.set_cond_image(edges(0))
    assert np.abs(lora_then_lllite - lora_only).mean() > 0.5
    np.testing.assert_allclose(generate(other), lora_then_lllite, atol=1.0)
