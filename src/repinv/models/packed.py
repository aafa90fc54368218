"""Frozen linear layers on pre-packed weights, for the inversion step on CPU.

An inversion step runs every frozen linear layer forward (x @ W.T) and backward to its input
(g @ W), at few rows per matmul (ViT-B/32 at batch 1: 50 tokens), where a plain GEMM spends
much of its time re-reading W. MKL and oneDNN can pack W once into their own blocked layouts.
Which one (if any) is faster depends on the CPU's features; measured as forward plus input
gradient of ViT-B/32 linear layers (fp32, 2 threads):

- AMX (Intel Xeon): MKL over ViT-B/32's 48 linears, 183 -> 125 ms at 50 rows, 1128 -> 1018 ms
  at 600 (1.1-1.6x at every size up to 1,025 rows); bf16 with oneDNN 88 -> 57 ms at 50 rows and
  139 -> 97 ms at 100, but slower past ~200 rows, so bf16 packs only up to BF16_MAX_ROWS rows.
- AVX-512 without AMX (AMD EPYC, Zen 5): one block's qkv, proj, fc1 and fc2, F.linear / MKL /
  oneDNN: 119 / 134 / 65 ms at 50 rows, 1107 / 996 / 396 ms at 600, 2312 / 2220 / 928 ms at
  1,200 (fastest of repeated runs on a busy machine): oneDNN at every size, MKL gains nothing.
- AVX2 only (AMD EPYC): over the 48 linears, oneDNN 205 vs MKL's 332 ms at 50 rows, 315 vs
  406 at 100, 569 vs 636 at 200, equal at 600, 3.3 vs 2.9 s at 1,200; MKL no faster than
  F.linear at 50 rows. So oneDNN up to ONEDNN_FP32_MAX_ROWS rows there, MKL above.

Hence fp32 packs with MKL where the CPU has AMX, with oneDNN elsewhere (capped in rows on CPUs
without AVX-512), and bf16 packs only where oneDNN runs bf16 natively. It costs one packed copy
of W and one of W.T per layer, held outside the module (never in a state dict, a checkpoint or
a deep copy), and repacked whenever W changes (`_packs`).

The packed path runs only where it computes what `F.linear` would: CPU, frozen weights,
gradient mode on, no compilation, and under autocast only when the weights already have the
autocast dtype (the input is cast as autocast would). Everything else (metrics, targets,
trainable heads, CUDA) takes `F.linear` unchanged. `model.cpu_kernels=none` turns it off.
"""

from __future__ import annotations

import weakref
from math import prod

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

BF16_MAX_ROWS = 128
_MKL = torch.backends.mkl.is_available() and all(
    hasattr(torch.ops.mkl, op) for op in ("_mkl_reorder_linear_weight", "_mkl_linear"))
_ONEDNN = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))


def native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (oneDNN on AVX512-BF16 or AMX).

    Without it (e.g. an AVX2-only CPU) bf16 matmuls are emulated on one thread: on a 2-core AMD
    EPYC (AVX2) 13-16 against fp32's 61-90 GFLOP/s, and an inversion step ~30x slower.
    """
    return bool(_ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpuinfo(field: str) -> str | None:
    """A field of the first CPU in /proc/cpuinfo (e.g. `model name`, for reports), or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def fp32_choice(amx: bool, capability: str, mkl: bool = True, onednn: bool = True) -> tuple[str | None, int | None]:
    """The fp32 pack library for a CPU's features, and the row count above which oneDNN hands over to MKL.

    MKL where the CPU has AMX (or oneDNN is missing); oneDNN elsewhere, up to 512 rows on a CPU
    without AVX-512 (`capability` as torch.backends.cpu.get_cpu_capability() names it). See above.
    """
    backend = "mkl" if mkl and (amx or not onednn) else "onednn" if onednn else None
    limit = 512 if backend == "onednn" and capability != "AVX512" and mkl else None
    return backend, limit


_BF16_FAST = native_bf16()
FP32_BACKEND, ONEDNN_FP32_MAX_ROWS = fp32_choice(
    getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)(), torch.backends.cpu.get_cpu_capability(), _MKL, _ONEDNN
)
_AVAILABLE = _MKL or _ONEDNN
_PACKS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _backend(dtype: torch.dtype, rows: int) -> str | None:
    """Which library packs a `dtype` weight for `rows`-row products here, or None for F.linear."""
    if dtype == torch.bfloat16:
        return "onednn" if _BF16_FAST and rows <= BF16_MAX_ROWS else None
    if dtype != torch.float32:
        return None
    if FP32_BACKEND == "onednn" and ONEDNN_FP32_MAX_ROWS is not None and rows > ONEDNN_FP32_MAX_ROWS:
        return "mkl"
    return FP32_BACKEND


def _reorder(w: torch.Tensor, rows: int, backend: str) -> torch.Tensor:
    if backend == "mkl":
        return torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)


def _matmul(x: torch.Tensor, packed: torch.Tensor, w: torch.Tensor, bias, rows: int, backend: str) -> torch.Tensor:
    """x @ w.T + bias on `packed` (w packed by `backend` for `rows` rows)."""
    if backend == "mkl":
        return torch.ops.mkl._mkl_linear(x.contiguous(), packed, w, bias, rows)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class TrackedWeight(nn.Parameter):
    """A Parameter whose `.data` shares its version counter, so a write through `.data` counts as one.

    torch gives `.data` a fresh version counter: `w.data.copy_(v)` changes W without changing
    `w._version`, which would leave a pack of W stale. A frozen layer's weight is switched to
    this class (same storage, state-dict key and pickling as a Parameter) before it is packed.
    """

    @property
    def data(self) -> torch.Tensor:
        return self.detach()

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        torch._C.TensorBase.data.__set__(self, value)


def _packs(module: nn.Module, w: torch.Tensor, rows: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`module`'s W and W.T packed for `rows`-row products; repacked when W, the row count or the backend changes.

    W changes when it is written in place (its version counter: `copy_`, `load_state_dict`, a
    `.data` write on its TrackedWeight) or replaced (its data pointer).
    """
    if type(module.weight) is nn.Parameter:
        module.weight.__class__ = TrackedWeight
    key = (rows, backend, w.data_ptr(), w.dtype, w._version)
    w = w.detach()
    cached = _PACKS.get(module)
    if cached is None or cached[0] != key:
        cached = (key, _reorder(w, rows, backend), _reorder(w.t(), rows, backend))
        _PACKS[module] = cached
    return cached[1], cached[2]


class _PackedLinearFn(torch.autograd.Function):
    """y = x @ W.T + b with the input gradient g @ W, both on packed weights; W gets no gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed, packed_t, rows, backend):
        ctx.weight, ctx.packed_t, ctx.rows, ctx.backend = weight, packed_t, rows, backend
        return _matmul(x, packed, weight, bias, rows, backend)

    @staticmethod
    def backward(ctx, grad):
        return _matmul(grad, ctx.packed_t, ctx.weight.t(), None, ctx.rows, ctx.backend), None, None, None, None, None, None


def _linear_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * prod(x_shape) * out_shape[-1]


for _op in [torch.ops.mkl._mkl_linear] * _MKL + [torch.ops.mkldnn._linear_pointwise] * _ONEDNN:
    if _op not in flop_registry:  # torch.utils.flop_counter counts these like the matmuls they replace
        register_flop_formula(_op)(_linear_flops)


def linear(module: nn.Module, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, w, bias) for `module`'s frozen 2-D weight `w`, on packed weights where it may."""
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if autocast == w.dtype and x.is_floating_point():
        x = x.to(w.dtype)
    backend = _backend(w.dtype, rows)
    if (
        rows == 0
        or backend is None
        or autocast not in (None, w.dtype)
        or not (x.requires_grad and torch.is_grad_enabled())
        or w.requires_grad
        or (bias is not None and (bias.requires_grad or bias.dtype != w.dtype))
        or w.device.type != "cpu"
        or x.dtype != w.dtype
        or torch.compiler.is_compiling()
    ):
        return F.linear(x, w, bias)
    packed, packed_t = _packs(module, w, rows, backend)
    return _PackedLinearFn.apply(x, w, bias, packed, packed_t, rows, backend)


class PackedLinear(nn.Linear):
    """nn.Linear whose frozen CPU forward and input gradient run on packed weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x, self.weight, self.bias)


def pack_linears(net: nn.Module) -> int:
    """Switch every plain nn.Linear in `net` to PackedLinear in place (a no-op without MKL/oneDNN)."""
    if not _AVAILABLE:
        return 0
    count = 0
    for m in net.modules():
        if type(m) is nn.Linear:
            m.__class__ = PackedLinear
            count += 1
    return count
