"""Local invertibility: the spectrum of a layer's Jacobian at the target image, never formed.

The layer function is x ↦ tap(net, normalize(x)) for one image x (3·H·W numbers) and J its
Jacobian at the target photograph (m outputs × n inputs). J is only ever applied to probe
vectors: J V by forward-mode AD (`torch.func.jvp`) and Jᵀ U by reverse mode
(`torch.autograd.grad`), each for a batch of probes at once, as a batch of copies of the image
whose rows the frozen network keeps apart (eval mode).

Measures (the fields of `spectrum`):

- `sigma_top`: the top-k singular values, by randomised block Krylov iteration (Musco & Musco
  2015; Halko, Martinsson & Tropp 2011 for the sketch): the span of JΩ, (JJᵀ)JΩ, ...,
  (JJᵀ)^q JΩ for a Gaussian Ω of k + `oversample` columns, q = `power_iters`, and the singular
  values of J on it. Each is a lower bound on the true value of its rank, exact when the basis
  spans min(m, n). Measured against exact Jacobians of vit_tiny's patch embedding and first two
  blocks, with and without LayerNorm (flat spectra: σ32 ≥ 0.86 σ1), the defaults (k = 16,
  oversample 16, q = 6) are at most 1.1% below every exact top-16 value (three seeds); plain
  subspace iteration (oversample 8, q = 2) was 6-11% low on them.
- `sigma_small`: the smallest singular values found: the smallest Ritz values of Lanczos (full
  reorthogonalisation) on the Gram matrix of the smaller side, JJᵀ if m ≤ n else JᵀJ, after
  `lanczos_steps` steps. Ritz values lie inside the spectrum, so each is an upper bound on the
  true value of its rank; the smallest converges first and is exact once the steps reach the
  Gram matrix's dimension (or its number of distinct eigenvalues). The Gram matrix squares the
  spectrum, so in float32 values below about 1e-3·σmax read as ~0 or too large.
- `sigma_max` and `sigma_min_found` (the smallest value either method found); `condition` =
  sigma_max / sigma_min_found, the conditioning of J on the min(m, n) directions it can keep
  (a lower bound on the true one unless Lanczos converged).
- `null_dim_min` = max(0, n − m): an under-complete layer (fewer outputs than inputs) maps at
  least that many input directions to nothing, so no image is recoverable from it whatever the
  condition; `completeness` says under-, over- or complete.
- `stable_rank` = ‖J‖²_F / σ²_max, a rank over the whole spectrum (‖J‖²_F by Hutchinson's
  estimate E‖Jω‖² from the sketch; exact when the sketch spans the spectrum).
- `numerical_rank`: how many of `sigma_top` exceed rank_tol · σ_max; a lower bound when every
  one of them does and k < min(m, n) (`numerical_rank_is_lower_bound`).
- `entropy_rank` = exp(−Σ p log p) with p_i = σ_i / Σσ over `sigma_top` (Roy & Vetterli 2007):
  how many of the top-k directions carry the layer's gain, at most k.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from repinv.models import LoadedModel
from repinv.models.taps import LayerTap


def layer_function(model: LoadedModel, tap: LayerTap) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ tap(net, normalize(x)) for a batch of images in [0, 1]."""
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return lambda x: tap(model.net, (x - mean.to(x)) / std.to(x))


class LayerJacobian:
    """The Jacobian of a row-wise function `fn` at `x0` ([1, ...]) as a linear operator on flat vectors.

    `matvec(V)` ([n, b] -> [m, b]) and `rmatvec(U)` ([m, b] -> [n, b]) run `probe_batch`
    probes per pass. Forward-mode AD needs attention in plain ops: SDPA's math kernel (the
    only one with forward AD on CPU) and no fused nn.MultiheadAttention fast path (torchvision).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, probe_batch: int = 16):
        self.fn, self.x0, self.probe_batch = fn, x0.detach(), int(probe_batch)
        with torch.no_grad():
            y0 = fn(self.x0)
        self.in_shape, self.out_shape = tuple(self.x0.shape[1:]), tuple(y0.shape[1:])
        self.n, self.m = math.prod(self.in_shape), math.prod(self.out_shape)
        self.dtype = y0.dtype

    def _copies(self, b: int) -> torch.Tensor:
        return self.x0.expand(b, *self.in_shape).clone()

    def _chunked(self, apply, probes: torch.Tensor) -> torch.Tensor:
        cols = [apply(chunk) for chunk in probes.to(self.dtype).T.split(self.probe_batch)]
        return torch.cat(cols).T.to(probes.dtype)

    def _jv(self, v: torch.Tensor) -> torch.Tensor:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with sdpa_kernel([SDPBackend.MATH]):
                _, out = torch.func.jvp(self.fn, (self._copies(len(v)),), (v.reshape(-1, *self.in_shape),))
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return out.reshape(len(v), self.m)

    def _jtu(self, u: torch.Tensor) -> torch.Tensor:
        x = self._copies(len(u)).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.fn(x), x, u.reshape(-1, *self.out_shape))
        return g.reshape(len(u), self.n)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._chunked(self._jv, v)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self._chunked(self._jtu, u)

    def gram(self, w: torch.Tensor) -> torch.Tensor:
        """The Gram matrix of the smaller side applied to w: JJᵀw if m ≤ n, else JᵀJw."""
        return self.matvec(self.rmatvec(w)) if self.m <= self.n else self.rmatvec(self.matvec(w))

    @property
    def gram_dim(self) -> int:
        return min(self.m, self.n)


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a).Q


def block_krylov_svd(op: LayerJacobian, k: int, oversample: int = 16, power_iters: int = 6,
                     gen: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Top-k singular values (descending, float64) and ‖J‖²_F, by randomised block Krylov iteration.

    The basis spans JΩ, (JJᵀ)JΩ, ..., (JJᵀ)^q JΩ (q = `power_iters`) for a Gaussian Ω of k + oversample
    columns, at most min(m, n) in all; the values are those of J restricted to it (Rayleigh–Ritz), so each
    is a lower bound on the true value of its rank. Every block's Jᵀ image is computed once, to grow the
    basis and for the Ritz values: (k + oversample)(2q + 2) products, as many as q subspace iterations.
    """
    width = min(k + oversample, op.gram_dim)
    y = op.matvec(torch.randn(op.n, width, generator=gen, dtype=torch.float64))
    frobenius2 = float(y.pow(2).sum() / width)  # Hutchinson: E‖Jω‖² = ‖J‖²_F
    basis = _orth(y)
    block, images = basis, []  # images: Jᵀ of each block; side by side they are (QᵀJ)ᵀ for the whole basis Q
    for _ in range(power_iters):
        room = op.gram_dim - basis.shape[1]
        if room <= 0:
            break
        images.append(op.rmatvec(block))
        # one QR of the basis and the new vectors: the new block is orthogonal to the basis even where the
        # Krylov space has closed (a layer of low rank) and the new vectors are rounding noise
        block = _orth(torch.cat([basis, op.matvec(images[-1])], 1))[:, basis.shape[1]:][:, :room]
        basis = torch.cat([basis, block], 1)
    images.append(op.rmatvec(block))
    sigma = torch.linalg.svdvals(torch.cat(images, 1))
    if basis.shape[1] == op.gram_dim:  # the basis spans the whole spectrum: the Frobenius norm is exact
        frobenius2 = float(sigma.pow(2).sum())
    return sigma[:k], frobenius2


def lanczos_ritz(apply: Callable[[torch.Tensor], torch.Tensor], dim: int, steps: int,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """Ritz values (ascending) of a symmetric PSD operator after `steps` Lanczos steps with full reorthogonalisation."""
    q = torch.randn(dim, generator=gen, dtype=torch.float64)
    basis = [q / q.norm()]
    alphas, betas = [], []
    for _ in range(min(steps, dim)):
        w = apply(basis[-1][:, None])[:, 0]
        alphas.append(float(basis[-1] @ w))
        stack = torch.stack(basis, 1)
        for _ in range(2):  # twice is enough (Kahan): orthogonal to working precision
            w = w - stack @ (stack.T @ w)
        beta = float(w.norm())
        if beta <= 1e-10 * max(abs(a) for a in alphas) or len(basis) == dim:
            break  # the Krylov space is invariant: its Ritz values are eigenvalues
        betas.append(beta)
        basis.append(w / beta)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(t)


@dataclass
class SpectrumSettings:
    """How hard to look: `top_k` singular values from a block Krylov basis grown from top_k + `oversample`
    probes by `power_iters` iterations, `lanczos_steps` steps for the small end, `small_k` of its
    values kept, `rank_tol` for the numerical rank, `probe_batch` probes per forward pass."""

    top_k: int = 16
    oversample: int = 16
    power_iters: int = 6
    lanczos_steps: int = 24
    small_k: int = 4
    rank_tol: float = 1e-3
    probe_batch: int = 16
    seed: int = 0


def _completeness(n: int, m: int) -> str:
    return "under-complete" if m < n else "over-complete" if m > n else "complete"


def spectrum(fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, settings: SpectrumSettings) -> dict:
    """Every spectral measure of `fn`'s Jacobian at `x0` ([1, ...]); see the module docstring."""
    gen = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    op = LayerJacobian(fn, x0, settings.probe_batch)  # one forward pass: the dimensions
    t0 = time.perf_counter()
    top, frobenius2 = block_krylov_svd(op, settings.top_k, settings.oversample, settings.power_iters, gen)
    t1 = time.perf_counter()
    ritz = lanczos_ritz(op.gram, op.gram_dim, settings.lanczos_steps, gen).clamp(min=0).sqrt()
    t2 = time.perf_counter()
    small = ritz[: settings.small_k]
    sigma_max = max(float(top[0]), float(ritz[-1]))
    sigma_min = min(float(top[-1]), float(small[0]))
    p = top / top.sum() if float(top.sum()) > 0 else top
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    above = int((top > settings.rank_tol * sigma_max).sum())
    return {
        "n_in": op.n, "n_out": op.m, "completeness": _completeness(op.n, op.m), "null_dim_min": max(0, op.n - op.m),
        "null_fraction": max(0, op.n - op.m) / op.n,
        "sigma_top": top.tolist(), "sigma_small": small.tolist(),
        "sigma_max": sigma_max, "sigma_min_found": sigma_min,
        "condition": sigma_max / sigma_min if sigma_min > 0 else math.inf,
        "stable_rank": frobenius2 / sigma_max**2 if sigma_max > 0 else 0.0,
        "numerical_rank": above,
        "numerical_rank_is_lower_bound": above == len(top) < op.gram_dim,
        "entropy_rank": math.exp(entropy),
        "forward_seconds": t0 - start, "svd_seconds": t1 - t0, "lanczos_seconds": t2 - t1,
    }
