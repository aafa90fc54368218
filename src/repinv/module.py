"""The LightningModule whose only trainable parameter is the input image batch."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from repinv.images import TargetImage
from repinv.metrics import pixel_metrics
from repinv.models import LoadedModel
from repinv.models.packed import native_bf16
from repinv.objectives import Objective
from repinv.regularizers import GaussianBlur, Jitter, Octaves
from repinv.sharding import gather, gather_tensor, shard_bounds

BF16_EMULATED = (
    "precision=bf16 on a CPU without native bfloat16 (neither AVX512-BF16 nor AMX): its bf16 matmuls "
    "are emulated on one thread, and a step runs about 30x slower than in fp32 (ViT-B/32, layer 5, "
    "batch 1 on a 2-core AVX2 AMD EPYC: 6.2 s against 0.2 s). Results stay valid; for speed here use "
    "precision=32-true (the default). bf16 pays on CPUs with AMX or AVX512-BF16 and on GPUs."
)


class ImageOptimization(pl.LightningModule):
    """Gradient descent on an image batch [targets, 3, H, W] against a frozen network.

    The network is frozen (no gradients, eval mode even while Lightning trains) and left out
    of checkpoints; the objective's targets are computed once here. Each step: forward the
    (jittered) view, sum the per-target losses, one optimiser step, then the blur. Only the
    jitter crop takes the update. Metrics are computed every `log_every` steps from the
    step's own forward pass, so they cost no extra forward.
    """

    def __init__(
        self,
        model: LoadedModel,
        objective: Objective,
        images: Sequence[TargetImage],
        optimizer: Callable,
        steps: int,
        scheduler: Callable | None = None,
        blur: GaussianBlur | None = None,
        jitter: Jitter | None = None,
        octaves: Octaves | None = None,
        init_mean: float = 0.7,
        init_std: float = 1 / 20,
        log_every: int = 50,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False
        self.net = model.net
        self.model_info = model
        self.register_buffer("mean", torch.tensor(model.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.std).view(1, 3, 1, 1), persistent=False)
        self.objective = objective
        objective.setup(self.net, self.normalize, images, seed)
        self.records = objective.records
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.blur, self.jitter, self.octaves = blur, jitter or Jitter(0), octaves
        self.steps, self.log_every = int(steps), int(log_every)
        self.input_size = model.input_size
        h, w = self.input_size
        canvas = (h + self.jitter.pixels, w + self.jitter.pixels)
        init = []
        for s in objective.init_seeds(seed):
            gen = torch.Generator().manual_seed(s)
            init.append(torch.randn((3, *canvas), generator=gen) * init_std + init_mean)
        self.img = nn.Parameter(torch.stack(init))
        self.register_buffer("diverged", torch.zeros(len(self.records), dtype=torch.bool))
        self.jitter_gen = torch.Generator().manual_seed(seed)
        self.last_good: torch.Tensor | None = None
        self.any_diverged = False  # host copy of diverged.any(), refreshed at log steps: no sync per step
        self.shard: list[int] = list(range(len(self.records)))  # the targets this process optimises
        self.compile = compile
        self.__dict__["step_net"] = self.net  # the network the steps use (see on_fit_start); never a submodule
        self.sdpa_backends: list | None = None

    def setup(self, stage: str) -> None:
        """With several processes, keep only this rank's share of the targets (`records` stays whole)."""
        world = self.trainer.world_size
        if world == 1 or len(self.shard) < len(self.records):
            return
        start, stop = shard_bounds(len(self.records), self.trainer.global_rank, world)
        self.shard = list(range(start, stop))
        self.objective.shard(self.shard)
        self.img = nn.Parameter(self.img.data[start:stop].clone())
        self.diverged = self.diverged[start:stop].clone()

    # -- the frozen network -------------------------------------------------------------
    def train(self, mode: bool = True):
        """Lightning switches modules to train mode; the frozen network stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def on_fit_start(self) -> None:
        """Choose the network the steps run through, now that precision and device are known.

        Under bf16 the steps use a bfloat16 copy of the frozen weights: autocast would cast them
        again every step (its cache keeps only weights that require grad), while targets and final
        metrics stay with the fp32 network. On CPU that copy's attention avoids the fused kernel,
        whose bf16 backward is several times slower there: timm's attention runs unfused (two
        matmuls and a softmax, ~8 % faster steps at batch 1 than SDPA's math kernel), any other
        attention runs SDPA's math kernel.
        """
        step_net = self.net
        if "bf16" in str(self.trainer.precision):
            step_net = copy.deepcopy(self.net).to(torch.bfloat16)
            if self.device.type == "cpu" and not native_bf16():
                warnings.warn(BF16_EMULATED)
        self.__dict__["step_net"] = step_net  # not a submodule: not in checkpoints, not synced by DDP
        if step_net is not self.net and self.device.type == "cpu":
            self.sdpa_backends = [SDPBackend.MATH]
            for m in step_net.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = False
        if self.compile:
            self.compile_net(self.step_net)

    def compile_net(self, net: nn.Module) -> None:
        """torch.compile a network's `forward_intermediates` (what a single index tap calls).

        Targets are already computed. Each layer (and autocast state) is its own graph, so the
        recompile limit is raised to cover them. Module-path taps and the shared pass of several
        layers stay eager: their forward ends by raising from a hook.
        """
        if not hasattr(net, "forward_intermediates"):
            return
        import torch._dynamo

        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 4 * len(self.records) + 8)
        net.forward_intermediates = torch.compile(net.forward_intermediates)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything a resumed run needs besides what Lightning saves: RNG, divergence state, what was run."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("net.")}
        checkpoint["jitter_rng"] = self.jitter_gen.get_state()
        checkpoint["last_good"] = self.last_good
        checkpoint["repinv"] = self.run_identity()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "jitter_rng" in checkpoint:
            self.jitter_gen.set_state(checkpoint["jitter_rng"])
        self.last_good = checkpoint.get("last_good")
        diverged = checkpoint["state_dict"].get("diverged")
        self.any_diverged = bool(diverged.any()) if diverged is not None else False

    def run_identity(self) -> dict:
        """What a checkpoint must agree on to be resumed by this module: the targets, the steps, the canvas."""
        return {"targets": [self.target_key(i) for i in range(len(self.records))], "steps": self.steps,
                "canvas": list(self.img.shape[1:])}

    def configure_optimizers(self):
        opt = self.optimizer_factory([self.img])
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    # -- the step -----------------------------------------------------------------------
    def view(self, offset: tuple[int, int] | None = None) -> torch.Tensor:
        """The part of the canvas the network sees (the centre crop unless an offset is given)."""
        dy, dx = offset or self.jitter.center()
        h, w = self.input_size
        return self.img[:, :, dy : dy + h, dx : dx + w]

    def target_key(self, i: int) -> str:
        return "/".join(str(v) for k, v in self.records[i].items() if k != "module")

    def training_step(self, batch, batch_idx):
        step = self.global_step
        log_now = step % self.log_every == 0 or step == self.steps - 1
        offset = self.jitter.offset(step, self.jitter_gen)
        view = self.view(offset)
        with sdpa_kernel(self.sdpa_backends) if self.sdpa_backends else nullcontext():
            losses, stats = self.objective(self.step_net, self.normalize(view))
        if log_now:
            self._check_finite(losses)
            self._log_step(losses, stats, view)
        # masked after the check, which updates the mask in place (autograd would refuse it afterwards)
        loss = torch.where(self.diverged, torch.zeros_like(losses), losses).sum()
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        before = self.img.detach().clone() if self.jitter.pixels else None
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            if self.blur is not None:
                self.blur(self.img.data, step, self.steps)
            if self.octaves is not None:
                self.octaves(self.img.data, step, self.steps)
            if before is not None:
                crop = self.view(offset).detach().clone()
                self.img.data.copy_(before)
                self.view(offset).data.copy_(crop)
            if self.last_good is not None and self.any_diverged:
                self.img.data[self.diverged] = self.last_good[self.diverged]
        return loss.detach()

    @torch.no_grad()
    def _check_finite(self, losses: torch.Tensor, remember: bool = True) -> bool:
        """Targets whose loss or image went non-finite go back to their last finite image and stop.

        Returns whether a target was stopped now. `remember`: the current image becomes the
        last finite one (at log steps; a check at the end leaves the state as the steps left it).
        """
        finite = torch.isfinite(losses.detach()) & torch.isfinite(self.img.detach()).flatten(1).all(1)
        bad = ~finite & ~self.diverged
        stopped = bool(bad.any())
        if stopped:
            if self.last_good is not None:
                self.img.data[bad] = self.last_good[bad]
            self.diverged |= bad
        self.any_diverged = bool(self.diverged.any())
        if remember:
            self.last_good = self.img.detach().clone()
        return stopped

    @torch.no_grad()
    def measure(self, losses: torch.Tensor, stats: dict, view: torch.Tensor) -> list[dict[str, float]]:
        """Per-target metric dicts from a forward pass's losses and stats and the image it saw."""
        values = {"loss": losses.detach().float(), **{k: v.float() for k, v in stats.items()}}
        if self.objective.reference is not None:
            values.update(pixel_metrics(view, self.objective.reference[self.shard]))
        table = {k: v.cpu().tolist() for k, v in values.items()}
        return [{k: table[k][i] for k in table} for i in range(len(losses))]

    def _log_step(self, losses, stats, view) -> None:
        rows, diverged = gather(self.measure(losses, stats, view)), gather(self.diverged.tolist())
        flat = {f"{name}/{self.target_key(i)}": value for i, row in enumerate(rows) for name, value in row.items()}
        total = float(sum(r["loss"] for r, d in zip(rows, diverged) if not d))
        flat["lr"] = self.optimizers().param_groups[0]["lr"]
        if self.blur is not None:
            flat["blur_sigma"] = self.blur.sigma(self.global_step, self.steps)
        flat["loss"] = total
        for logger in self.loggers:
            logger.log_metrics(flat, step=self.global_step)
        self.log("loss", total, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)

    # -- results ------------------------------------------------------------------------
    @torch.no_grad()
    def final_metrics(self, gathered: bool = True) -> list[dict]:
        """One record per target: identity, the metrics of the current image, and its state.

        With several processes this is collective: every rank calls it, each gets all targets
        (`gathered=False`: only this rank's, e.g. after a crash when other ranks may be gone).
        """
        view = self.view()
        with torch.autocast(device_type=view.device.type, enabled=False):
            losses, stats = self.objective(self.net, self.normalize(view.float()))
            if self._check_finite(losses, remember=False):  # the steps since the last check went non-finite
                losses, stats = self.objective(self.net, self.normalize(view.float()))
        rows = self.measure(losses, stats, view)
        out = []
        for i, row, div in zip(self.shard, rows, self.diverged.tolist()):
            out.append(self.objective.finalize({**self.records[i], **row, "diverged": bool(div)}))
        return gather(out) if gathered else out

    def current_images(self) -> torch.Tensor:
        """The reconstructions as the network sees them, clamped to [0, 1]."""
        return self.view().detach().float().clamp(0, 1)

    def all_images(self) -> torch.Tensor:
        """`current_images` of every rank in target order (collective with several processes)."""
        return gather_tensor(self.current_images())
