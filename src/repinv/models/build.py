"""A job's network from its config: the model, then its surgery; and its structure alone, without weights."""

from __future__ import annotations

import copy
import warnings

import torch
from omegaconf import DictConfig, open_dict

from repinv.engine.plugins import build
from repinv.models.factory import UNTRAINED, LoadedModel
from repinv.models.surgery import apply_surgery
from repinv.models.taps import hidden_layer_names


def build_model(cfg: DictConfig, surgery: dict | None = None) -> LoadedModel:
    """The configured model after the configured surgery, plus `surgery` (more operations by name, e.g. an ablation's)."""
    ops = {**(cfg.get("surgery") or {}), **(surgery or {})}
    return apply_surgery(build(cfg.model), {k: build(op, f"surgery.{k}") for k, op in ops.items()})


def architecture(cfg: DictConfig) -> LoadedModel:
    """The configured model after its surgery, untrained and on the meta device: its structure (what layer indices
    name) without the time and files its weights would take."""
    plain = copy.deepcopy(cfg)
    with open_dict(plain.model):
        plain.model.merge_with({k: v for k, v in UNTRAINED.items() if k in plain.model})
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a transplant of untrained weights says they are untrained
        return build_model(plain)


def depth(cfg: DictConfig) -> int:
    """How many hidden layers the job's model has after its surgery: what a layer index from the end counts back from."""
    return len(hidden_layer_names(architecture(cfg).net))
