"""The LightningModule whose only trainable parameter is the input image batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from repinv.engine.canvas import Canvas
from repinv.engine.divergence import Divergence
from repinv.engine.identity import module_identity
from repinv.engine.measuring import Measuring
from repinv.engine.precision import StepNetwork, autocast_off, compile_forward, step_network
from repinv.engine.sharding import gather, gather_rows, gather_tensor, shard_bounds, take_checkpoint_rows, take_shard
from repinv.errors import RepinvError
from repinv.inputs.images import TargetImage
from repinv.models import LoadedModel
from repinv.objectives import Objective, target_key
from repinv.params import Parametrization, Pixel
from repinv.priors import Prior


def noise_canvas(seeds: Sequence[int], size: tuple[int, int], mean: float, std: float) -> torch.Tensor:
    """One N(mean, std) noise image [3, *size] per seed, stacked: the same seeds give the same start."""
    return torch.stack([torch.randn((3, *size), generator=torch.Generator().manual_seed(s)) * std + mean
                        for s in seeds])


def check_scaler(optimizer, plugin) -> None:
    """L-BFGS evaluates its closure several times per step, which a gradient scaler (precision=16-mixed
    on a GPU) cannot unscale: refuse that pairing before the first step rather than inside it."""
    if getattr(plugin, "scaler", None) is not None and isinstance(optimizer, torch.optim.LBFGS):
        raise RepinvError(
            "optimizer=lbfgs with precision=16-mixed: float16 autocast on a GPU scales the loss with a gradient "
            "scaler, which L-BFGS (several loss evaluations per step, its own line search) cannot use. Use "
            "precision=bf16 or precision=32-true with L-BFGS, or another optimizer (sgd, adam) with 16-mixed."
        )


class Normalize(nn.Module):
    """The network's input normalisation, (x - mean) / std per channel; its buffers move with the module."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, device=device).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageOptimization(pl.LightningModule):
    """Gradient descent on an image batch [targets, 3, H, W] against a frozen network.

    The network is frozen (no gradients, eval mode even while Lightning trains) and left out
    of checkpoints; the objective names its targets here and computes them before the first
    step, on the run's device and for this process's share only. Every tensor a step uses is a
    parameter or buffer, so the module runs wherever it is moved. The trainable tensor is a
    parametrisation's (`image_param`, a factory of the batch shape; pixels by default) and
    `canvas` (a `Canvas`) is the image side: what it renders, the crop the network sees, the
    priors' offsets, transforms, penalties and updates. Each step: the priors place and
    transform the crop, the per-target losses (plus the priors' penalties) are summed, one
    optimiser step (through a closure, so L-BFGS can evaluate the loss again), then the priors
    update the rendered canvas, in the order given, and it is written back to the parameter.
    When the priors' margins make the canvas larger than the input, only the crop takes the step.
    `measuring` (a `Measuring`) is the measuring side: every `log_every` steps and at the end,
    the metrics of the centre crop in fp32; at a log step whose own forward saw another crop
    (jitter), a transformed one, or ran under bf16/autocast, one extra no-grad fp32 forward.

    Callbacks read the run through `RunView` (repinv.reporting.callbacks), which this module provides.
    """

    def __init__(
        self,
        model: LoadedModel,
        objective: Objective,
        images: Sequence[TargetImage],
        optimizer: Callable,
        steps: int,
        scheduler: Callable | None = None,
        priors: Sequence[Prior] = (),
        param: Callable[[tuple[int, ...]], Parametrization] = Pixel,
        metrics: Mapping[str, Callable] | None = None,
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
        self.normalize = Normalize(model.mean, model.std, next(model.net.parameters()).device)  # where the network is now
        self.objective = objective
        objective.setup(self.net, self.normalize, images, seed)
        self.targets = objective.targets
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        for prior in priors:
            prior.check(model.input_size)
        self.steps, self.log_every = int(steps), int(log_every)
        margin = sum(p.margin for p in priors)
        size = (model.input_size[0] + margin, model.input_size[1] + margin)
        start = noise_canvas(objective.init_seeds(seed), size, init_mean, init_std)
        self.image_param = param(tuple(start.shape))  # registered here: checkpoints name it `image_param`
        self.image_param.set_image(start)
        self.canvas = Canvas(self.image_param, model.input_size, priors)
        self.measuring = Measuring(objective, self.normalize, metrics)
        self.logged_loss: float | None = None  # the summed loss of the last log step, a host number
        self.divergence = Divergence(len(self.targets))
        self.generator = torch.Generator().manual_seed(seed)  # the priors' random draws, saved in checkpoints
        self.shard: list[int] = list(range(len(self.targets)))  # the targets this process optimises
        self.sharded_prefixes: list[str] = []  # the state cut to this process's rows (see `take_shard`)
        self.compile = compile
        self.__dict__["stepper"] = StepNetwork(self.net)  # what the steps run through (see on_fit_start)

    def setup(self, stage: str) -> None:
        """With several processes, keep only this rank's share of the targets (`targets` stays whole)."""
        world = self.trainer.world_size
        if world > 1 and len(self.shard) == len(self.targets):
            self.take_shard(self.trainer.global_rank, world)

    def take_shard(self, rank: int, world: int) -> None:
        """Cut every per-target part (`repinv.engine.sharding.Rows`) to `rank`'s share of the targets."""
        parts = {"objective": self.objective, "image_param": self.image_param, "divergence": self.divergence}
        self.shard, self.sharded_prefixes = take_shard(parts, len(self.targets), rank, world)
        self.canvas.take_rows(*shard_bounds(len(self.targets), rank, world), len(self.targets))

    # -- the frozen network -------------------------------------------------------------
    def train(self, mode: bool = True):
        """Lightning switches modules to train mode; the frozen network stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def on_fit_start(self) -> None:
        """Prepare the network the steps run through, now that precision and device are known."""
        self.objective.prepare(self.net)
        stepper = step_network(self.net, str(self.trainer.precision), self.device)
        self.__dict__["stepper"] = stepper  # not a submodule: not in checkpoints, not synced by DDP
        if self.compile:
            compile_forward(stepper.net, graphs=4 * len(self.targets) + 8)
        with stepper.context():
            self.objective.tune(stepper.net, self.normalize(self.canvas.view()))

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What a resumed run needs besides the state dict and Lightning's own state: the priors' RNG, what was run.

        With several processes every rank calls this and the checkpoint gets every rank's rows in
        target order (the whole batch, as one process saves it) and every rank's RNG.
        """
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("net.")}
        checkpoint["prior_rng"] = self.generator.get_state()
        checkpoint["repinv"] = self.identity()
        if len(self.shard) < len(self.targets):
            gather_rows(checkpoint, self.sharded_prefixes, len(self.shard))
            checkpoint["prior_rng_ranks"] = gather([checkpoint["prior_rng"]])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the priors' RNG (this rank's when saved by as many processes); with several
        processes, cut the whole batch to this rank's rows before Lightning loads it."""
        rng, trainer = checkpoint.get("prior_rng_ranks") or [], self._trainer
        if trainer is not None and len(rng) == trainer.world_size:
            self.generator.set_state(rng[trainer.global_rank])
        elif "prior_rng" in checkpoint:
            self.generator.set_state(checkpoint["prior_rng"])
        if len(self.shard) < len(self.targets):
            take_checkpoint_rows(checkpoint, self.sharded_prefixes, len(self.targets), self.shard[0], self.shard[-1] + 1)

    def identity(self) -> dict:
        """What a checkpoint must agree on to be resumed by this module (`repinv.engine.identity.module_identity`)."""
        return module_identity(self.targets, self.steps, tuple(self.image_param.shape), type(self.image_param).__name__)

    def configure_optimizers(self):
        opt = self.optimizer_factory(list(self.image_param.parameters()))
        check_scaler(opt, self.trainer.precision_plugin)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    # -- the step -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        """One step, in fp32 but for the network's forward (`stepper.context`): Lightning runs it under its precision's
        autocast, which would otherwise round the parametrisation's, the priors' and the metrics' maths too."""
        step, canvas = self.global_step, self.canvas
        offset = canvas.offset(step, self.generator)
        opt = self.optimizers()
        first: dict[str, torch.Tensor | None] = {}  # the first evaluation's loss, and canvas for the jitter's restore

        def closure() -> torch.Tensor:
            """The loss and its gradient; the first call (the only one but for L-BFGS) also checks and logs."""
            loss = self._loss(step, offset, check=not first)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if not first:
                first.update(loss=loss.detach(), canvas=canvas.image.detach().clone() if canvas.margin else None)
            return loss

        with autocast_off(self.device):
            opt.step(closure=closure)
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
            canvas.update(step, self.steps, offset, first["canvas"], self.divergence)
        # nothing returned and nothing `self.log`ged: Lightning would read either back to the host for its
        # progress bar at every step; the bar shows `logged_loss` instead

    def _loss(self, step: int, offset: tuple[int, int], check: bool) -> torch.Tensor:
        """Render, take the crop through the priors and the network; at log steps (`check`) log, then stop
        diverged targets. Returns the summed loss of the targets still running."""
        canvas = self.canvas
        canvas.render()
        view = canvas.view(offset)
        seen = canvas.seen(view, step, self.generator)
        with self.stepper.context():
            losses, stats = self.objective(self.stepper.net, self.normalize(seen))
        if check and step % self.log_every == 0:
            if seen is view and offset == canvas.centre() and self.stepper.exact(self.net):
                self._log_step(losses, stats, view)
            else:
                centre = canvas.view()
                self._log_step(*self.measuring.fp32(self.net, centre), centre)
            # after the row is logged: it shows the image the losses came from, not the one a rollback puts back
            self.divergence.check(canvas.image, losses)
        # masked after the check, which updates the mask in place (autograd would refuse it afterwards)
        return self.divergence.masked(canvas.penalised(losses, view, step)).sum()

    def on_train_end(self) -> None:
        """A finished run's curves end with the image it returns: the metrics after its last step, at step `steps`
        (after the result callbacks, which put a target that diverged since its last check back to its last finite
        image). Each earlier row shows the image its step starts from."""
        if self.global_step >= self.steps:
            view = self.canvas.view()
            self._log_step(*self.measuring.fp32(self.net, view), view, settings=False)

    def _log_step(self, losses, stats, view, settings: bool = True) -> None:
        """Log the targets' metrics and their summed loss, with the step's learning rate and priors' `settings`."""
        rows = gather(self.measuring.rows(losses, stats, view, self.shard))
        diverged = gather(self.divergence.mask.tolist())
        flat = {f"{name}/{target_key(self.targets[i])}": value for i, row in enumerate(rows) for name, value in row.items()}
        total = float(sum(r["loss"] for r, d in zip(rows, diverged) if not d))
        if settings:
            flat["lr"] = self.optimizers().param_groups[0]["lr"]
            for prior in self.canvas.priors:
                flat.update(prior.scalars(self.global_step, self.steps))
        flat["loss"] = total
        for logger in self.loggers:
            logger.log_metrics(flat, step=self.global_step)
        self.logged_loss = total  # what the progress bar shows until the next log step

    # -- what callbacks read (`repinv.reporting.callbacks.RunView`) ------------------------------------
    def reference_images(self) -> dict[str, torch.Tensor]:
        """The target photographs by image name ({} when the objective has none)."""
        reference = self.objective.reference
        if reference is None:
            return {}
        names = list(dict.fromkeys(r["image"] for r in self.targets))
        return dict(zip(names, reference[: len(names)]))

    @torch.no_grad()
    def final_metrics(self, gathered: bool = True) -> list[dict]:
        """One record per target: identity, the metrics of the current image, and its state.

        With several processes this is collective: every rank calls it, each gets all targets
        (`gathered=False`: only this rank's, e.g. after a crash when other ranks may be gone).
        """
        view = self.canvas.view()
        losses, stats = self.measuring.fp32(self.net, view)
        if self.divergence.check(self.canvas.image, losses, remember=False):  # the steps since the last check went non-finite
            self.canvas.commit(self.canvas.image)
            losses, stats = self.measuring.fp32(self.net, view)
        rows = self.measuring.rows(losses, stats, view, self.shard)
        out = []
        for i, row, div in zip(self.shard, rows, self.divergence.mask.tolist()):
            out.append(self.objective.finalize({**self.targets[i], **row, "diverged": bool(div)}, self.measuring.names))
        return gather(out) if gathered else out

    def images(self, gathered: bool = True) -> torch.Tensor:
        """The reconstructions as the network sees them, clamped to [0, 1]: every rank's in target order
        (collective with several processes), or with `gathered=False` only this rank's."""
        mine = self.canvas.view().detach().float().clamp(0, 1)
        return gather_tensor(mine) if gathered else mine
