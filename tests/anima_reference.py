"""An independent re-statement of kohya's Anima LLLite (v2) inference, for comparison in tests.

Written from the facts only (../shared/ANIMA_LLLITE.md): its own name table, plain tensor formulas on
the file's tensors, kohya's way of attaching (replacing the target Linear's forward), and kohya's
classifier-free-guidance rule (the embedding repeated when the batch is twice the images').
"""
import re

import torch
import torch.nn.functional as F

_LINEARS = {  # kohya's tail of the module name -> diffusers' path in a block
    "self_attn_q_proj": "attn1.to_q",
    "self_attn_k_proj": "attn1.to_k",
    "self_attn_v_proj": "attn1.to_v",
    "cross_attn_q_proj": "attn2.to_q",
    "mlp_layer1": "ff.net.0.proj",
}
_NAME = re.compile(r"^lllite_dit_blocks_(\d+)_(.+)$")


class FirstInput:
    """The input block 0's attn1.to_q receives after every pre-hook registered before this one (the network's hook
    of the first target: nothing else has changed it)."""

    def __init__(self, transformer):
        self.value = None
        self.handle = transformer.transformer_blocks[0].attn1.to_q.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.value = args[0].clone()


def diffusers_path(kohya_name: str) -> str:
    m = _NAME.match(kohya_name)
    return f"transformer_blocks.{m[1]}.{_LINEARS[m[2]]}"


def _gn(x, sd, key):
    channels = x.shape[1]
    groups = 8
    while groups > 1 and channels % groups:
        groups //= 2
    return F.group_norm(x, groups, sd[key + ".weight"], sd[key + ".bias"], eps=1e-5)


def _conv(x, sd, key, **kw):
    return F.conv2d(x, sd[key + ".weight"], sd[key + ".bias"], **kw)


def embedding(sd: dict, image: torch.Tensor, dilations=(1, 2, 4, 8)) -> torch.Tensor:
    t = "lllite_conditioning1"
    h = F.silu(_gn(_conv(image, sd, f"{t}.conv1", stride=4), sd, f"{t}.norm1"))
    h = F.silu(_gn(_conv(h, sd, f"{t}.conv2", padding=1), sd, f"{t}.norm2"))
    h = F.silu(_gn(_conv(h, sd, f"{t}.conv3", stride=4), sd, f"{t}.norm3"))
    j = 0
    while f"{t}.resblocks.{j}.conv1.weight" in sd:
        r = f"{t}.resblocks.{j}"
        y = _conv(F.silu(_gn(h, sd, f"{r}.norm1")), sd, f"{r}.conv1", padding=1)
        y = _conv(F.silu(_gn(y, sd, f"{r}.norm2")), sd, f"{r}.conv2", padding=1)
        h = h + y
        j += 1
    if f"{t}.aspp.proj.0.weight" in sd:
        outs = []
        for k, d in enumerate(dilations):
            b = f"{t}.aspp.branches.{k}"
            kw = {} if d == 1 else dict(padding=d, dilation=d)
            outs.append(F.silu(_gn(_conv(h, sd, f"{b}.0", **kw), sd, f"{b}.1")))
        g = F.adaptive_avg_pool2d(h, 1)
        g = F.silu(_gn(_conv(g, sd, f"{t}.aspp.global_conv.0"), sd, f"{t}.aspp.global_conv.1"))
        outs.append(F.interpolate(g, size=h.shape[-2:], mode="bilinear", align_corners=False))
        h = F.silu(_gn(_conv(torch.cat(outs, 1), sd, f"{t}.aspp.proj.0"), sd, f"{t}.aspp.proj.1"))
    h = _conv(h, sd, f"{t}.proj")
    b, c = h.shape[:2]
    h = h.view(b, c, -1).permute(0, 2, 1)
    return F.layer_norm(h, (c,), sd[f"{t}.out_norm.weight"], sd[f"{t}.out_norm.bias"], eps=1e-5)


def perturbed(sd: dict, name: str, x: torch.Tensor, cx: torch.Tensor, multiplier: float) -> torch.Tensor:
    if x.shape[0] // 2 == cx.shape[0]:
        cx = cx.repeat(2, 1, 1)
    cond = cx + sd[f"{name}.depth_embed"]
    h = F.silu(F.linear(x, sd[f"{name}.down.weight"], sd[f"{name}.down.bias"]))
    gamma, beta = F.linear(cond, sd[f"{name}.cond_to_film.weight"], sd[f"{name}.cond_to_film.bias"]).chunk(2, dim=-1)
    m = F.linear(torch.cat([cond, h], dim=-1), sd[f"{name}.mid.weight"], sd[f"{name}.mid.bias"])
    m = F.silu(m * (1 + gamma) + beta)
    out = F.linear(m, sd[f"{name}.up.weight"], sd[f"{name}.up.bias"]) * multiplier
    return x + out


class KohyaAnimaReference:
    """Attach one network (file tensors, control image, multiplier) by replacing forwards; restore on exit."""

    def __init__(self, transformer, sd: dict, image: torch.Tensor, multiplier: float, dilations=(1, 2, 4, 8)):
        self.transformer, self.sd, self.multiplier = transformer, sd, multiplier
        self.cx = embedding(sd, image, dilations)
        self.saved = []

    def __enter__(self):
        names = {key.split(".", 1)[0] for key in self.sd if key.startswith("lllite_dit_")}
        for name in names:
            linear = self.transformer.get_submodule(diffusers_path(name))
            original = linear.forward

            def forward(x, name=name, original=original):
                if self.multiplier == 0.0:
                    return original(x)
                assert x.shape[1] == self.cx.shape[1]
                return original(perturbed(self.sd, name, x, self.cx, self.multiplier))

            linear.forward = forward
            self.saved.append((linear, original))
        return self

    def __exit__(self, *exc):
        for linear, original in self.saved:
            linear.forward = original
