"""Attaching LLLite networks to a UNet: forward pre-hooks only, removable, several networks at once.

On each target Linear one pre-hook (:class:`Dispatch`) adds the change of every network attached
there, each computed from the Linear's original input, so networks add up independently of the
order they were attached in. Per network, :class:`Attachment` adds two more:

- a pre-hook on the UNet that runs on the host, outside any compiled graph (``torch.compiler.disable``):
  it follows LoRA-wrapped targets and the UNet's device, and refreshes what changes only with the
  control image, the latent size or the weights;
- a pre-hook on the UNet's ``time_proj`` (called once per UNet call, with the timestep on the
  UNet's device), which computes the step's scale there;
- a hook after the UNet, also on the host, which checks that the network acted.

``torch.compile(unet)`` traces hooks on the UNet's submodules into the UNet's graph, while hooks on
the compiled module itself run as frames of their own: the ``time_proj`` and Linear hooks are part
of the one graph, and the UNet's own hooks keep every host-side decision out of it. By default
dynamo does not watch hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``): code it compiled
for the UNet before a network was attached would go on running without it, which the last hook
turns into an error. Removing a network, or adding one where another is attached, changes values
the compiled code reads, so it is compiled again.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .network import LLLiteNetwork


class Dispatch:
    """The single pre-hook on one target Linear; it adds the change of every attached network."""

    def __init__(self, linear: nn.Module):
        self.entries: list[tuple[LLLiteNetwork, str]] = []
        self.handle = linear.register_forward_pre_hook(self)

    def __call__(self, linear: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        out = x
        for network, name in self.entries:
            change = network._change(name, x)
            if change is not None:
                delta, scale = change
                out = torch.addcmul(out, delta if delta.dtype == out.dtype else delta.to(out.dtype),
                                    scale if scale.dtype == out.dtype else scale.to(out.dtype))
        return None if out is x else (out, *args[1:])


_DISPATCH: "weakref.WeakKeyDictionary[nn.Module, Dispatch]" = weakref.WeakKeyDictionary()


def hook(linear: nn.Module, network: "LLLiteNetwork", name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        dispatch = _DISPATCH[linear] = Dispatch(linear)
    dispatch.entries.append((network, name))


def unhook(linear: nn.Module, network: "LLLiteNetwork", name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        return
    dispatch.entries = [(n, m) for n, m in dispatch.entries if not (n is network and m == name)]
    if not dispatch.entries:
        dispatch.handle.remove()
        del _DISPATCH[linear]


def unet_and_pipeline(target: Any) -> tuple[nn.Module, Any]:
    """The UNet to attach to, and the pipeline whose scheduler counts steps (None for a bare UNet)."""
    unet = getattr(target, "unet", None)
    if isinstance(unet, nn.Module):
        return _compiled_inner(unet), target
    if isinstance(target, nn.Module):
        return _compiled_inner(target), None
    raise TypeError(f"apply_to expects a diffusers UNet2DConditionModel or an SDXL pipeline, got {type(target).__name__}")


def _compiled_inner(unet: nn.Module) -> nn.Module:
    # torch.compile(unet) wraps the UNet; the hooks belong on the module it compiles
    return getattr(unet, "_orig_mod", unet)


class Attachment:
    """What :meth:`LLLiteNetwork.apply_to` set up, so that :meth:`LLLiteNetwork.remove` undoes exactly that.

    Args:
        network: the network being attached.
        unet: the UNet.
        pipeline: the pipeline it belongs to, or None.
        paths: kohya module name -> path of the target Linear in the UNet.
    """

    def __init__(self, network: "LLLiteNetwork", unet: nn.Module, pipeline: Any, paths: dict[str, str]):
        self.network, self.unet, self.pipeline = network, unet, pipeline
        self.linears: dict[str, tuple[nn.Module, str, nn.Module]] = {}  # name -> (parent, attribute, hooked module)
        for name, path in paths.items():
            parent_path, attribute = path.rsplit(".", 1)
            parent = unet.get_submodule(parent_path)
            linear = getattr(parent, attribute)
            hook(linear, network, name)
            self.linears[name] = (parent, attribute, linear)
        self.handles = [
            unet.register_forward_pre_hook(torch.compiler.disable(network._before_unet), with_kwargs=True),
            unet.time_proj.register_forward_pre_hook(network._before_time_proj),
            unet.register_forward_hook(torch.compiler.disable(network._after_unet)),
        ]

    @property
    def scheduler(self) -> Any:
        return getattr(self.pipeline, "scheduler", None)

    def rehome(self) -> None:
        """Follow target Linears that were wrapped after attaching (``pipe.load_lora_weights``)."""
        for name, (parent, attribute, linear) in self.linears.items():
            current = parent._modules[attribute]  # not getattr: this runs every UNet call
            if current is not linear:
                unhook(linear, self.network, name)
                hook(current, self.network, name)
                self.linears[name] = (parent, attribute, current)

    def detach(self) -> None:
        for name, (_, _, linear) in self.linears.items():
            unhook(linear, self.network, name)
        for handle in self.handles:
            handle.remove()
