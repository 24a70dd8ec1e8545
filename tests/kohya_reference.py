"""An independent re-statement of kohya's LLLite inference, for comparison in tests.

Written from the format facts only: its own name table, plain tensor formulas on the file's tensors,
and kohya's way of attaching (replacing the target Linear's forward). It handles sizes that are
multiples of 32, as kohya's does.
"""
import re

import torch
import torch.nn.functional as F

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")


def kohya_name(diffusers_path: str) -> str:
    if m := _DOWN.match(diffusers_path):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        sgm = f"input_blocks.{3 * i + j + 1}.1.{rest}"
    elif m := _UP.match(diffusers_path):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        sgm = f"output_blocks.{3 * i + j}.1.{rest}"
    elif diffusers_path.startswith("mid_block.attentions.0."):
        sgm = "middle_block.1." + diffusers_path[len("mid_block.attentions.0."):]
    else:
        raise KeyError(diffusers_path)
    return "lllite_unet_" + sgm.replace(".", "_")


def embedding(sd: dict, name: str, image: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(image, sd[f"{name}.conditioning1.0.weight"], sd[f"{name}.conditioning1.0.bias"], stride=4)
    h = F.relu(h)
    w2 = sd[f"{name}.conditioning1.2.weight"]
    h = F.conv2d(h, w2, sd[f"{name}.conditioning1.2.bias"], stride=w2.shape[-1])
    if f"{name}.conditioning1.4.weight" in sd:
        h = F.relu(h)
        h = F.conv2d(h, sd[f"{name}.conditioning1.4.weight"], sd[f"{name}.conditioning1.4.bias"], stride=2)
    b, e = h.shape[:2]
    return h.view(b, e, -1).permute(0, 2, 1)


def change(sd: dict, name: str, x: torch.Tensor, image: torch.Tensor, multiplier: float) -> torch.Tensor:
    cx = embedding(sd, name, image)
    if cx.shape[0] != x.shape[0]:
        cx = cx.repeat(x.shape[0] // cx.shape[0], 1, 1)
    h = F.relu(F.linear(x, sd[f"{name}.down.0.weight"], sd[f"{name}.down.0.bias"]))
    h = F.relu(F.linear(torch.cat([cx, h], dim=2), sd[f"{name}.mid.0.weight"], sd[f"{name}.mid.0.bias"]))
    return F.linear(h, sd[f"{name}.up.0.weight"], sd[f"{name}.up.0.bias"]) * multiplier


class KohyaReference:
    """Attach one or more (state_dict, image, multiplier) triples the way kohya does; restore on exit."""

    def __init__(self, unet, *networks):
        self.unet, self.networks, self.saved = unet, networks, []

    def __enter__(self):
        names = {name.rsplit(".", 3)[0] for sd, _, _ in self.networks for name in sd}
        for path, module in self.unet.named_modules():
            if not re.search(r"\.(attn1\.to_[qkv]|attn2\.to_q)$", path):
                continue
            try:
                name = kohya_name(path)
            except KeyError:
                continue
            if name not in names:
                continue
            original = module.forward

            def forward(x, *args, _name=name, _original=original, **kwargs):
                total = sum(change(sd, _name, x, image, m) for sd, image, m in self.networks if f"{_name}.down.0.weight" in sd)
                return _original(x + total, *args, **kwargs)

            module.forward = forward
            self.saved.append(module)
        return self

    def __exit__(self, *exc):
        for module in self.saved:
            del module.forward
