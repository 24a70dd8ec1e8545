"""Attaching LLLite networks to a denoising model: forward pre-hooks only, removable, several at once.

The model is SDXL's UNet or Anima's DiT (``CosmosTransformer3DModel``); everything here is the same
for both. On each target Linear one pre-hook (:class:`Dispatch`) adds the change of every network
attached there, each computed from the Linear's original input, so networks add up independently of
the order they were attached in. Per network, :class:`Attachment` adds three more:

- a pre-hook on the model that runs on the host, outside any compiled graph (``torch.compiler.disable``):
  it follows LoRA-wrapped targets and the model's device, and refreshes what changes only with the
  control image, the latent size or the weights;
- a pre-hook on the model's timestep projection (``unet.time_proj``, ``transformer.time_embed.time_proj``:
  called once per model call, with the timestep on the model's device), which computes the step's
  scale there;
- a hook after the model, also on the host, which checks that the network acted.

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
from typing import Any

import torch
import torch.nn as nn


class Dispatch:
    """The single pre-hook on one target Linear; it adds the change of every attached network."""

    def __init__(self, linear: nn.Module):
        self.entries: list[tuple[nn.Module, str]] = []  # (network, kohya module name)
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


def hook(linear: nn.Module, network: nn.Module, name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        dispatch = _DISPATCH[linear] = Dispatch(linear)
    dispatch.entries.append((network, name))


def unhook(linear: nn.Module, network: nn.Module, name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        return
    dispatch.entries = [(n, m) for n, m in dispatch.entries if not (n is network and m == name)]
    if not dispatch.entries:
        dispatch.handle.remove()
        del _DISPATCH[linear]


def model_and_pipeline(target: Any) -> tuple[nn.Module, Any]:
    """The denoising model to attach to (a pipeline's ``unet`` or ``transformer``, or the model itself),
    and the pipeline whose scheduler counts steps (None for a bare model)."""
    for attribute in ("unet", "transformer"):
        model = getattr(target, attribute, None)
        if isinstance(model, nn.Module):
            return _compiled_inner(model), target
    if isinstance(target, nn.Module):
        return _compiled_inner(target), None
    raise TypeError(f"apply_to expects a diffusers pipeline or its UNet/transformer, got {type(target).__name__}")


def _compiled_inner(model: nn.Module) -> nn.Module:
    # torch.compile(model) wraps the model; the hooks belong on the module it compiles
    return getattr(model, "_orig_mod", model)


class Attachment:
    """What :meth:`lllite.controls.ControlledNetwork.apply_to` set up, so that ``remove`` undoes exactly that.

    Args:
        network: the network being attached (a :class:`lllite.controls.ControlledNetwork`); it provides
            ``_before_model``, ``_before_time``, ``_after_model`` and ``_change``.
        model: the UNet or transformer.
        pipeline: the pipeline it belongs to, or None.
        paths: kohya module name -> path of the target Linear in the model.
        time_module: the module called once per model call with the timestep as its input.
    """

    def __init__(self, network: nn.Module, model: nn.Module, pipeline: Any, paths: dict[str, str],
                 time_module: nn.Module):
        self.network, self.model, self.pipeline = network, model, pipeline
        self.linears: dict[str, tuple[nn.Module, str, nn.Module]] = {}  # name -> (parent, attribute, hooked module)
        for name, path in paths.items():
            parent_path, attribute = path.rsplit(".", 1)
            parent = model.get_submodule(parent_path)
            linear = getattr(parent, attribute)
            hook(linear, network, name)
            self.linears[name] = (parent, attribute, linear)
        self.handles = [
            model.register_forward_pre_hook(torch.compiler.disable(network._before_model), with_kwargs=True),
            time_module.register_forward_pre_hook(network._before_time),
            model.register_forward_hook(torch.compiler.disable(network._after_model)),
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
