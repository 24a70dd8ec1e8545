"""LLLite under torch.compile(unet, fullgraph=True): one graph, eager's results, no recompiles.

Most tests compile with dynamo's CompileCounter as the backend: it counts the graphs and runs each
one as traced, without inductor's code generation, so they stay fast. One inductor test (slow) runs
the real compiler.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from kohya_reference import change as kohya_change
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

import lllite
from lllite.errors import CompiledWithoutNetworkError
from lllite.sdxl.names import find_targets
from lllite.sdxl.toy import build_pipeline


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def unet():
    return build_pipeline("test", seed=0).unet


def network_for(unet, seed=1, **dims):
    return randomize(lllite.create_network(unet, **dims), seed=seed).eval()


def inputs(unet, batch=2, latent=(8, 8), seed=0, timestep=500.0):
    config = unet.config
    generator = torch.Generator().manual_seed(seed)
    text_embeds = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    pixels = [latent[0] * 8, latent[1] * 8]
    return dict(
        sample=torch.randn(batch, 4, *latent, generator=generator),
        timestep=torch.tensor(timestep),
        encoder_hidden_states=torch.randn(batch, 8, config.cross_attention_dim, generator=generator),
        added_cond_kwargs=dict(text_embeds=torch.randn(batch, text_embeds, generator=generator),
                               time_ids=torch.tensor([pixels + [0, 0] + pixels] * batch, dtype=torch.float32)),
    )


def control(seed=0, size=(64, 64)):
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def compiled(module):
    counter = CompileCounter()
    return torch.compile(module, backend=counter, fullgraph=True), counter


def run(unet, **kwargs):
    with torch.no_grad():
        return unet(**kwargs).sample


def no_graph_breaks():
    return not counters["graph_break"]


def test_one_network_compiles_to_one_graph_with_eagers_output(unet):
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(control())
    x = inputs(unet)
    eager, bare = run(unet, **x), None
    network.set_multiplier(0)
    bare = run(unet, **x)
    network.set_multiplier(1)
    fast, counter = compiled(unet)
    result = run(fast, **x)
    assert counter.frame_count == 1 and no_graph_breaks()
    assert not torch.allclose(result, bare)
    torch.testing.assert_close(result, eager, rtol=1e-5, atol=1e-6)


def test_two_networks_compile_to_one_graph_and_add_up_as_in_eager(unet):
    a = network_for(unet, seed=1).apply_to(unet)
    b = network_for(unet, seed=2, cond_emb_dim=8, network_dim=16).apply_to(unet)
    a.set_cond_image(control(1))
    b.set_cond_image(control(2))
    b.set_multiplier(0.7)
    x = inputs(unet)
    eager = run(unet, **x)
    fast, counter = compiled(unet)
    torch.testing.assert_close(run(fast, **x), eager, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1 and no_graph_breaks()


def test_changing_multiplier_image_step_range_and_seed_recompiles_nothing(unet):
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(control())
    fast, counter = compiled(unet)
    run(fast, **inputs(unet))
    settings = [
        dict(multiplier=0.3),
        dict(image=control(5)),
        dict(step_range=(0.0, 0.4)),  # timestep 500 is half way: this step is left free
        dict(step_range=(0.4, 1.0)),
        dict(seed=3, timestep=900.0),
        dict(multiplier=0.0),
    ]
    for setting in settings:
        network.set_multiplier(setting.get("multiplier", 1.0))
        network.set_cond_image(setting.get("image", control()))
        network.set_step_range(*setting.get("step_range", (0.0, 1.0)))
        x = inputs(unet, seed=setting.get("seed", 0), timestep=setting.get("timestep", 500.0))
        result = run(fast, **x)
        torch.testing.assert_close(result, run(unet, **x), rtol=1e-5, atol=1e-6, msg=str(setting))
        if setting.get("multiplier") == 0.0 or setting.get("step_range") == (0.0, 0.4):
            network.set_multiplier(0)  # eager skips the work: the bare UNet
            assert torch.equal(result, run(unet, **x)), setting
    assert counter.frame_count == 1 and no_graph_breaks()


def test_no_control_image_is_the_bare_unet_and_costs_at_most_one_more_graph(unet):
    x = inputs(unet)
    bare = run(unet, **x)
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(control())
    fast, counter = compiled(unet)
    controlled = run(fast, **x)
    network.set_cond_image(None)
    assert torch.equal(run(fast, **x), bare)
    network.set_cond_image(control())
    torch.testing.assert_close(run(fast, **x), controlled, rtol=0, atol=0)
    assert counter.frame_count == 2 and no_graph_breaks()


def test_networks_added_or_removed_after_compiling_take_effect(unet):
    x = inputs(unet)
    bare = run(unet, **x)
    a = network_for(unet, seed=1).apply_to(unet)
    a.set_cond_image(control(1))
    only_a = run(unet, **x)
    fast, counter = compiled(unet)
    run(fast, **x)
    b = network_for(unet, seed=2).apply_to(unet)  # joins a's hooks: what the graph reads changes
    b.set_cond_image(control(2))
    torch.testing.assert_close(run(fast, **x), run(unet, **x), rtol=1e-5, atol=1e-6)
    b.remove()
    torch.testing.assert_close(run(fast, **x), only_a, rtol=1e-5, atol=1e-6)
    a.remove()
    assert torch.equal(run(fast, **x), bare)
    assert no_graph_breaks()


def test_a_network_attached_after_the_compiled_unet_ran_raises_instead_of_being_ignored(unet):
    x = inputs(unet)
    fast, _ = compiled(unet)
    run(fast, **x)  # compiled without hooks: dynamo does not watch them
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(control())
    with pytest.raises(CompiledWithoutNetworkError, match="torch.compiler.reset"):
        run(fast, **x)
    torch.compiler.reset()
    torch.testing.assert_close(run(fast, **x), run(unet, **x), rtol=1e-5, atol=1e-6)


def test_a_pipeline_recompiles_nothing_after_its_first_generation():
    pipe = build_pipeline("test", seed=0)
    pipe.set_progress_bar_config(disable=True)
    eager_unet = pipe.unet
    pipe.unet, counter = compiled(pipe.unet)
    network = network_for(pipe.unet).apply_to(pipe)  # applied to the compiled UNet: hooks the module inside

    def generate(seed, unet):
        pipe.unet = unet
        return pipe("a red circle", num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
                    output_type="np", generator=torch.Generator().manual_seed(seed)).images

    fast = pipe.unet
    for seed, multiplier, image, step_range in [(0, 1.0, 0, (0.0, 1.0)), (1, 0.6, 1, (0.25, 0.75)),
                                                (2, 1.5, 2, (0.5, 1.0))]:
        network.set_multiplier(multiplier)
        network.set_cond_image(control(image))
        network.set_step_range(*step_range)
        images = generate(seed, fast)
        np.testing.assert_allclose(images, generate(seed, eager_unet), atol=1e-4)
        assert counter.frame_count == 1, (seed, multiplier, image, step_range)
    assert no_graph_breaks()


def test_training_compiles_to_one_graph_with_eagers_gradients(unet):
    unet.requires_grad_(False)
    network = network_for(unet).apply_to(unet).train()
    fast, counter = compiled(unet)

    def gradients(model, image):
        network.set_cond_image(image)
        network.zero_grad()
        model(**inputs(unet)).sample.square().mean().backward()
        return {name: p.grad.clone() for name, p in network.named_parameters()}

    for image in (control(1), control(2)):
        expected = gradients(unet, image)
        result = gradients(fast, image)
        assert result.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(result[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
        assert any(g.abs().sum() > 0 for n, g in result.items() if "conditioning1" in n)  # the embeddings train
    assert counter.frame_count == 1 and no_graph_breaks()


def test_a_step_reads_no_tensor_value_on_the_host(unet):
    # on the meta device a tensor has no values: reading one (.item(), float(), bool(), a copy to the
    # host) raises, so a step that runs there waits for no GPU. The step range makes the gate count steps.
    class Pipeline:  # what the network reads from a pipeline: its UNet and its scheduler's timesteps
        pass

    pipe = Pipeline()
    pipe.unet = unet.to("meta")
    pipe.scheduler = Pipeline()
    pipe.scheduler.timesteps = torch.linspace(999, 0, 10, device="meta")
    network = network_for(unet).apply_to(pipe)
    network.set_cond_image(control())
    network.set_step_range(0.2, 0.6)
    network.set_multiplier(0.5)
    x = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in inputs(unet).items()}
    x["added_cond_kwargs"] = {k: v.to("meta") for k, v in x["added_cond_kwargs"].items()}
    for t in pipe.scheduler.timesteps[:3]:
        out = run(unet, **{**x, "timestep": t})
    assert out.device.type == "meta" and network._scales and all(s.device.type == "meta" for s in network._scales.values())


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("source", ["fresh", "file"])  # files list to_k before to_q
def test_a_blocks_modules_run_as_one_down_matmul_and_two_batched_matmuls_per_attention(unet, source, tmp_path):
    def counted():
        with OpCounter() as ops:
            run(unet, **inputs(unet))
        return ops.counts

    bare = counted()
    network = network_for(unet)
    if source == "file":
        network = lllite.load(network.save(tmp_path / "network.safetensors"))
    network.apply_to(unet)
    network.set_cond_image(control())
    run(unet, **inputs(unet))  # the first call computes the embedding terms
    controlled = counted()
    attentions = 2 * len(network) // 4  # attn1 (to_q, to_k, to_v) and attn2 (to_q) of each block
    assert controlled.get("addmm", 0) - bare.get("addmm", 0) == attentions  # down
    assert controlled.get("baddbmm", 0) - bare.get("baddbmm", 0) == 2 * attentions  # mid, up
    assert controlled.get("convolution", 0) == bare.get("convolution", 0)  # no embedding in the step


def test_a_linear_called_on_another_input_than_its_groups_first_computes_its_own_change(unet):
    network = network_for(unet).apply_to(unet)
    image = control()
    network.set_cond_image(image)
    network.set_multiplier(0.8)
    run(unet, **inputs(unet))  # records the latent size and computes the step's scale
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attention = unet.get_submodule(path)
    name = next(t.name for t in find_targets(unet).values() if t.path == path + ".to_k")
    tokens = torch.randn(2, 16, attention.to_k.in_features, generator=torch.Generator().manual_seed(1))
    state = {k: v for k, v in network.state_dict().items()}
    with torch.no_grad():
        attention.to_q(tokens)
        other = tokens + 1
        result = attention.to_k(other)
        expected = F.linear(other + kohya_change(state, name, other, image, 0.8), attention.to_k.weight)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_compiles_the_unet_with_lllite_to_eagers_output_and_keeps_it_across_settings(unet):
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(control())
    fast = torch.compile(unet, fullgraph=True)
    for multiplier, image, step_range in [(1.0, 0, (0.0, 1.0)), (0.5, 1, (0.0, 0.4)), (1.2, 2, (0.4, 1.0))]:
        network.set_multiplier(multiplier)
        network.set_cond_image(control(image))
        network.set_step_range(*step_range)
        torch.testing.assert_close(run(fast, **inputs(unet)), run(unet, **inputs(unet)), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1 and no_graph_breaks()
