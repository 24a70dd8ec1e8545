"""Anima LLLite (kohya's v2): the same numbers as kohya's formulas, files both ways, the controls SDXL networks have."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lllite
from lllite.anima import AnimaLLLiteNetwork, create_network, inpaint_condition
from lllite.anima.names import parse_target_layers
from lllite.errors import LLLiteError, OutputExistsError
from lllite.fileformat import LLLiteFileError

from anima_reference import FirstInput, KohyaAnimaReference, diffusers_path

ALL = "self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre,mlp_fc1_pre"


def randomize(network, seed=1, std=0.1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, std)
    return network


def inputs(batch=2, h=12, w=16, sigma=0.7, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 16, 1, h, w, generator=g), torch.full((batch,), sigma),
            torch.randn(batch, 5, 32, generator=g))


def run(transformer, x, t, ctx):
    with torch.no_grad():
        return transformer(x, t, ctx, return_dict=False)[0]


def tensors_of(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
def test_matches_kohyas_formulas_on_the_same_file(anima_transformer, tmp_path, multiplier):
    """Every target kind, ResBlocks and ASPP, a non-square latent, CFG (batch 2 for one image)."""
    network = randomize(create_network(anima_transformer, target_layers=ALL, cond_resblocks=2, use_aspp=True,
                                       cond_emb_dim=16, network_dim=8, cond_dim=32))
    path = network.save(tmp_path / "a.safetensors", dtype=torch.float32)
    sd, _ = tensors_of(path)
    x, t, ctx = inputs()
    image = torch.rand(1, 3, 96, 128) * 2 - 1
    with KohyaAnimaReference(anima_transformer, sd, image, multiplier):
        expected = run(anima_transformer, x, t, ctx)
    loaded = lllite.load(path)
    assert isinstance(loaded, AnimaLLLiteNetwork) and len(loaded) == 10
    loaded.apply_to(anima_transformer)
    loaded.set_cond_image(image)
    loaded.set_multiplier(multiplier)
    got = run(anima_transformer, x, t, ctx)
    bare = None
    loaded.remove()
    bare = run(anima_transformer, x, t, ctx)
    assert (expected - bare).abs().max() > 1e-2  # the control acts
    assert torch.allclose(got, expected, rtol=0, atol=1e-6 * expected.abs().max())


def test_multiplier_zero_and_remove_leave_the_transformer_exactly_as_it_was(anima_transformer):
    keys = {k: v.clone() for k, v in anima_transformer.state_dict().items()}
    x, t, ctx = inputs()
    bare = run(anima_transformer, x, t, ctx)
    network = randomize(create_network(anima_transformer, target_layers=ALL)).apply_to(anima_transformer)
    network.set_cond_image(torch.zeros(3, 96, 128))
    assert not torch.equal(run(anima_transformer, x, t, ctx), bare)
    network.set_multiplier(0.0)
    assert torch.equal(run(anima_transformer, x, t, ctx), bare)
    network.set_multiplier(1.0)
    network.remove()
    assert torch.equal(run(anima_transformer, x, t, ctx), bare)
    state = anima_transformer.state_dict()
    assert list(state) == list(keys) and all(torch.equal(state[k], v) for k, v in keys.items())


def test_a_fresh_network_changes_nothing(anima_transformer):
    x, t, ctx = inputs()
    bare = run(anima_transformer, x, t, ctx)
    network = create_network(anima_transformer, target_layers=ALL).apply_to(anima_transformer)
    network.set_cond_image(torch.rand(1, 3, 96, 128) * 2 - 1)
    assert torch.equal(run(anima_transformer, x, t, ctx), bare)


def test_file_keys_shapes_and_metadata_are_kohyas(anima_transformer, tmp_path):
    network = create_network(anima_transformer, target_layers="self_attn_qkv", use_aspp=True)
    path = network.save(tmp_path / "n.safetensors")
    tensors, metadata = tensors_of(path)
    names = [f"lllite_dit_blocks_{i}_self_attn_{p}_proj" for i in range(2) for p in "qkv"]
    module_keys = {f"{n}.{layer}.{kind}" for n in names for layer in ("down", "mid", "cond_to_film", "up")
                   for kind in ("weight", "bias")} | {f"{n}.depth_embed" for n in names}
    trunk = {k for k in tensors if k.startswith("lllite_conditioning1.")}
    assert set(tensors) == module_keys | trunk
    for part in ("conv1", "norm1", "conv2", "norm2", "conv3", "norm3", "resblocks.0.conv1", "resblocks.0.norm2",
                 "aspp.branches.3.0", "aspp.branches.0.1", "aspp.global_conv.0", "aspp.proj.1", "proj", "out_norm"):
        assert f"lllite_conditioning1.{part}.weight" in trunk and f"lllite_conditioning1.{part}.bias" in trunk
    n = names[0]
    assert tensors[f"{n}.down.weight"].shape == (64, 48)
    assert tensors[f"{n}.mid.weight"].shape == (64, 64 + 32)
    assert tensors[f"{n}.cond_to_film.weight"].shape == (128, 32)
    assert tensors[f"{n}.up.weight"].shape == (48, 64)
    assert tensors[f"{n}.depth_embed"].shape == (32,)
    assert tensors["lllite_conditioning1.conv1.weight"].shape == (32, 3, 4, 4)
    assert tensors["lllite_conditioning1.conv3.weight"].shape == (64, 32, 4, 4)
    assert tensors["lllite_conditioning1.aspp.branches.1.0.weight"].shape == (64, 64, 3, 3)
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert metadata["modelspec.architecture"] == "anima-preview/control-net-lllite"
    assert {k: metadata[k] for k in metadata if k.startswith("lllite.")} == {
        "lllite.version": "2", "lllite.cond_emb_dim": "32", "lllite.mlp_dim": "64",
        "lllite.target_layers": "self_attn_qkv", "lllite.target_atomics": "self_attn_q_pre,self_attn_kv_pre",
        "lllite.cond_dim": "64", "lllite.cond_resblocks": "1", "lllite.use_aspp": "true",
        "lllite.aspp_dilations": "1,2,4,8", "lllite.cond_in_channels": "3", "lllite.inpaint_masked_input": "false",
        "lllite.cond_input_space": "pixel", "lllite.trunk": "stem",  # kohya's trainer writes both on every file
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reads_fp16_bf16_and_fp32_files(anima_transformer, tmp_path, dtype):
    network = randomize(create_network(anima_transformer))
    path = network.save(tmp_path / "n.safetensors", dtype=dtype)
    loaded = lllite.load(path)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(dtype).float())
    assert loaded.config == network.config


def test_a_file_without_metadata_is_read_with_the_loaders_defaults(anima_transformer, tmp_path):
    network = randomize(create_network(anima_transformer))
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    loaded = lllite.load(tmp_path / "bare.safetensors")
    assert loaded.config == network.config


def test_saving_never_overwrites_without_being_asked(anima_transformer, tmp_path):
    network = create_network(anima_transformer)
    network.save(tmp_path / "n.safetensors")
    with pytest.raises(OutputExistsError):
        network.save(tmp_path / "n.safetensors")
    network.save(tmp_path / "n.safetensors", overwrite=True)


def test_a_legacy_file_is_refused_by_name(tmp_path):
    save_file({"lllite_modules.0.up.weight": torch.zeros(2, 2), "lllite_conditioning1.conv1.weight": torch.zeros(1)},
              str(tmp_path / "old.safetensors"))
    with pytest.raises(LLLiteFileError, match="legacy Anima LLLite"):
        lllite.load(tmp_path / "old.safetensors")


def test_a_later_version_is_refused_by_name(anima_transformer, tmp_path):
    path = create_network(anima_transformer).save(tmp_path / "n.safetensors", metadata={"lllite.version": "4"})
    with pytest.raises(LLLiteFileError, match="lllite.version='4'"):
        lllite.load(path)


def test_a_stem_file_that_claims_the_semantic_trunk_is_refused_naming_the_key(anima_transformer, tmp_path):
    path = create_network(anima_transformer).save(tmp_path / "n.safetensors", metadata={"lllite.version": "3",
                                                                                      "lllite.trunk": "semantic"})
    with pytest.raises(LLLiteFileError, match="lllite.trunk='semantic'"):
        lllite.load(path)


def test_metadata_that_disagrees_with_the_tensors_is_named(anima_transformer, tmp_path):
    path = create_network(anima_transformer).save(tmp_path / "n.safetensors", metadata={"lllite.cond_dim": "128"})
    with pytest.raises(LLLiteFileError, match="lllite.cond_dim=128"):
        lllite.load(path)
    path = create_network(anima_transformer).save(tmp_path / "m.safetensors", metadata={"lllite.target_atomics": "mlp_fc1_pre"})
    with pytest.raises(LLLiteFileError, match="lllite_dit_blocks_0_self_attn_q_proj"):
        lllite.load(path)


def test_sdxl_and_anima_networks_refuse_each_others_models(anima_transformer, tiny_unet, tmp_path):
    anima = create_network(anima_transformer)
    with pytest.raises(LLLiteError, match="Anima LLLite network and UNet2DConditionModel"):
        anima.apply_to(tiny_unet)
    sdxl = lllite.create_network(tiny_unet)
    with pytest.raises(LLLiteError, match="SDXL LLLite network and CosmosTransformer3DModel"):
        sdxl.apply_to(anima_transformer)
    sdxl_file = sdxl.save(tmp_path / "sdxl.safetensors")
    from lllite.anima.network import from_state_dict
    with pytest.raises(LLLiteFileError, match="an SDXL LLLite file"):
        from_state_dict(*tensors_of(sdxl_file), source="sdxl.safetensors")


def test_target_layers_resolve_as_kohyas(anima_transformer):
    assert parse_target_layers("self_attn_qkv_cross_q") == ("self_attn_q_pre", "self_attn_kv_pre", "cross_attn_q_pre")
    assert parse_target_layers("mlp_fc1_pre, self_attn_q_pre,self_attn_q_pre") == ("self_attn_q_pre", "mlp_fc1_pre")
    with pytest.raises(LLLiteError, match="'cross_attn_kv_pre'"):
        parse_target_layers("cross_attn_kv_pre")
    counts = {spec: len(create_network(anima_transformer, target_layers=spec))
              for spec in ("self_attn_q", "self_attn_qkv", "self_attn_qkv_cross_q", "mlp_fc1_pre", ALL)}
    assert counts == {"self_attn_q": 2, "self_attn_qkv": 6, "self_attn_qkv_cross_q": 8, "mlp_fc1_pre": 2, ALL: 10}
    names = list(dict(create_network(anima_transformer, target_layers=ALL).lllite_modules()))
    assert names[:5] == [f"lllite_dit_blocks_0_{t}" for t in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                                                               "cross_attn_q_proj", "mlp_layer1")]
    assert [diffusers_path(n) for n in names[:5]] == ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k",
                                                      "transformer_blocks.0.attn1.to_v", "transformer_blocks.0.attn2.to_q",
                                                      "transformer_blocks.0.ff.net.0.proj"]


def test_step_range_on_a_bare_transformer_reads_progress_from_sigma(anima_transformer):
    network = randomize(create_network(anima_transformer)).apply_to(anima_transformer)
    network.set_cond_image(torch.rand(1, 3, 96, 128) * 2 - 1)
    network.set_step_range(0.0, 0.5)
    seen = FirstInput(anima_transformer)
    for sigma, acts in ((0.8, True), (0.3, False)):  # progress 0.2 is inside [0, 0.5], 0.7 is not
        x, t, ctx = inputs(sigma=sigma)
        network.set_multiplier(0.0)
        run(anima_transformer, x, t, ctx)
        bare = seen.value
        network.set_multiplier(1.0)
        run(anima_transformer, x, t, ctx)
        assert (not torch.equal(seen.value, bare)) == acts


def test_masks_keyframes_and_two_networks_add_up_at_the_linear(anima_transformer):
    x, t, ctx = inputs(sigma=0.9)
    seen = FirstInput(anima_transformer)
    run(anima_transformer, x, t, ctx)
    bare = seen.value
    a = randomize(create_network(anima_transformer), seed=3)
    b = randomize(create_network(anima_transformer, target_layers="self_attn_qkv"), seed=4)
    changes = []
    for network in (a, b):
        seen.handle.remove()
        network.apply_to(anima_transformer)
        network.set_cond_image(torch.rand(2, 3, 96, 128) * 2 - 1)
        seen = FirstInput(anima_transformer)
        run(anima_transformer, x, t, ctx)
        changes.append(seen.value - bare)
        network.remove()
    seen.handle.remove()
    a.apply_to(anima_transformer), b.apply_to(anima_transformer)
    seen = FirstInput(anima_transformer)
    run(anima_transformer, x, t, ctx)
    assert torch.allclose(seen.value, bare + changes[0] + changes[1], atol=1e-6)
    b.set_multiplier([(0.0, 0.0), (0.05, 0.5)])  # sigma 0.9: progress 0.1, strength 0.5
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., :, :64] = 1  # the left half of the image: token columns 0..3 of 8
    a.set_mask(mask)
    run(anima_transformer, x, t, ctx)
    got = (seen.value - bare).view(2, 6, 8, -1)
    want = (0.5 * changes[1]).view(2, 6, 8, -1)
    want[:, :, :4] += changes[0].view(2, 6, 8, -1)[:, :, :4]
    assert torch.allclose(got, want, atol=1e-6)


def test_training_reaches_the_trunk_and_every_module_through_gradient_checkpointing(anima_transformer):
    network = randomize(create_network(anima_transformer, target_layers=ALL))
    network.apply_to(anima_transformer)
    network.train()
    network.set_cond_image(torch.rand(2, 3, 96, 128) * 2 - 1)
    x, t, ctx = inputs()
    grads = []
    for checkpointing in (False, True):
        anima_transformer.train()
        if checkpointing:
            anima_transformer.enable_gradient_checkpointing()
        network.zero_grad()
        anima_transformer(x, t, ctx, return_dict=False)[0].square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in network.named_parameters()})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-7) for k in grads[0])


def test_inpainting_networks_take_rgb_and_mask(anima_transformer):
    network = randomize(create_network(anima_transformer, cond_in_channels=4, inpaint_masked_input=True))
    rgb, mask = torch.rand(1, 3, 96, 128) * 2 - 1, (torch.rand(1, 1, 96, 128) > 0.5).float()
    condition = inpaint_condition(rgb, mask, masked_input=True)
    assert condition.shape == (1, 4, 96, 128) and torch.all(condition[:, :3][mask.expand(1, 3, -1, -1) > 0] == 0)
    assert torch.equal(condition[:, 3:], mask * 2 - 1)  # the mask in the RGB's range, +1 where to paint
    assert torch.equal(inpaint_condition(rgb, mask)[:, :3], rgb)
    network.apply_to(anima_transformer)
    with pytest.raises(LLLiteError, match="reads 4 channels"):
        network.set_cond_image(rgb)
    network.set_cond_image(condition)
    x, t, ctx = inputs()
    run(anima_transformer, x, t, ctx)


def test_compiles_as_one_graph_equal_to_eager_and_strength_changes_recompile_nothing(anima_transformer):
    import torch._dynamo as dynamo

    torch.compiler.reset()
    dynamo.utils.counters.clear()
    network = randomize(create_network(anima_transformer, target_layers="self_attn_qkv")).apply_to(anima_transformer)
    network.set_cond_image(torch.rand(1, 3, 96, 128) * 2 - 1)
    compiled = torch.compile(anima_transformer, fullgraph=True, backend="aot_eager")
    x, t, ctx = inputs()
    for multiplier in (1.0, 0.5, [(0.0, 0.2), (0.5, 1.0)]):
        network.set_multiplier(multiplier)
        with torch.no_grad():
            eager = anima_transformer(x, t, ctx, return_dict=False)[0]
            got = compiled(x, t, ctx, return_dict=False)[0]
        assert torch.allclose(got, eager, atol=1e-5)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not dynamo.utils.counters["graph_break"]
    torch.compiler.reset()


def test_a_module_name_that_is_no_dit_linear_is_named(anima_transformer, tmp_path):
    network = create_network(anima_transformer)
    tensors = {k: v.contiguous() for k, v in network.state_dict().items()}
    tensors["lllite_dit_final_layer.down.weight"] = torch.zeros(64, 48)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(LLLiteFileError, match="'lllite_dit_final_layer' is not one"):
        lllite.load(tmp_path / "odd.safetensors")
