"""Anima LLLite v2.1 and v3 against a plain-torch restatement of kohya's formulas, on the toy Anima pipeline.

The restatement reads the network's tensors by kohya's key names (``lllite_conditioning1.<...>``,
``<module>.<param>``), runs the reference forward with its own loop over the DiT's submodules, and attaches
the way kohya's ``apply_to`` does: by replacing each target Linear's ``forward`` (the network itself is not
attached then). Every network is random everywhere (zero-initialised and gate parameters included).
"""
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from anima_reference import FirstInput, diffusers_path
from safetensors import safe_open

import lllite
from lllite.anima import create_network
from lllite.anima.config import GATE_INIT_BIAS
from lllite.anima.pipeline import (
    encode_prompts,
    encode_with,
    generate,
    transformer_inputs,
)
from lllite.errors import LLLiteError

T = "lllite_conditioning1"
ALL = "self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre,mlp_fc1_pre"
LATENT = (8, 12)  # the generated latent: 64 x 96 pixels, a token grid of 4 rows x 6 columns
SMALL = {"cond_emb_dim": 16, "network_dim": 8, "cond_dim": 16, "target_layers": ALL}
V3 = {"cond_input_space": "latent", "trunk": "semantic"}
KINDS = {
    "v2.1": {"cond_input_space": "latent"},
    "v2.1-aspp": {"cond_input_space": "latent", "use_aspp": True, "cond_resblocks": 2},
    "v2.1-mask": {"cond_input_space": "latent", "cond_in_channels": 4},
    "v3-1tap-scalar-zero": dict(V3, ref_block="1", gate="scalar"),
    "v3-middle-scalar-zero": dict(V3, gate="scalar", ref_timestep=0.5),
    "v3-2taps-vector-uncond": dict(V3, ref_block="-1,1", gate="vector", ref_context="uncond", ref_timestep=0.3),
    "v3-2taps-none-caption": dict(V3, ref_block="0,2", gate="none", ref_context="caption"),
    "v3-2taps-vector-caption-aspp": dict(V3, ref_block="0,2", gate="vector", ref_context="caption", use_aspp=True),
}


# ------------------------------------------------------------------ kohya's formulas, restated
def _conv(x, sd, key, **kw):
    return F.conv2d(x, sd[f"{key}.weight"], sd[f"{key}.bias"], **kw)


def _gn(x, sd, key):
    groups = 8
    while groups > 1 and x.shape[1] % groups:
        groups //= 2
    return F.group_norm(x, groups, sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def _ln(x, sd, key):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def _linear(x, sd, key):
    return F.linear(x, sd[f"{key}.weight"], sd[f"{key}.bias"])


def tail(sd, h, dilations):
    """ResBlocks -> (ASPP) -> proj 1x1 -> tokens (B, S, E), row-major -> LayerNorm."""
    j = 0
    while f"{T}.resblocks.{j}.conv1.weight" in sd:
        r = f"{T}.resblocks.{j}"
        y = _conv(F.silu(_gn(h, sd, f"{r}.norm1")), sd, f"{r}.conv1", padding=1)
        h = h + _conv(F.silu(_gn(y, sd, f"{r}.norm2")), sd, f"{r}.conv2", padding=1)
        j += 1
    if f"{T}.aspp.proj.0.weight" in sd:
        outs = []
        for k, d in enumerate(dilations):
            b = f"{T}.aspp.branches.{k}"
            outs.append(F.silu(_gn(_conv(h, sd, f"{b}.0", **({} if d == 1 else {"padding": d, "dilation": d})), sd, f"{b}.1")))
        g = F.silu(_gn(_conv(F.adaptive_avg_pool2d(h, 1), sd, f"{T}.aspp.global_conv.0"), sd, f"{T}.aspp.global_conv.1"))
        outs.append(F.interpolate(g, size=h.shape[-2:], mode="bilinear", align_corners=False))
        h = F.silu(_gn(_conv(torch.cat(outs, 1), sd, f"{T}.aspp.proj.0"), sd, f"{T}.aspp.proj.1"))
    h = _conv(h, sd, f"{T}.proj")
    return _ln(h.flatten(2).permute(0, 2, 1), sd, f"{T}.out_norm")


def latent_stem(sd, latent, mask, dilations):
    """v2.1: (mask pyramid, concatenated after the latent) -> lat_conv1 3x3 -> GN -> SiLU -> lat_conv2 2x2/2 -> ..."""
    if mask is not None:
        m = F.silu(_conv(mask, sd, f"{T}.mask_conv1", stride=2))
        m = F.silu(_conv(m, sd, f"{T}.mask_conv2", stride=2, padding=1))
        latent = torch.cat([latent, _conv(m, sd, f"{T}.mask_conv3", stride=2, padding=1)], 1)
    h = F.silu(_gn(_conv(latent, sd, f"{T}.lat_conv1", padding=1), sd, f"{T}.lat_norm1"))
    h = F.silu(_gn(_conv(h, sd, f"{T}.lat_conv2", stride=2), sd, f"{T}.lat_norm2"))
    return tail(sd, h, dilations)


def semantic_trunk(sd, taps, grid, dilations):
    """v3: LayerNorm per tap (ln_in, or ln_in.k) -> concat -> proj_in -> (B, cond_dim, rows, cols) -> tail."""
    keys = [f"{T}.ln_in"] if len(taps) == 1 else [f"{T}.ln_in.{k}" for k in range(len(taps))]
    h = _linear(torch.cat([_ln(x, sd, key) for x, key in zip(taps, keys)], -1), sd, f"{T}.proj_in")
    return tail(sd, h.permute(0, 2, 1).reshape(h.shape[0], h.shape[2], *grid), dilations)


def reference(dit, latent, taps, timestep, context):
    """kohya's encode_reference_hidden_states on diffusers' DiT: the taps' hidden states, ascending."""
    x5 = latent.unsqueeze(2)
    batch = x5.shape[0]
    if dit.config.concat_padding_mask:
        x5 = torch.cat([x5, torch.zeros_like(x5[:, :1])], 1)
    rope = dit.rope(x5, fps=None)
    extra = dit.learnable_pos_embed(x5) if dit.config.extra_pos_embed_type else None
    x = dit.patch_embed(x5).flatten(1, 3)
    out = [x] if -1 in taps else []
    if max(taps) < 0:
        return out
    temb, embedded = dit.time_embed(x, torch.full((batch,), float(timestep)))
    if context is None:
        context = torch.zeros(batch, 1, dit.config.text_embed_dim)
    context = context.expand(batch, -1, -1)
    if dit.config.use_crossattn_projection:
        context = dit.crossattn_proj(context)
    for index, block in enumerate(dit.transformer_blocks[:max(taps) + 1]):
        x = block(x, context, embedded, temb, rope, extra, None, None)
        if index in taps:
            out.append(x)
    return out


def uncond_context(conditioner, length):
    """The adapter's output for a zero source state and the T5 id 1 (</s>): its first row, zero-padded."""
    ones = torch.ones(1, 1, dtype=torch.long)
    source = torch.zeros(1, 1, conditioner.config.source_dim)
    out = conditioner(source_hidden_states=source, target_input_ids=ones, target_attention_mask=ones,
                      source_attention_mask=ones)
    return F.pad(out[:, :1], (0, 0, 0, length - 1))


def module_change(sd, name, x, emb, time, gate):
    cond = emb + sd[f"{name}.depth_embed"]
    if time is not None:
        cond = cond + time
    h = F.silu(_linear(x, sd, f"{name}.down"))
    gamma, beta = _linear(cond, sd, f"{name}.cond_to_film").chunk(2, dim=-1)
    both = torch.cat([cond, h], -1)
    m = F.silu(_linear(both, sd, f"{name}.mid") * (1 + gamma) + beta)
    if gate == "vector":
        return _linear(torch.sigmoid(_linear(both, sd, f"{name}.gate")) * m, sd, f"{name}.up")
    change = _linear(m, sd, f"{name}.up")
    return torch.sigmoid(_linear(both, sd, f"{name}.gate")) * change if gate == "scalar" else change


@contextmanager
def kohya_attached(dit, sd, emb, time, gate, scale):
    """kohya's apply_to: each target Linear's forward replaced by one that adds the change to its input."""
    linears = []
    try:
        for name in sorted({k.split(".", 1)[0] for k in sd if k.startswith("lllite_dit_")}):
            linear = dit.get_submodule(diffusers_path(name))

            def forward(x, name=name, original=linear.forward):
                return original(x + scale * module_change(sd, name, x, emb, time, gate))

            linear.forward = forward
            linears.append(linear)
        yield
    finally:
        for linear in linears:
            del linear.forward


def restated(pipe, network, inputs, latent, mask=None, scale=1.0):
    """The transformer's output under kohya's formulas; ``scale``: the multiplier (a number or (B, S, 1))."""
    assert not network.is_attached
    dit, cfg = pipe.transformer, network.config
    sd = {k: v.detach() for k, v in network.state_dict().items()}
    batch = inputs["hidden_states"].shape[0]
    time, gate = None, "none"
    with torch.no_grad():
        if cfg.trunk == "stem":
            emb = latent_stem(sd, latent, mask, cfg.aspp_dilations)
        else:
            context = {"zero": None, "caption": inputs["encoder_hidden_states"],
                       "uncond": uncond_context(pipe.text_conditioner, inputs["encoder_hidden_states"].shape[1])}
            hidden = reference(dit, latent, cfg.ref_block, cfg.ref_timestep, context[cfg.ref_context])
            emb = semantic_trunk(sd, hidden, (latent.shape[-2] // 2, latent.shape[-1] // 2), cfg.aspp_dilations)
            embedded = dit.time_embed(inputs["hidden_states"], inputs["timestep"])[1]
            time, gate = _linear(embedded, sd, f"{T}.t_proj")[:, None], cfg.gate
        emb = emb.repeat(batch // emb.shape[0], 1, 1)
        with kohya_attached(dit, sd, emb, time, gate, scale):
            return dit(**inputs, return_dict=False)[0]


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def pipe():
    from lllite.anima.toy import load_pretrained

    return load_pretrained()


@pytest.fixture(scope="module")
def contexts(pipe):
    with torch.no_grad():
        return [encode_prompts(pipe, [p])["encoder_hidden_states"] for p in ("a red circle", "")]


@pytest.fixture
def attach(pipe):
    networks = []

    def attach(network):
        networks.append(network.apply_to(pipe))
        return network

    yield attach
    for network in networks:
        network.remove()


def make(pipe, kind, seed=1, **changes):
    network = create_network(pipe.transformer, **{**SMALL, **KINDS[kind], **changes})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            if name.endswith("gate.bias"):
                # v3's gates as they start (open, sigmoid(2) = 0.88): with a random bias near 0 a gate halves the
                # change, which on the toy Anima can fall under the 1% that assert_close needs to prove anything.
                p.fill_(GATE_INIT_BIAS)
    return network.eval()


def control(size=LATENT, seed=3, masked=False):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 16, *size, generator=g)
    if not masked:
        return latent, None
    mask = torch.ones(1, 1, size[0] * 8, size[1] * 8)
    mask[..., :24, 40:] = -1  # {-1, 1}, +1 where to paint
    return latent, mask


def inputs(context, batch=1, sigma=0.7, seed=5, size=LATENT):
    g = torch.Generator().manual_seed(seed)
    return transformer_inputs(torch.randn(batch, 16, *size, generator=g), torch.full((batch,), sigma),
                              context.expand(batch, -1, -1))


def run(transformer, kwargs):
    with torch.no_grad():
        return transformer(**kwargs, return_dict=False)[0]


def assert_close(got, want, base, rel=1e-5, what="output"):
    """``got`` equals ``want`` within ``rel`` of the output's scale, and ``want`` differs visibly from ``base``."""
    scale = want.abs().max()
    assert (want - base).abs().max() > 1e-2 * scale, f"{what}: the control changes nothing, which proves nothing"
    diff = (got - want).abs().max()
    assert diff <= rel * scale, f"{what}: max abs difference {diff:.3g} at output scale {scale:.3g}"


# ------------------------------------------------------------------ 1. the same numbers as kohya's formulas
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_kohyas_formulas(pipe, contexts, attach, kind):
    network = make(pipe, kind)
    latent, mask = control(masked=kind.endswith("mask"))
    batch = 2 if kind == "v2.1" else 1  # one control for a batch of two (repeated), as kohya's CFG rule
    kwargs = inputs(contexts[0], batch=batch)
    base = run(pipe.transformer, kwargs)
    want = restated(pipe, network, kwargs, latent, mask)
    attach(network)
    network.set_cond_latent(latent, mask)
    assert_close(run(pipe.transformer, kwargs), want, base)


@pytest.mark.parametrize("kind", ["v3-2taps-none-caption", "v3-2taps-vector-caption-aspp"])
def test_caption_references_follow_each_guidance_branch(pipe, contexts, attach, kind):
    """ref_context "caption": the prompt's call and the negative's call each use their own reference, whatever
    the order (a step of CFG calls both; the next step calls them again)."""
    network = make(pipe, kind)
    latent, _ = control()
    branches = [inputs(c, sigma=s) for s in (0.8, 0.6) for c in contexts]
    bases = [run(pipe.transformer, kw) for kw in branches]
    wants = [restated(pipe, network, kw, latent) for kw in branches]
    with torch.no_grad():  # the two branches' references differ: a shared one would be seen
        refs = [reference(pipe.transformer, latent, network.config.ref_block, network.config.ref_timestep, c)[-1] for c in contexts]
    assert (refs[0] - refs[1]).abs().max() > 1e-2
    attach(network)
    network.set_cond_latent(latent)
    for i, (kw, want, base) in enumerate(zip(branches, wants, bases)):
        assert_close(run(pipe.transformer, kw), want, base, what=f"call {i}")


@pytest.mark.parametrize("kind", ["v3-2taps-none-caption"])
def test_caption_with_a_batch_of_prompts_for_one_control(pipe, contexts, attach, kind):
    """Two prompts in one call (generate(pipe, [a, b])) and one control: each prompt's own reference, the control
    repeated for the batch as every other kind repeats it."""
    network = make(pipe, kind)
    latent, _ = control()
    kwargs = inputs(torch.cat(contexts), batch=2)
    base = run(pipe.transformer, kwargs)
    want = restated(pipe, network, kwargs, latent.repeat(2, 1, 1, 1))
    attach(network)
    network.set_cond_latent(latent)
    assert_close(run(pipe.transformer, kwargs), want, base)


@pytest.mark.parametrize("kind", ["v2.1", "v3-1tap-scalar-zero", "v2.1-mask"])
def test_the_image_through_the_pipelines_vae_equals_its_latent_given(pipe, contexts, attach, kind):
    network = attach(make(pipe, kind))
    g = torch.Generator().manual_seed(7)
    rgb = torch.rand(1, 3, LATENT[0] * 8, LATENT[1] * 8, generator=g) * 2 - 1
    _, mask = control(masked=kind.endswith("mask"))
    with torch.no_grad():
        latent = encode_with(pipe.vae, rgb)
    kwargs = inputs(contexts[0])
    if mask is None:
        network.set_cond_image(rgb)
    else:
        network.set_cond_image(torch.cat([rgb, mask], 1))
    from_image = run(pipe.transformer, kwargs)
    network.set_cond_latent(latent, mask)
    from_latent = run(pipe.transformer, kwargs)
    network.remove()
    want = restated(pipe, network, kwargs, latent, mask)
    assert_close(from_image, want, run(pipe.transformer, kwargs))
    assert_close(from_latent, want, run(pipe.transformer, kwargs))


# ------------------------------------------------------------------ 2. strength, masks, step range, keyframes
@pytest.mark.parametrize("kind", list(KINDS))
def test_strength_is_linear_in_the_change_and_zero_is_the_base(pipe, contexts, attach, kind):
    network = make(pipe, kind)
    latent, mask = control(masked=kind.endswith("mask"))
    kwargs = inputs(contexts[0])
    base = run(pipe.transformer, kwargs)
    half = restated(pipe, network, kwargs, latent, mask, scale=0.5)
    attach(network)
    network.set_cond_latent(latent, mask)
    seen = FirstInput(pipe.transformer)
    try:
        changes = {}
        for m in (1.0, 0.5, 0.0):
            network.set_multiplier(m)
            out = run(pipe.transformer, kwargs)
            changes[m] = seen.value
        assert torch.equal(out, base)  # strength 0: exactly the base
        network.set_multiplier(0.5)
        assert_close(run(pipe.transformer, kwargs), half, base)
        one, halved = changes[1.0] - changes[0.0], changes[0.5] - changes[0.0]
        assert one.abs().max() > 1e-3
        # at the first target Linear (whose input nothing else changes): half the change, to float32's rounding of x
        assert torch.allclose(halved, 0.5 * one, rtol=0, atol=1e-6 * changes[0.0].abs().max())
    finally:
        seen.handle.remove()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_mask_zeros_the_change_where_it_is_zero(pipe, contexts, attach, kind):
    network = make(pipe, kind)
    latent, mask = control(masked=kind.endswith("mask"))
    kwargs = inputs(contexts[0])
    region = torch.zeros(1, 1, LATENT[0] * 8, LATENT[1] * 8)
    region[..., :, :48] = 1  # the left half: token columns 0..2 of 6
    tokens = torch.zeros(1, 4, 6, 1)
    tokens[:, :, :3] = 1
    base = run(pipe.transformer, kwargs)
    want = restated(pipe, network, kwargs, latent, mask, scale=tokens.reshape(1, 24, 1))
    everywhere = restated(pipe, network, kwargs, latent, mask)
    assert (want - everywhere).abs().max() > 1e-3 * want.abs().max()
    attach(network)
    network.set_cond_latent(latent, mask)
    seen = FirstInput(pipe.transformer)
    try:
        network.set_multiplier(0.0)
        run(pipe.transformer, kwargs)
        bare = seen.value
        network.set_multiplier(1.0)
        network.set_mask(region)
        assert_close(run(pipe.transformer, kwargs), want, base)
        change = (seen.value - bare).reshape(1, 4, 6, -1)
        assert torch.equal(change[:, :, 3:], torch.zeros_like(change[:, :, 3:]))
        assert (change[:, :, :3].abs().amax(-1) > 0).all()
    finally:
        seen.handle.remove()


class Calls:
    """Every call of the transformer: its keyword arguments and its output."""

    def __init__(self, transformer):
        self.inputs, self.outputs = [], []
        self.handles = [transformer.register_forward_pre_hook(self._before, with_kwargs=True),
                        transformer.register_forward_hook(self._after)]

    def _before(self, module, args, kwargs):
        self.inputs.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items() if k != "return_dict"})

    def _after(self, module, args, output):
        self.outputs.append(output[0].clone())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _sample(pipe, network, multiplier=1.0, step_range=(0.0, 1.0)):
    network.set_multiplier(multiplier)
    network.set_step_range(*step_range)
    calls = Calls(pipe.transformer)
    try:
        generate(pipe, "a red circle", num_inference_steps=4, guidance_scale=4.0, height=LATENT[0] * 8,
                 width=LATENT[1] * 8, seed=0)
    finally:
        calls.remove()
    assert len(calls.outputs) == 8  # 4 steps x 2 guidance branches, B = 1 each
    return calls


@pytest.mark.parametrize("kind", ["v2.1", "v3-2taps-vector-caption-aspp"])
def test_step_range_and_keyframes_skip_the_steps_they_exclude(pipe, attach, kind):
    """Through the pipeline (4 steps, CFG: the prompt's call then the negative's, B = 1 each): a fresh control
    acts on every call with kohya's numbers; the step range (0.5, 1) and the keyframes [(0, 0), (0.5, 1)] leave
    steps 0 and 1 exactly as without the network and act on steps 2 and 3, identically."""
    network = attach(make(pipe, kind))
    g = torch.Generator().manual_seed(11)
    rgb = torch.rand(1, 3, LATENT[0] * 8, LATENT[1] * 8, generator=g) * 2 - 1
    network.set_cond_image(rgb)
    full = _sample(pipe, network)
    base = _sample(pipe, network, multiplier=0.0)
    ranged = _sample(pipe, network, step_range=(0.5, 1.0))
    keyed = _sample(pipe, network, multiplier=[(0.0, 0.0), (0.5, 1.0)])
    for i in range(4):  # steps 0 and 1, both branches: not controlled
        assert torch.equal(ranged.outputs[i], base.outputs[i])
    assert (ranged.outputs[4] - base.outputs[4]).abs().max() > 1e-2
    for got, want in zip(keyed.outputs, ranged.outputs):
        assert torch.equal(got, want)
    network.remove()
    with torch.no_grad():
        latent = encode_with(pipe.vae, rgb)
    for calls, steps in ((full, range(8)), (ranged, range(4, 8))):
        for i in steps:
            kwargs = calls.inputs[i]
            want = restated(pipe, network, kwargs, latent)
            assert_close(calls.outputs[i], want, run(pipe.transformer, kwargs), what=f"call {i} (step {i // 2})")


# ------------------------------------------------------------------ 3. torch.compile
# slow: under torch 2.10 (the floors), a compiled DiT followed by training in the same process leaves autograd's
# threads started, and the DDP tests' forked processes then cannot backprop; the whole suite runs it on the newest
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["v2.1-aspp", "v3-2taps-vector-caption-aspp"])
def test_compiles_as_one_graph_and_strength_or_control_changes_recompile_nothing(pipe, contexts, attach, kind):
    import torch._dynamo as dynamo

    torch.compiler.reset()
    dynamo.utils.counters.clear()
    network = attach(make(pipe, kind))
    compiled = torch.compile(pipe.transformer, fullgraph=True, backend="aot_eager")
    try:
        settings = [(1.0, 3, 0), (0.5, 3, 0), (1.0, 4, 1), ([(0.0, 0.3), (0.5, 1.0)], 4, 0)]
        for multiplier, seed, which in settings:
            network.set_multiplier(multiplier)
            network.set_cond_latent(control(seed=seed)[0])
            kwargs = inputs(contexts[which])
            eager = run(pipe.transformer, kwargs)
            got = run(compiled, kwargs)
            network.set_multiplier(0.0)
            assert (eager - run(pipe.transformer, kwargs)).abs().max() > 1e-3  # the control acts
            diff = (got - eager).abs().max()
            assert diff <= 1e-4, f"compiled differs from eager by {diff:.3g}"
        assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
        assert not dynamo.utils.counters["graph_break"]
    finally:
        torch.compiler.reset()


# ------------------------------------------------------------------ 4. padding
@pytest.mark.parametrize("kind", ["v2.1", "v3-2taps-vector-uncond"])
@pytest.mark.parametrize("short", [(1, 0), (0, 1), (1, 1)])
def test_a_control_latent_one_short_is_padded_circularly(pipe, contexts, attach, kind, short):
    network = attach(make(pipe, kind))
    latent, _ = control()
    cut = latent[..., :LATENT[0] - short[0], :LATENT[1] - short[1]]
    padded = F.pad(cut, (0, short[1], 0, short[0]), mode="circular")
    assert not torch.equal(padded, latent)
    kwargs = inputs(contexts[0])
    network.set_cond_latent(cut)
    got = run(pipe.transformer, kwargs)
    network.set_cond_latent(padded)
    want = run(pipe.transformer, kwargs)
    network.set_cond_latent(latent)
    assert (run(pipe.transformer, kwargs) - want).abs().max() > 1e-4
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["v2.1", "v3-1tap-scalar-zero"])
@pytest.mark.parametrize("size", [(5, 12), (8, 10), (9, 12)])
def test_a_control_latent_of_another_size_is_refused_naming_both(pipe, contexts, attach, kind, size):
    network = attach(make(pipe, kind))
    network.set_cond_latent(control(size=size)[0])
    with pytest.raises(LLLiteError, match=rf"{size[0]}x{size[1]}.*{LATENT[0]}x{LATENT[1]}"):
        run(pipe.transformer, inputs(contexts[0]))


# ------------------------------------------------------------------ 5. files
EXPECTED_METADATA = {
    "v2.1-aspp": {"lllite.version": "2", "lllite.cond_input_space": "latent", "lllite.trunk": "stem"},
    "v2.1-mask": {"lllite.version": "2", "lllite.cond_input_space": "latent", "lllite.trunk": "stem",
                  "lllite.cond_in_channels": "4"},
    "v3-middle-scalar-zero": {"lllite.version": "3", "lllite.cond_input_space": "latent", "lllite.trunk": "semantic",
                              "lllite.ref_block": "2", "lllite.ref_timestep": "0.5", "lllite.ref_context": "zero",
                              "lllite.gate": "scalar"},
    "v3-2taps-vector-uncond": {"lllite.version": "3", "lllite.cond_input_space": "latent", "lllite.trunk": "semantic",
                               "lllite.ref_block": "-1,1", "lllite.ref_timestep": "0.3", "lllite.ref_context": "uncond",
                               "lllite.gate": "vector"},
    "v3-2taps-none-caption": {"lllite.version": "3", "lllite.cond_input_space": "latent", "lllite.trunk": "semantic",
                              "lllite.ref_block": "0,2", "lllite.ref_timestep": "0.0", "lllite.ref_context": "caption",
                              "lllite.gate": "none"},
}


@pytest.mark.parametrize("kind", list(EXPECTED_METADATA))
def test_saved_files_have_kohyas_keys_shapes_and_metadata(pipe, contexts, attach, tmp_path, kind):
    network = make(pipe, kind)
    path = network.save(tmp_path / "n.safetensors", dtype=torch.float32)
    with safe_open(str(path), framework="pt") as f:
        names, metadata = f.keys(), f.metadata()
        tensors = {k: f.get_tensor(k) for k in names}
    state = network.state_dict()
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert all(torch.equal(tensors[k], v) for k, v in state.items())
    assert {k: metadata.get(k) for k in EXPECTED_METADATA[kind]} == EXPECTED_METADATA[kind]
    gate = KINDS[kind].get("gate", "none") if KINDS[kind].get("trunk") == "semantic" else "none"
    gates = {k for k in tensors if k.endswith((".gate.weight", ".gate.bias"))}
    assert bool(gates) == (gate != "none")
    if gate != "none":
        name = next(k for k in tensors if k.endswith(".gate.weight"))
        assert tensors[name].shape == ((1 if gate == "scalar" else SMALL["network_dim"]),
                                       SMALL["cond_emb_dim"] + SMALL["network_dim"])
    loaded = lllite.load(path)
    assert loaded.config == network.config
    latent, mask = control(masked=kind.endswith("mask"))
    kwargs = inputs(contexts[0])
    want = restated(pipe, network, kwargs, latent, mask)
    attach(loaded).set_cond_latent(latent, mask)
    got = run(pipe.transformer, kwargs)
    loaded.remove()
    assert_close(got, want, run(pipe.transformer, kwargs))
