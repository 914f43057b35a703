"""``FlowMatchingModule``: (U)OT-coupled conditional flow matching as a LightningModule.

Batches are either dicts ``{"x0", "x1"[, "y0", "y1"]}`` (unpaired translation: source batch
and target batch) or ``(x1, y1)`` tuples (generation: the source is standard Gaussian noise).
Each training step re-pairs the two batches with the ``sampler``'s plan (independent, OT,
UOT or exact; :class:`torchuot.couplings.PlanSampler`) and regresses the velocity field on
the straight interpolant (:func:`torchuot.flow.cfm_loss`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from torchuot.couplings import PlanSampler
from torchuot.flow import ODE_METHODS, cfm_loss, odeint

__all__ = ["FlowMatchingModule", "split_batch"]


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x0, x1, y0, y1)`` from a translation dict or an ``(x1, y1)`` generation tuple.

    For the tuple form ``x0`` is standard Gaussian noise shaped like ``x1`` and ``y0`` is None.
    """
    if isinstance(batch, dict):
        if "x0" not in batch or "x1" not in batch:
            raise KeyError(f"a translation batch needs keys 'x0' and 'x1', got {sorted(batch)}.")
        return batch["x0"], batch["x1"], batch.get("y0"), batch.get("y1")
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        x1 = batch[0]
        return torch.randn_like(x1), x1, None, (batch[1] if len(batch) == 2 else None)
    raise TypeError(f"batch must be a dict with x0/x1 or an (x, y) tuple, got {type(batch)!r}.")


class FlowMatchingModule(L.LightningModule):
    """Conditional flow matching with minibatch (unbalanced) OT couplings.

    Args:
        net: velocity field ``net(t: (B,), x: (B, ...)) -> (B, ...)`` (e.g.
            ``models.UNetVelocity``, ``models.MLPVelocity``).
        sampler: minibatch coupling (default: UOT with ``eps=0.01``, ``tau_a=0.9``,
            ``tau_b=1`` on the mean-normalised cost, as UOT-FM).
        sigma: noise of the interpolant.
        optimizer: optimizer factory (LightningCLI ``OptimizerCallable``; default Adam 1e-3).
        scheduler: optional LR-scheduler factory (stepped every epoch).
        ema_decay: keep an exponential moving average of the weights with this decay and use it
            for validation, test and prediction (``None``: no EMA).
        ode_method: ``"euler"``, ``"midpoint"`` or ``"dopri5"`` for generation.
        ode_steps: steps of the fixed-step methods.
        n_grid: samples shown per row in the validation sample grid (0: no grid is saved).
    """

    def __init__(
        self,
        net: nn.Module,
        sampler: PlanSampler | None = None,
        sigma: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        ema_decay: float | None = None,
        ode_method: str = "euler",
        ode_steps: int = 20,
        n_grid: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module velocity field, got {type(net)!r}.")
        if sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {sigma!r}.")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {ema_decay!r}.")
        if ode_method not in ODE_METHODS:
            raise ValueError(f"ode_method must be one of {ODE_METHODS}, got {ode_method!r}.")
        self.save_hyperparameters(ignore=["net", "sampler", "optimizer", "scheduler"])
        self.net = net
        self.sampler = sampler if sampler is not None else PlanSampler("uot")
        self.sigma = sigma
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(net).requires_grad_(False) if ema_decay is not None else None
        self.ode_method, self.ode_steps, self.n_grid = ode_method, ode_steps, n_grid
        self._grid: list[torch.Tensor] = []

    # ------------------------------------------------------------------ model
    @property
    def eval_net(self) -> nn.Module:
        """The EMA network when EMA is on, else the trained one."""
        return self.ema if self.ema is not None else self.net

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(t, x)

    @torch.no_grad()
    def translate(self, x0: torch.Tensor, return_trajectory: bool = False) -> torch.Tensor:
        """Push ``x0: (B, ...)`` through the learned flow from ``t=0`` to ``t=1``."""
        return odeint(
            self.eval_net,
            x0,
            steps=self.ode_steps,
            method=self.ode_method,
            return_trajectory=return_trajectory,
        )

    def on_fit_start(self) -> None:
        # Fail before training when the trainer is set to run no step at all: such a fit would
        # end "successfully" and its report would look like a result.
        t = self.trainer
        for name, v in (("max_steps", t.max_steps), ("max_epochs", t.max_epochs),
                        ("limit_train_batches", t.limit_train_batches)):
            if v == 0:
                raise ValueError(f"trainer.{name} is 0: this fit would run no training step. Set it > 0 "
                                 "(or -1 / None for no limit).")

    # ------------------------------------------------------------------ steps
    def _fm_step(self, batch: Any, stage: str) -> torch.Tensor:
        x0, x1, _, _ = split_batch(batch)
        s = self.sampler.sample(x0, x1)
        net = self.net if stage == "train" else self.eval_net
        loss = cfm_loss(net, x0[s.i], x1[s.j], sigma=self.sigma)
        bs = x0.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=stage != "train")
        if stage == "train" and self.sampler.method in ("ot", "uot"):
            self.log("train/sinkhorn_iters", float(s.n_iters), batch_size=bs)
            # Spread of the source re-weighting: 1 for a balanced plan.
            self.log("train/weight_a_max", float(s.weight_a.max() * x0.shape[0]), batch_size=bs)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._fm_step(batch, "train")

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> torch.Tensor:
        loss = self._fm_step(batch, stage)
        x0, _, _, _ = split_batch(batch)
        xt = self.translate(x0)
        cost = 0.5 * (xt - x0).flatten(1).pow(2).sum(1).mean()
        self.log(f"{stage}/transport_cost", cost, batch_size=x0.shape[0], sync_dist=True)
        if batch_idx == 0 and stage == "val" and self.n_grid > 0:
            self._grid = [x0[: self.n_grid].detach().cpu(), xt[: self.n_grid].detach().cpu()]
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x0, _, y0, _ = split_batch(batch)
        out = {"x0": x0, "x1_hat": self.translate(x0)}
        if y0 is not None:
            out["y0"] = y0
        return out

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # trainer.log_dir is a collective (a broadcast) under DDP: every rank must ask for it.
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        if not self._grid or not self.trainer.is_global_zero:
            return
        path = Path(log_dir) / "samples" / f"epoch{self.current_epoch:03d}_step{self.global_step:06d}.png"
        save_sample_grid(self._grid[0], self._grid[1], path)

    # ------------------------------------------------------------------ EMA
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            d = self.ema_decay
            for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                pe.lerp_(p, 1 - d)
            for be, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
                be.copy_(b)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = self.net.parameters()
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-3)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(opt)}


def save_sample_grid(x0: torch.Tensor, x1_hat: torch.Tensor, path: str | Path) -> Path:
    """Save a two-row picture: sources on top, their translations below.

    Images ``(n, C, H, W)`` in ``[-1, 1]`` become a grid; 2D points ``(n, 2)`` a scatter plot
    with arrows. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x0.dim() == 4:
        from torchvision.utils import save_image

        grid = torch.cat([x0, x1_hat]).clamp(-1, 1).add(1).div(2)
        save_image(grid, str(path), nrow=x0.shape[0], padding=2, pad_value=1.0)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    a, b = x0.reshape(len(x0), -1)[:, :2], x1_hat.reshape(len(x1_hat), -1)[:, :2]
    ax.scatter(a[:, 0], a[:, 1], s=6, c="tab:blue", label="source")
    ax.scatter(b[:, 0], b[:, 1], s=6, c="tab:red", label="translated")
    for p, q in zip(a, b, strict=True):
        ax.plot([p[0], q[0]], [p[1], q[1]], c="grey", lw=0.3, alpha=0.5)
    ax.legend(loc="best", fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
