"""Building config nodes by `_target_`, and checking once, at build time, that plug-ins keep their protocol.

A prior named in `priors` must be a `repinv.priors.Prior` class; a metric named in `metrics`
must map (image [N, 3, H, W], reference [N, 3, H, W]) to one finite number per image, a tensor [N].
Anything else ends the run before its first step with one paragraph naming the config key, rather
than a traceback at step 0 or a record full of nested lists.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from repinv.errors import RepinvError, is_number, suggest
from repinv.priors import Prior


def _key(node) -> str:
    return node._get_full_key(None) if isinstance(node, DictConfig) else "the config node"


def _reason(err: Exception) -> str:
    cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def plugin_error(key: str, node, err: Exception) -> RepinvError:
    """A config node that could not be built, as one paragraph naming its key and `_target_`."""
    target = node.get("_target_") if isinstance(node, Mapping) else None
    return RepinvError(f"{key} could not be built from _target_={target} ({_reason(err)}). Check that {key}._target_ "
                       f"names an existing class or function (package.module.name) and that {key}'s other settings are "
                       "arguments it takes, with values it accepts.")


def build(node, key: str | None = None, **kwargs):
    """`instantiate` the config node at `key`; a RepinvError raised inside the target goes through unwrapped
    (Hydra wraps it), any other failure (a `_target_` that does not exist, arguments it does not take, also
    for a partial whose call comes later) becomes a RepinvError naming the key."""
    check_numbers(key or _key(node), node)
    try:
        built = instantiate(node, **kwargs)
        if isinstance(built, functools.partial):
            _check_partial(built)
        return built
    except InstantiationException as err:
        if isinstance(err.__cause__, RepinvError):
            raise err.__cause__ from None
        raise plugin_error(key or _key(node), node, err) from None
    except RepinvError:
        raise
    except Exception as err:
        raise plugin_error(key or _key(node), node, err) from None


def check_numbers(key: str, node) -> None:
    """A setting whose default in its `_target_`'s signature is a number is given a number, not text: `weight=abc`
    would fail in a comparison inside the constructor with a message that names neither the setting nor the value."""
    try:
        parameters = inspect.signature(get_object(str(node["_target_"]))).parameters
    except Exception:  # no target, or no signature: build says what is wrong
        return
    for name, parameter in parameters.items():
        given = node.get(name) if name in node else None
        if is_number(parameter.default) and isinstance(given, (str, bool)):
            raise RepinvError(f"{key}.{name}={given} must be a number, e.g. {key}.{name}={parameter.default} "
                              "(its default).")


def called(key: str, node, factory: Callable, *args, **kwargs):
    """`factory(*args, **kwargs)`: a partial `build` made, called (or a method of what it made); a failure other than a
    RepinvError, such as a setting its constructor refuses, becomes a RepinvError naming `key`, as in `build`."""
    try:
        return factory(*args, **kwargs)
    except RepinvError:
        raise
    except Exception as err:
        raise plugin_error(key, node, err) from None


def _check_partial(built: functools.partial) -> None:
    """A partial is called later (with the image shape, the parameters): check its settings against its signature
    now; a builtin without a signature is left to the metric probe or its call."""
    try:
        signature = inspect.signature(built.func)
    except (TypeError, ValueError):
        return
    signature.bind_partial(*built.args, **built.keywords)


def build_each(cfg: DictConfig, group: str, check: Callable[[str, DictConfig], None] | None = None, **kwargs) -> dict:
    """Build every entry of the mapping `cfg.<group>` (name -> config with `_target_`) in its order; null entries are
    left out. `check(key, node)`, if given, vets each entry before it is built; `kwargs` go to each `instantiate`."""
    node = cfg.get(group) or {}
    for name, entry in node.items():
        if entry is not None and not (isinstance(entry, DictConfig) and "_target_" in entry):
            raise RepinvError(f"{group}.{name}={entry} is not something to build: each entry of {group} is a mapping "
                              f"with a _target_ (e.g. +{group}.{name}._target_=package.module.name), or null to leave it out.")
        if entry is not None and check is not None:
            check(f"{group}.{name}", entry)
    return {name: build(entry, f"{group}.{name}", **kwargs) for name, entry in node.items() if entry is not None}


@dataclass(frozen=True)
class Choice:
    """A plug-in slot (the model source, the CPU kernels) that takes its plug-in three ways: the object itself, the
    short name of a built-in one, or a config node with `_target_`. `builtins` maps each short name to its target;
    a `partial` slot takes a function (the node's other settings bound to it), any other the object the target
    builds. `accepts` says what the slot takes; `how` (with `{key}`) says how to name a plug-in of one's own."""

    key: str
    what: str
    builtins: Mapping[str, Any]
    accepts: Callable[[Any], bool]
    how: str
    partial: bool = False

    def __call__(self, choice: Any, key: str | None = None) -> Any:
        key = key or self.key
        if isinstance(choice, Mapping) and "_target_" in choice:
            built = build(choice, key, **({"_partial_": True} if self.partial else {}))
            if not self.accepts(built):
                raise RepinvError(f"{key}._target_={choice['_target_']} is not {self.what} (it built a {type(built).__name__}); "
                                  f"{self.how.format(key=key)}")
            return built
        if self.accepts(choice):
            return choice
        if isinstance(choice, str) and choice in self.builtins:
            target = self.builtins[choice]
            return target if self.partial else target()
        raise RepinvError(f"{key}={choice} is not {self.what}.{suggest(str(choice), self.builtins)} {self.how.format(key=key)}")

    def short_name(self, node: Any) -> str | None:
        """The short name of a node that names a built-in by `_target_` alone, else None: both spellings of one
        choice are one run identity."""
        if not (isinstance(node, Mapping) and set(node) == {"_target_"}):
            return None
        try:
            target = get_object(str(node["_target_"]))
        except (ImportError, ValueError):  # what Hydra raises for a target that does not exist
            return None
        return next((name for name, builtin in self.builtins.items() if builtin is target), None)


def check_arguments(key: str, node: DictConfig, *given: str) -> None:
    """The settings of `node` (and the keyword arguments `given` at build time) are arguments its `_target_`
    takes: checked before the run folder is written, for a node that is built only after it (the trainer)."""
    target, names = located(key, node), [k for k in node if not k.startswith("_")] + list(given)
    try:
        inspect.signature(target).bind_partial(**dict.fromkeys(names))
    except TypeError as err:
        raise plugin_error(key, node, err) from None
    except ValueError:  # no signature to check (a builtin): its call will say
        return


def located(key: str, node: Mapping):
    """What `node._target_` names (a class or function), or a RepinvError naming `key`."""
    try:
        return get_object(str(node["_target_"]))
    except Exception as err:
        raise plugin_error(key, node, err) from None


def check_prior(key: str, node: DictConfig) -> None:
    """A priors entry names a `Prior` class: checked before anything is called, so a wrong
    `_target_` (a function, another class) never runs with the prior's settings."""
    target = located(key, node)
    if not (isinstance(target, type) and issubclass(target, Prior)):
        raise RepinvError(
            f"{key}._target_={node._target_} is not an image prior: each entry of priors names a subclass of "
            "repinv.priors.Prior (e.g. repinv.priors.GaussianBlur, repinv.priors.TotalVariation), or is null to leave it out."
        )


def check_metrics(metrics: dict[str, Callable], size: tuple[int, int]) -> None:
    """Call each metric once on two small random images and references of the model's input `size`: it must
    return a finite tensor [2] (one number per image), as records and logs hold one number per metric."""
    gen = torch.Generator().manual_seed(0)
    image, reference = (torch.rand((2, 3, *size), generator=gen) for _ in range(2))
    for name, metric in metrics.items():
        try:
            value = metric(image, reference)
        except Exception as err:
            raise _metric_error(name, metric, f"failed on two {size[0]}x{size[1]} images ({_reason(err)})") from None
        if not isinstance(value, torch.Tensor):
            raise _metric_error(name, metric, f"returned a {type(value).__name__}")
        if tuple(value.shape) != (2,):
            raise _metric_error(name, metric, f"returned a tensor of shape {list(value.shape)} for 2 images")
        if not bool(torch.isfinite(value.float()).all()):
            raise _metric_error(name, metric, f"returned {value.tolist()} for two random images")


def _metric_error(name: str, metric: Callable, what: str) -> RepinvError:
    func = getattr(metric, "func", metric)
    target = f"{getattr(func, '__module__', None) or ''}.{getattr(func, '__name__', repr(func))}".lstrip(".")
    return RepinvError(
        f"metrics.{name} ({target}) {what}; a metric is a function (image [N, 3, H, W], reference [N, 3, H, W]) -> tensor [N], "
        f"one finite number per image (e.g. repinv.metrics.psnr, with metrics.{name}._partial_=true). Fix "
        f"metrics.{name}._target_, or drop it with metrics.{name}=null."
    )
