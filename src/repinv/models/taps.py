"""Hidden layers: where a model is read, and a forward pass that stops there.

A layer is an int (an index into the model's hidden layers as its model source numbers them,
for timm `forward_intermediates`; negative counts from the end) or a module path
(`patch_embed`, `blocks.0.norm1`, `stem.conv`, ...; source-neutral names such as `patch_embed`
or `blocks.0` resolve to the model's own spelling, e.g. torchvision's `conv_proj`). Either way
the tap is the named module's whole output, read by a hook that stops the forward pass as soon
as the module has run: `layers=5` and `layers=blocks.5` are the same objective, and a ViT
block's output keeps its class token, as the study matched it (timm's `forward_intermediates`
would drop the prefix tokens and reshape the rest to a feature map).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from repinv.errors import RepinvError, listing, named_once, suggest
from repinv.models.sources import for_net

log = logging.getLogger(__name__)
# What a forward pass raises when its batch no longer fits a model that mixes rows across a tapped module
# (a residual sum of a split and an unsplit batch, a reshape by batch size, a tuple output that cannot be split).
_MIXED_ROWS = (RuntimeError, TypeError, ValueError, IndexError)
# Failures of the device, not of the pass: never taken for a model the pass does not fit.
_DEVICE_ERRORS = (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.OutOfMemoryError))


class _Reached(Exception):
    """Raised by a forward hook to end the forward pass once every tapped module has run."""


class NotRun(RuntimeError):
    """Tapped modules a forward pass never ran: they exist in the model, but its forward skips them."""

    def __init__(self, modules: list[str]):
        self.modules = modules
        super().__init__(f"modules {modules} did not run in the forward pass")


class _Passing(Exception):
    """Raised by a `forward_until` hook to record a value and pass a different output on."""

    def __init__(self, record, output: torch.Tensor):
        super().__init__()
        self.record, self.output = record, output


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"module output of type {type(out).__name__} is not a tensor")


def hidden_layer_names(net: nn.Module) -> list[str]:
    """Module names of the layers that integer indices refer to, as the net's model source lists them."""
    return for_net(net).hidden_layers(net)


@dataclass(frozen=True)
class LayerTap:
    """One resolved layer: `label` for files and logs, `module` (its path in the net) to reach it."""

    label: str
    module: str

    @property
    def path(self) -> str:
        """What every spelling of this layer shares (its module path; its label for the whole net): a record's
        `module`, from which its noise is seeded."""
        return self.module or self.label

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run `net` on `x` up to this layer and return that layer's output."""
        return forward_until(net, x, {self.module: lambda _m, _i, out: _first_tensor(out)})[self.module]


def forward_until(net: nn.Module, x: torch.Tensor, hooks: dict[str, Callable]) -> dict:
    """Run `net` on `x` with a forward hook on each named module, until every one has run.

    A hook returns the value to record for its module (on its first run only); the pass ends
    as soon as all have run. A hook may also replace the module's output by raising
    `_Passing(record, output)`. Returns module name -> recorded value; a module that never
    ran is a `NotRun`.
    """
    seen: dict = {}

    def wrap(name, fn):
        def hook(mod, inp, out):
            if name in seen:  # a module that runs twice: only its first run is the tap
                return None
            try:
                seen[name], replaced = fn(mod, inp, out), None
            except _Passing as passing:
                seen[name], replaced = passing.record, passing.output
            if len(seen) == len(hooks):
                raise _Reached
            return replaced
        return hook

    handles = [net.get_submodule(n).register_forward_hook(wrap(n, fn)) for n, fn in hooks.items()]
    try:
        net(x)
    except _Reached:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(seen) < len(hooks):
        raise NotRun(sorted(set(hooks) - set(seen)))
    return seen


def tap_outputs(net: nn.Module, taps: list[LayerTap], x: torch.Tensor, key: str = "layers") -> dict[str, torch.Tensor]:
    """Each tap's output for `x` (module path -> tensor) in one pass, before a run starts: a tapped module that exists
    but never runs (a dropout that fused attention skips) has no output to invert, a RepinvError naming `key`."""
    try:
        return forward_until(net, x, {t.module: lambda _m, _i, out: _first_tensor(out) for t in taps})
    except NotRun as err:
        tap = next(t for t in taps if t.module in err.modules)
        holder = next((n for n in hidden_layer_names(net) if tap.module.startswith(f"{n}.")), tap.module.rpartition(".")[0])
        named = tap.label + (f" (module {tap.module})" if tap.label != tap.module else "")
        such = f", such as the block that holds it ({key}={holder})" if holder else f", such as a block (e.g. {key}=0)"
        raise RepinvError(
            f"{key}={named} does not run in the forward pass of this model: it exists, but the forward never calls it, "
            f"so it has no output to invert. Pick a module that runs{such}."
        ) from None


def _invalid(spec, net: nn.Module, key: str = "layers") -> RepinvError:
    names = hidden_layer_names(net)
    modules = [n for n, _ in net.named_modules() if n and n.count(".") <= 1]
    idx = (
        f"indices 0..{len(names) - 1} (or -1 for the last) meaning {listing(names, 6)}"
        if names
        else "no indices (this model has no forward_intermediates)"
    )
    return RepinvError(
        f"{key}={spec} is not a layer of this model.{suggest(str(spec), [n for n, _ in net.named_modules() if n])} "
        f"Valid layers are {idx}, or a module path such as {listing(modules, 16)} "
        "(any name from model.named_modules())."
    )


def layer_label(index: int) -> str:
    """How an index layer is named in records, files, logs and run names: L5."""
    return f"L{index}"


def resolve_layer(net: nn.Module, spec: int | str, key: str = "layers") -> LayerTap:
    """Turn one `layers=` entry into a LayerTap, with a clear error naming the setting `key` and listing the valid ones."""
    if isinstance(spec, bool):
        raise _invalid(spec, net, key)
    if isinstance(spec, str) and spec.lstrip("-").isdigit():
        spec = int(spec)
    names = hidden_layer_names(net)
    if isinstance(spec, int):
        if not names or not -len(names) <= spec < len(names):
            raise _invalid(spec, net, key)
        index = spec % len(names)
        if names[index] not in dict(net.named_modules()):
            raise RepinvError(
                f"{key}={spec} names {names[index]}, which this model no longer has (a surgery removed or replaced "
                f"what held it). Name a layer the model still has: a module path such as "
                f"{listing([n for n, _ in net.named_modules() if n and n.count('.') <= 1], 16)}."
            )
        return LayerTap(label=layer_label(index), module=names[index])
    if not isinstance(spec, str) or not spec:
        raise _invalid(spec, net, key)
    module = for_net(net).module_name(net, spec)
    if module not in dict(net.named_modules()):
        raise _invalid(spec, net, key)
    return LayerTap(label=spec, module=module)


def resolve_layers(net: nn.Module, specs) -> list[LayerTap]:
    """Resolve `layers=` (one entry or a list) to taps, in the order given; two entries of one module are refused."""
    if specs is None:
        raise RepinvError(
            "layers= is empty. Give an index such as layers=5, a module path such as layers=patch_embed, "
            "or a list such as layers=[0,5,11]."
        )
    entries = (
        list(specs) if isinstance(specs, (list, tuple)) or hasattr(specs, "__iter__") and not isinstance(specs, str) else [specs]
    )
    taps = [resolve_layer(net, spec) for spec in entries]
    if not taps:
        raise RepinvError("layers= is empty. Give at least one layer, e.g. layers=[patch_embed,5].")
    named_once("layers", entries, [tap.module for tap in taps], "layer",
               " (an index and its module path, such as 5 and blocks.5, are one layer)")
    return taps


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding that a different batch size gives a matmul."""
    a, b = a.float(), b.float()
    return bool(((a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-6).item())


class SharedPass:
    """One forward pass for targets at several layers: each target's rows leave the batch at its layer.

    The rows are grouped by layer, shallowest first; when a tapped module has run, its rows are
    split off and the rest go on, and the pass ends at the deepest tap. Inverting layers 0..11
    of a 12-block model thus costs 78 block passes in batches, as twelve separate runs do
    one by one (a shared batch cut at the deepest layer would cost 144). Built only where a check
    shows it gives what each tap's own forward gives; otherwise taps run one by one.
    """

    def __init__(self, modules: list[str], order: list[int]):
        self.modules, self.order = modules, order

    @classmethod
    @torch.no_grad()
    def checked(cls, net: nn.Module, taps: list[LayerTap], x: torch.Tensor) -> SharedPass | None:
        """The shared pass, checked on variations of `x` (one row per image) against each tap's own forward;
        None where it does not hold."""
        if len(taps) < 2:
            return None
        try:
            order = cls._forward_order(net, [t.module for t in taps], x[:1])
            shared = cls([t.module for t in taps], order)
            gen = torch.Generator().manual_seed(0)
            inputs = [x + 0.1 * g * torch.randn(x.shape, generator=gen).to(x) for g in range(len(taps))]
            expected = [tap(net, xg) for tap, xg in zip(taps, inputs)]
            outs = shared(net, torch.cat([inputs[g] for g in order]), [len(x)] * len(taps))
        except _DEVICE_ERRORS:
            raise
        except _MIXED_ROWS as err:
            return cls._one_by_one(taps, f"the shared pass fails on this model ({type(err).__name__}: {err})")
        # distinct rows per layer, so a split that only broadcasts (a residual of one row) shows up
        if all(out.shape == e.shape and _close(out, e) for out, e in zip(outs, expected)):
            return shared
        return cls._one_by_one(taps, "the shared pass gives other outputs than each layer's own forward")

    @staticmethod
    def _one_by_one(taps: list[LayerTap], why: str) -> None:
        """Log why the layers run one pass each (the slower, always correct way); None."""
        log.info("layers %s run one forward pass each: %s", ", ".join(t.label for t in taps), " ".join(why.split()))
        return None

    @staticmethod
    def _forward_order(net: nn.Module, modules: list[str], x: torch.Tensor) -> list[int]:
        """Tap numbers in the order their modules first run (ties keep the given order)."""
        names = list(dict.fromkeys(modules))
        first = forward_until(net, x, {n: (lambda _m, _i, _o, n=n: n) for n in names})
        rank = {n: i for i, n in enumerate(first)}
        return sorted(range(len(modules)), key=lambda g: rank[modules[g]])

    def __call__(self, net: nn.Module, x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        """Outputs per tap for `x`, whose rows come in `self.order` groups of `counts[g]` rows (tap order)."""
        exits: dict[str, list[int]] = {}
        for g in self.order:
            if counts[g]:
                exits.setdefault(self.modules[g], []).append(g)
        outs: dict[int, torch.Tensor] = {}

        def split(name):
            def hook(_mod, _inp, out):
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"module {name} returns {type(out).__name__}, not a tensor to split by rows")
                for g in exits[name]:
                    outs[g], out = out[: counts[g]], out[counts[g] :]
                raise _Passing(None, out)

            return hook

        forward_until(net, x, {n: split(n) for n in exits})
        return [outs.get(g) for g in range(len(counts))]
