import pytest
import torch
from conftest import make_tiny_unet, randomize, unet_inputs
from kohya_reference import KohyaReference

import lllite


def run(unet, **kwargs):
    with torch.no_grad():
        return unet(**unet_inputs(**kwargs)).sample


def control(batch=1, size=(64, 64), seed=0):
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def network(tiny_unet):
    return randomize(lllite.create_network(tiny_unet))


def test_fresh_network_is_an_exact_identity(tiny_unet):
    bare = run(tiny_unet)
    network = lllite.create_network(tiny_unet, up_path=True).apply_to(tiny_unet)
    network.set_cond_image(control())
    assert torch.equal(run(tiny_unet), bare)


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
def test_output_equals_kohyas_reference(tiny_unet, network, multiplier):
    image = control()
    with KohyaReference(tiny_unet, (network.state_dict(), image, multiplier)):
        expected = run(tiny_unet)
    network.apply_to(tiny_unet)
    network.set_cond_image(image)
    network.set_multiplier(multiplier)
    result = run(tiny_unet)
    assert not torch.allclose(result, run_bare(tiny_unet, network))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)


def run_bare(unet, network):
    multiplier = network.multiplier
    network.set_multiplier(0)
    try:
        return run(unet)
    finally:
        network.set_multiplier(multiplier)


def test_multiplier_zero_and_no_image_leave_the_unet_untouched(tiny_unet, network):
    bare = run(tiny_unet)
    network.apply_to(tiny_unet)
    assert torch.equal(run(tiny_unet), bare)  # no control image yet
    network.set_cond_image(control())
    network.set_multiplier(0.0)
    assert torch.equal(run(tiny_unet), bare)
    network.set_multiplier(1.0)
    network.set_cond_image(None)
    assert torch.equal(run(tiny_unet), bare)


def test_remove_restores_the_unet_exactly(tiny_unet, network):
    bare = run(tiny_unet)
    keys = list(tiny_unet.state_dict())
    network.apply_to(tiny_unet)
    network.set_cond_image(control())
    assert list(tiny_unet.state_dict()) == keys
    assert not torch.equal(run(tiny_unet), bare)
    network.remove()
    assert torch.equal(run(tiny_unet), bare)
    assert all(not m._forward_pre_hooks for m in tiny_unet.modules())
    assert list(tiny_unet.state_dict()) == keys


def test_applying_twice_is_refused(tiny_unet, network):
    network.apply_to(tiny_unet)
    with pytest.raises(RuntimeError, match="already attached"):
        network.apply_to(tiny_unet)


def test_classifier_free_guidance_batch_repeats_the_images_for_both_halves(tiny_unet, network):
    images = control(batch=2)
    with KohyaReference(tiny_unet, (network.state_dict(), torch.cat([images, images]), 1.0)):
        expected = run(tiny_unet, batch=4)
    network.apply_to(tiny_unet)
    network.set_cond_image(images)  # 2 images, UNet batch 4 = [uncond x2, cond x2]
    torch.testing.assert_close(run(tiny_unet, batch=4), expected, rtol=0, atol=1e-5)


def test_each_sample_of_a_batch_follows_its_own_image(tiny_unet, network):
    images = control(batch=2)
    network.apply_to(tiny_unet)
    network.set_cond_image(images)
    both = run(tiny_unet, batch=2)
    inputs = unet_inputs(batch=2)
    network.set_cond_image(images[1:])
    with torch.no_grad():
        second = tiny_unet(**{k: v for k, v in inputs.items()}).sample[1]
    torch.testing.assert_close(both[1], second, rtol=0, atol=1e-5)


def test_image_count_that_does_not_divide_the_batch_is_refused(tiny_unet, network):
    network.apply_to(tiny_unet)
    network.set_cond_image(control(batch=2))
    with pytest.raises(ValueError, match="2 control image"):
        run(tiny_unet, batch=3)


@pytest.mark.parametrize("pixels", [(1080, 1440), (872, 504), (136, 72)])
def test_sizes_that_are_not_multiples_of_32_run(tiny_unet, network, pixels):
    latent = (pixels[0] // 8, pixels[1] // 8)
    network.apply_to(tiny_unet)
    network.set_cond_image(control(size=pixels))
    out = run(tiny_unet, batch=1, latent=latent)
    assert out.shape == (1, 4, *latent) and torch.isfinite(out).all()
    assert not torch.equal(out, run_bare(tiny_unet, network))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_at_odd_sizes_each_token_reads_the_pixels_under_its_cell(depth):
    # the control must stay spatially aligned with the latent: a pixel changes only its own cell's token
    module = lllite.LLLiteModule(in_dim=8, cond_emb_dim=32, network_dim=4, depth=depth, zero_init=False)
    network = lllite.LLLiteNetwork({"m": module})
    latent = (13, 9)
    network._latent_size = latent
    image = control(size=(104, 72))
    stride = 8 * 2 ** (depth - 1)
    y, x = 100, 70  # the last cell, partly made of padding at depths 2 and 3
    changed = image.clone()
    changed[:, :, y, x] = -image[:, :, y, x]
    rows, cols = lllite.sdxl.module.token_grid(latent, depth)
    embeddings = []
    for img in (image, changed):
        network.set_cond_image(img)
        embeddings.append(module.embed(network._prepared_image(torch.device("cpu"), torch.float32), (rows, cols))[0])
    differs = (embeddings[0] - embeddings[1]).abs().sum(-1).view(rows, cols) > 0
    expected = torch.zeros(rows, cols, dtype=torch.bool)
    expected[y // stride, x // stride] = True
    assert torch.equal(differs, expected)


def test_control_image_of_another_size_is_resized_to_the_generated_image(tiny_unet, network):
    smooth = torch.nn.functional.interpolate(control(size=(8, 8)), size=(64, 64), mode="bilinear")
    network.apply_to(tiny_unet)
    bare = run_bare(tiny_unet, network)
    network.set_cond_image(smooth)
    expected = run(tiny_unet, batch=1)
    network.set_cond_image(torch.nn.functional.interpolate(smooth, size=(128, 128), mode="bilinear"))
    resized = run(tiny_unet, batch=1)
    assert (resized - expected).abs().mean() < 0.1 * (expected - bare).abs().mean()


def test_two_networks_add_their_changes_to_the_original_input(tiny_unet):
    a = randomize(lllite.create_network(tiny_unet), seed=1)
    b = randomize(lllite.create_network(tiny_unet, cond_emb_dim=8, network_dim=16), seed=2)
    image_a, image_b = control(seed=1), control(seed=2)
    with KohyaReference(tiny_unet, (a.state_dict(), image_a, 1.0), (b.state_dict(), image_b, 0.7)):
        expected = run(tiny_unet)
    results = []
    for first, second in ((a, b), (b, a)):
        first.apply_to(tiny_unet)
        second.apply_to(tiny_unet)
        a.set_cond_image(image_a)
        b.set_cond_image(image_b)
        b.set_multiplier(0.7)
        results.append(run(tiny_unet))
        first.remove()
        second.remove()
    torch.testing.assert_close(results[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(results[1], expected, rtol=0, atol=1e-5)


def test_removing_one_of_two_networks_leaves_the_other(tiny_unet):
    a = randomize(lllite.create_network(tiny_unet), seed=1).apply_to(tiny_unet)
    b = randomize(lllite.create_network(tiny_unet), seed=2).apply_to(tiny_unet)
    a.set_cond_image(control(seed=1))
    b.set_cond_image(control(seed=2))
    b.remove()
    only_a = run(tiny_unet)
    b.apply_to(tiny_unet)
    b.set_multiplier(0)
    torch.testing.assert_close(run(tiny_unet), only_a, rtol=0, atol=0)


def count_embeddings(network) -> list:
    """A list that grows by one each time a module computes its conditioning embedding."""
    calls = []
    for _, module in network.lllite_modules():
        module.conditioning1.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_embedding_is_computed_once_per_image_at_inference(tiny_unet, network):
    calls = count_embeddings(network)
    network.apply_to(tiny_unet)
    network.set_cond_image(control())
    for _ in range(3):
        run(tiny_unet)
    assert len(calls) == len(network)
    network.set_cond_image(control(seed=5))
    run(tiny_unet)
    assert len(calls) == 2 * len(network)
    network.to(torch.float64)
    tiny_unet.to(torch.float64)
    with torch.no_grad():
        tiny_unet(**{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                     for k, v in unet_inputs().items() if k != "added_cond_kwargs"},
                  added_cond_kwargs={k: v.double() for k, v in unet_inputs()["added_cond_kwargs"].items()})
    assert len(calls) == 3 * len(network)


def test_a_weight_change_recomputes_the_cached_embedding_once(tiny_unet, network):
    calls = count_embeddings(network)
    network.apply_to(tiny_unet)
    network.set_cond_image(control())
    run(tiny_unet)
    with torch.no_grad():
        for _, module in network.lllite_modules():
            module.mid[0].weight.mul_(2)
    for _ in range(3):
        run(tiny_unet)
    assert len(calls) == 2 * len(network)


def test_calls_in_inference_mode_and_under_no_grad_can_alternate(tiny_unet, network):
    # the cached tensors are written in place by later calls: they must not be inference tensors
    network.apply_to(tiny_unet)
    results = []
    for seed, mode in [(1, torch.inference_mode), (2, torch.no_grad), (1, torch.no_grad), (2, torch.inference_mode)]:
        network.set_cond_image(control(seed=seed))
        network.set_multiplier(0.5 + seed / 10)
        with mode():
            results.append(tiny_unet(**unet_inputs()).sample)
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])
    assert not torch.equal(results[0], results[1])


def test_weight_changes_invalidate_the_cached_embedding(tiny_unet, network):
    network.apply_to(tiny_unet)
    network.set_cond_image(control())
    before = run(tiny_unet)
    with torch.no_grad():
        for _, module in network.lllite_modules():
            module.conditioning1[0].weight.mul_(2)
    with KohyaReference(tiny_unet, (network.state_dict(), control(), 1.0)):
        network.set_multiplier(0)
        expected = run(tiny_unet)
        network.set_multiplier(1)
    after = run(tiny_unet)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)


def test_training_mode_recomputes_the_embedding_with_gradients(tiny_unet, network):
    tiny_unet.requires_grad_(False)
    network.apply_to(tiny_unet).train()
    network.set_cond_image(control())
    for _ in range(2):
        network.zero_grad()
        tiny_unet(**unet_inputs()).sample.square().mean().backward()
        grads = [m.conditioning1[0].weight.grad for _, m in network.lllite_modules()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_training_embeds_every_module_together_with_the_values_and_gradients_of_one_by_one(
        tiny_unet, network, monkeypatch):
    """Training computes all embedding terms at once before the first block; under gradient checkpointing each
    group embeds in its block, one module at a time, as inference does. Same outputs, same gradients."""
    import lllite.sdxl.network as sdxl_network

    calls = []
    together = sdxl_network.embedding_terms_together
    monkeypatch.setattr(sdxl_network, "embedding_terms_together", lambda *a: calls.append(1) or together(*a))
    tiny_unet.requires_grad_(False)
    network.apply_to(tiny_unet).train()
    network.set_cond_image(control(batch=2, seed=3))

    def step():
        network.zero_grad()
        out = tiny_unet(**unet_inputs(batch=2)).sample
        out.square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in network.named_parameters()}

    out_together, grads_together = step()
    assert len(calls) == 1
    tiny_unet.enable_gradient_checkpointing()
    out_one_by_one, grads_one_by_one = step()
    assert len(calls) == 1
    torch.testing.assert_close(out_together, out_one_by_one, rtol=0, atol=1e-6)
    assert grads_together.keys() == grads_one_by_one.keys()
    for name, grad in grads_together.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads_one_by_one[name], rtol=1e-5, atol=1e-7, msg=name)
    tiny_unet.disable_gradient_checkpointing()
    network.eval()
    torch.testing.assert_close(run(tiny_unet), out_together, rtol=0, atol=1e-6)


def test_step_range_switches_the_control_by_timestep_on_a_bare_unet(tiny_unet, network):
    network.apply_to(tiny_unet)
    network.set_cond_image(control())
    network.set_step_range(0.0, 0.5)
    inputs = unet_inputs()
    outputs = {}
    for t in (999, 100):
        inputs["timestep"] = torch.tensor(t)
        with torch.no_grad():
            outputs[t] = tiny_unet(**inputs).sample
        network.set_multiplier(0)
        with torch.no_grad():
            outputs[t, "bare"] = tiny_unet(**inputs).sample
        network.set_multiplier(1)
    assert not torch.equal(outputs[999], outputs[999, "bare"])  # early step: controlled
    assert torch.equal(outputs[100], outputs[100, "bare"])  # late step: free


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_unet_and_network(dtype, network):
    unet = make_tiny_unet()
    image = control()
    with KohyaReference(unet, (network.state_dict(), image, 1.0)):
        expected = run(unet)
    unet.to(dtype)
    network.to(dtype).apply_to(unet)
    network.set_cond_image(image)
    inputs = unet_inputs()
    inputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    inputs["added_cond_kwargs"] = {k: v.to(dtype) for k, v in inputs["added_cond_kwargs"].items()}
    with torch.no_grad():
        out = unet(**inputs).sample
    assert out.dtype == dtype
    assert (out.float() - expected).abs().mean() < 0.05 * expected.abs().mean()


def test_fp32_network_on_a_bf16_unet(network):
    unet = make_tiny_unet().to(torch.bfloat16)
    network.apply_to(unet)
    network.set_cond_image(control())
    inputs = unet_inputs()
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    inputs["added_cond_kwargs"] = {k: v.to(torch.bfloat16) for k, v in inputs["added_cond_kwargs"].items()}
    with torch.no_grad():
        assert torch.isfinite(unet(**inputs).sample).all()


@pytest.mark.parametrize("image, error, message", [
    (torch.zeros(1, 1, 64, 64), ValueError, "3 RGB channels"),
    (torch.zeros(64, 64), ValueError, "3 RGB channels"),
    (torch.full((1, 3, 64, 64), 200.0), ValueError, "0..255"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "float"),
    ("edges.png", TypeError, "str"),
])
def test_bad_control_images_are_refused_clearly(network, image, error, message):
    with pytest.raises(error, match=message):
        network.set_cond_image(image)


def test_pil_and_numpy_images_are_read_as_uint8_over_127_5_minus_1(network):
    import numpy as np
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    expected = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 127.5 - 1
    network.set_cond_image(Image.fromarray(array))
    assert torch.equal(network.cond_image, expected)
    network.set_cond_image(array)
    assert torch.equal(network.cond_image, expected)
    network.set_cond_image(Image.fromarray(array[:, :, 0]))  # greyscale is expanded to RGB
    assert network.cond_image.shape == (1, 3, 16, 24)


def test_zero_to_one_tensors_get_a_warning(network):
    with pytest.warns(UserWarning, match=r"\[-1, 1\]"):
        network.set_cond_image(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("start, end", [(0.5, 0.5), (-0.1, 1.0), (0.0, 1.5)])
def test_bad_step_ranges_are_refused(network, start, end):
    with pytest.raises(ValueError, match="start"):
        network.set_step_range(start, end)


def test_lora_and_lllite_compose_in_either_order(tiny_unet):
    from peft import LoraConfig

    network = randomize(lllite.create_network(tiny_unet), seed=3)
    image = control()

    def with_lora(unet):
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]))
        torch.manual_seed(7)
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.2)
        return unet

    lora_first = with_lora(make_tiny_unet())
    lora_only = run(lora_first)
    network.apply_to(lora_first)
    network.set_cond_image(image)
    expected = run(lora_first)
    network.remove()
    assert torch.equal(run(lora_first), lora_only)

    lllite_first = make_tiny_unet()
    network.apply_to(lllite_first)
    with_lora(lllite_first)
    network.set_cond_image(image)
    assert not torch.allclose(expected, lora_only)
    torch.testing.assert_close(run(lllite_first), expected, rtol=0, atol=1e-5)


def test_the_network_follows_the_unet_to_its_device(network):
    # the meta device stands in for a GPU here: moving the UNet moves the network at the next call
    unet = make_tiny_unet()
    network.apply_to(unet)
    network.set_cond_image(control())
    unet.to("meta")
    inputs = unet_inputs()
    inputs = {k: v.to("meta") if torch.is_tensor(v) and k != "timestep" else v for k, v in inputs.items()}
    inputs["added_cond_kwargs"] = {k: v.to("meta") for k, v in inputs["added_cond_kwargs"].items()}
    with torch.no_grad():
        out = unet(**inputs).sample
    assert out.device.type == "meta" and out.shape == (2, 4, 8, 8)
    assert {p.device.type for p in network.parameters()} == {"meta"}
