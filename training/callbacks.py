"""Callbacks: the end-of-training report (sample grid, metrics JSON, checkpoint) and timing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from .figures import save_translation_grid
from .module import FlowMatchingModule, save_sample_grid

__all__ = ["TranslationReport", "nearest_neighbour_labels"]


def nearest_neighbour_labels(
    x: torch.Tensor, ref: torch.Tensor, ref_labels: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """Label of the nearest reference sample (Euclidean) for each row of ``x: (n, ...)`` -> ``(n,)``."""
    xf, rf = x.reshape(len(x), -1), ref.reshape(len(ref), -1)
    out = [ref_labels[torch.cdist(xf[s : s + chunk], rf).argmin(1)] for s in range(0, len(xf), chunk)]
    return torch.cat(out)


class TranslationReport(L.Callback):
    """At the end of ``fit``: translate held-out source samples, write a report under ``out_dir``.

    Writes ``samples.png`` (source row on top, translated row below), ``metrics.json`` and
    ``model.ckpt``. Metrics: the final logged values (``val/loss``, ...), the mean transport
    cost ``|T(x) - x|^2 / 2`` of the translation, and, when the data module has labels, the
    class preservation of the translation: the fraction of translated samples whose nearest
    neighbour among target-domain training samples has the source sample's class (with the
    same 1-NN rule applied to untransformed sources and to held-out targets for reference).

    Args:
        out_dir: output folder (``None``: ``<trainer.default_root_dir>/report``).
        split: held-out split to translate (``"val"`` or ``"test"``).
        n_show: samples in the picture (one per class first, when labels allow).
        max_eval: cap on translated samples.
        knn_reference: cap on target training samples used by the 1-NN classifier.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        split: str = "test",
        n_show: int = 16,
        max_eval: int = 1000,
        knn_reference: int = 4000,
    ) -> None:
        super().__init__()
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}.")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.split, self.n_show, self.max_eval, self.knn_reference = split, n_show, max_eval, knn_reference
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_time = time.perf_counter() - self._t0
        if trainer.global_step == 0:
            # No report for a fit that trained nothing (e.g. a loader that yielded no batch).
            raise RuntimeError(
                "the fit ended without a single training step (the training loader gave no batch, or "
                "the step limits are 0); no report is written. Check the training split size against "
                "the batch size and the trainer's max_steps / max_epochs / limit_train_batches."
            )
        out_dir = self.out_dir or Path(trainer.default_root_dir) / "report"
        out_dir.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(out_dir / "model.ckpt")  # collective: every rank calls it
        if not trainer.is_global_zero:
            return
        if not isinstance(pl_module, FlowMatchingModule):
            raise TypeError(f"TranslationReport needs a FlowMatchingModule, got {type(pl_module)!r}.")
        dm = trainer.datamodule
        metrics: dict[str, Any] = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1
        }
        metrics.update(
            global_step=int(trainer.global_step),
            epochs=int(trainer.current_epoch),
            train_time_s=round(train_time, 2),
            sampler=repr(pl_module.sampler),
        )
        if hasattr(dm, "domain"):
            # fast_dev_run checks the path end to end on a handful of samples.
            max_eval = 64 if trainer.fast_dev_run else self.max_eval
            metrics.update(self._translation_metrics(dm, pl_module, out_dir, max_eval))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))

    @torch.no_grad()
    def _translation_metrics(
        self, dm: Any, module: FlowMatchingModule, out_dir: Path, max_eval: int
    ) -> dict[str, Any]:
        x0, y0, x1, y1 = (t[:max_eval] for t in dm.domain(self.split))
        ref_x, ref_y = (t[: self.knn_reference] for t in dm.domain("train")[2:])
        was_training = module.training
        module.eval()
        dev = module.device
        xt = torch.cat([module.translate(x0[s : s + 256].to(dev)).cpu() for s in range(0, len(x0), 256)])
        module.train(was_training)
        out: dict[str, Any] = {
            "n_eval": len(x0),
            "eval_transport_cost": float(0.5 * (xt - x0).flatten(1).pow(2).sum(1).mean()),
        }
        if y0 is not None and bool((ref_y >= 0).any()):
            keep = ref_y >= 0
            ref_x, ref_y = ref_x[keep], ref_y[keep]
            out["class_preservation"] = float(
                (nearest_neighbour_labels(xt, ref_x, ref_y) == y0).float().mean()
            )
            out["class_preservation_untranslated"] = float(
                (nearest_neighbour_labels(x0, ref_x, ref_y) == y0).float().mean()
            )
            valid = y1 >= 0
            out["knn_accuracy_on_targets"] = float(
                (nearest_neighbour_labels(x1[valid], ref_x, ref_y) == y1[valid]).float().mean()
            )
        show = self._pick(y0, len(x0), self.n_show)
        decode = getattr(dm, "decode", None)  # latent data modules: pictures in image space
        if callable(decode) and hasattr(dm, "image_domain"):
            s0, st = dm.image_domain(self.split)[0][:max_eval][show], decode(xt[show])
        else:
            s0, st = x0[show], xt[show]
        if s0.dim() == 4:
            col = [f"class {int(c)}" for c in y0[show]] if y0 is not None else None
            cells = None
            if "class_preservation" in out:
                nn_lab = nearest_neighbour_labels(xt[show], ref_x, ref_y)
                cells = {"translated": [f"1-NN: {int(c)}" for c in nn_lab]}
            save_translation_grid(
                {"source": s0, "translated": st}, out_dir / "samples.png", column_labels=col,
                cell_labels=cells,
                cell_ok={"translated": [bool(a == b) for a, b in zip(nn_lab, y0[show], strict=True)]}
                if cells else None,
                scale=4.0, title="top: held-out source; bottom: its translation (under it: the class of its "
                                 "nearest target training image; green = source class kept)",
            )
        else:
            save_sample_grid(s0, st, out_dir / "samples.png")
        return out

    @staticmethod
    def _pick(labels: torch.Tensor | None, total: int, n: int) -> torch.Tensor:
        """Indices of ``n`` samples taking the classes in turn (the first of each, then the second, ...)."""
        if labels is None:
            return torch.arange(min(n, total))
        per = [torch.nonzero(labels[:total] == c).flatten().tolist() for c in torch.unique(labels[:total])]
        out: list[int] = []
        for r in range(max(len(p) for p in per)):
            out += [p[r] for p in per if r < len(p)]
            if len(out) >= n:
                break
        return torch.tensor(out[:n])
