"""The network the steps run through: a bfloat16 copy of the frozen weights under bf16, optionally compiled.

Targets and final metrics always use the run's own fp32 network; only the steps use what this
module prepares.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import ExitStack, nullcontext

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from repinv.models.packed import native_bf16
from repinv.models.sources import for_net

BF16_EMULATED = (
    "precision=bf16 on a CPU without native bfloat16 (neither AVX512-BF16 nor AMX): its bf16 matmuls "
    "are emulated on one thread, and a step runs about 30x slower than in fp32 (ViT-B/32, layer 5, "
    "batch 1 on a 2-core AVX2 AMD EPYC: 6.2 s against 0.2 s). Results stay valid; for speed here use "
    "precision=32-true (the default). bf16 pays on CPUs with AMX or AVX512-BF16 and on GPUs."
)


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


def set_matmul_precision(precision: str) -> None:
    """fp32 matmul precision for the whole process; "highest" also keeps cuDNN's convolutions out of TF32.

    `torch.set_float32_matmul_precision` reaches matmuls only: cuDNN's own TF32 switch is on by
    default, so at "highest" convolutions (ResNet, ConvMixer, patch embeddings) would still run in
    TF32 on a GPU and in fp32 on a CPU. "high" and "medium" allow TF32 in both.
    """
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"


def autocast_off(device: torch.device):
    """fp32 maths inside a step Lightning runs under its precision's autocast (a device without autocast: as it is)."""
    kind = device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext()


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype a mixed `precision` (as Lightning names it) runs a step's forward in; None for fp32."""
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None


class StepNetwork:
    """The network for the steps, the autocast dtype of its forward (None: fp32) and the attention kernels it may use
    (None: any). Only the forward runs in `dtype`: the image, its parametrisation, priors and metrics stay fp32."""

    def __init__(self, net: nn.Module, sdpa_backends: list[SDPBackend] | None = None, dtype: torch.dtype | None = None,
                 device: torch.device = torch.device("cpu")):
        self.net, self.sdpa_backends, self.dtype, self.device = net, sdpa_backends, dtype, device

    def exact(self, net: nn.Module) -> bool:
        """Whether a forward here is `net`'s own fp32 forward."""
        return self.net is net and self.dtype is None

    def context(self) -> ExitStack:
        """Where a step's forward runs: under autocast to `dtype`, restricted to `sdpa_backends` when there are some."""
        stack = ExitStack()
        if self.dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        if self.sdpa_backends:
            stack.enter_context(sdpa_kernel(self.sdpa_backends))
        return stack


def step_network(net: nn.Module, precision: str, device: torch.device) -> StepNetwork:
    """The network the steps use under `precision` on `device`, its forward autocast to the precision's dtype.

    Under bf16 a bfloat16 copy of the frozen weights: autocast would cast them again every step
    (its cache keeps only weights that require grad). On CPU that copy's attention avoids the
    fused kernel, whose bf16 backward is several times slower there: timm's attention runs
    unfused (two matmuls and a softmax, ~8 % faster steps at batch 1 than SDPA's math kernel),
    any other attention runs SDPA's math kernel. Warns when bf16 is emulated on this CPU.
    """
    dtype = autocast_dtype(precision)
    if dtype is not torch.bfloat16:
        return StepNetwork(net, dtype=dtype, device=device)
    copied = copy.deepcopy(net).to(torch.bfloat16)
    if device.type != "cpu":
        return StepNetwork(copied, dtype=dtype, device=device)
    if not native_bf16():
        warnings.warn(BF16_EMULATED)
    unfuse_attention(copied)
    return StepNetwork(copied, [SDPBackend.MATH], dtype=dtype, device=device)


def unfuse_attention(net: nn.Module) -> None:
    """Switch timm's attention layers of `net` (and only those) to their unfused path.

    Per layer: timm's global switch (`timm.layers.set_fused_attn`) is read when a layer is
    constructed, so it cannot reach this already built copy, and it would reach every model
    built later in the process, the fp32 network of the next run included.
    """
    for m in net.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def compile_forward(net: nn.Module, graphs: int) -> None:
    """torch.compile the forward of each of the network's hidden layers (its blocks or stages).

    Taps hook those modules and end the pass from the hook; a hook runs outside the module's
    `forward`, so compiling the forwards keeps the early stop. Each layer (and autocast state) is
    its own graph: the recompile limit is raised to at least `graphs`.
    """
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, graphs)
    for name in for_net(net).hidden_layers(net):
        module = net.get_submodule(name)
        module.forward = torch.compile(module.forward)
