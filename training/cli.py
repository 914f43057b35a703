"""The ``torchuot-train`` command (also ``python -m training``): LightningCLI over
:class:`~training.module.FlowMatchingModule` and any LightningDataModule.

Subcommands ``fit``, ``validate``, ``test``, ``predict``; configs under ``training/configs/``::

    torchuot-train fit --config training/configs/mnist_translation.yaml
    torchuot-train fit --config training/configs/toy2d.yaml --trainer.max_epochs 5
    torchuot-train fit --config ... --ckpt_path outputs/demo/model.ckpt     # resume
    torchuot-train fit --config training/configs/toy2d.yaml \\
        --trainer.devices 2 --trainer.accelerator cpu --trainer.strategy ddp

The data root comes from the data module's ``root`` key or ``$TORCHUOT_DATA_ROOT``. Logging
goes to a CSV logger, plus TensorBoard when it is installed, under ``trainer.default_root_dir``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from .module import FlowMatchingModule

__all__ = ["main", "build_cli", "FlowCLI", "default_loggers"]


def default_loggers(root_dir: str | Path) -> list[Logger]:
    """A CSV logger under ``root_dir``, and a TensorBoard logger too when it is installed."""
    loggers: list[Logger] = [CSVLogger(root_dir, name="csv")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(root_dir, name="tensorboard"))
    return loggers


class FlowCLI(LightningCLI):
    """LightningCLI whose default logging is CSV (+ TensorBoard) under ``default_root_dir``.

    ``--trainer.logger`` given explicitly (a logger, a list, or ``false``) is used as is.
    """

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        if cfg.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(cfg.get("default_root_dir") or ".")
        return super().instantiate_trainer(**kwargs)


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and with ``run=True`` run) the CLI on ``args`` (``None``: ``sys.argv``).

    Returns the ``LightningCLI`` object (its ``trainer``, ``model``, ``datamodule``), for tests
    and notebooks. The console script uses :func:`main`, which returns nothing.
    """
    return FlowCLI(
        FlowMatchingModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``torchuot-train`` and ``python -m training``: run the CLI, return ``None``.

    The console-script wrapper passes the return value to ``sys.exit``, so it must be ``None``
    (exit status 0); a failure raises and exits non-zero with the error message.
    """
    build_cli(args)


if __name__ == "__main__":  # pragma: no cover
    main()
