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
import shutil
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from .module import FlowMatchingModule

__all__ = ["main", "build_cli", "FlowCLI", "default_loggers", "check_checkpoint", "CorruptCheckpointError"]

# ``ckpt_path`` values that Lightning resolves itself (not file paths).
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but cannot be read; the message names the path."""


def check_checkpoint(path: str | Path | None) -> None:
    """Refuse a missing, empty or unreadable checkpoint before any training output is written.

    ``None`` and Lightning's keywords (``"last"``, ``"best"``, ``"hpc"``, ``"registry…"``) pass.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint.
    """
    if path is None or (isinstance(path, str) and path.split(":")[0] in _CKPT_KEYWORDS):
        return
    p = Path(path)
    fix = ("It was probably cut short by a killed save or a full disk: delete it and resume from an "
           "earlier checkpoint (e.g. another file in the same checkpoints folder), or start afresh "
           "without --ckpt_path.")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} (--ckpt_path) does not exist or is not a file.")
    if p.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {p} is empty (0 bytes). {fix}")
    if zipfile.is_zipfile(p):  # torch.save's format since torch 1.6
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CorruptCheckpointError(f"checkpoint {p} cannot be read ({err}). {fix}") from err
        if bad is not None:
            raise CorruptCheckpointError(f"checkpoint {p} is corrupt (member {bad} fails its CRC). {fix}")
        return
    try:  # the legacy (pre-zip) format, or not a checkpoint at all
        torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CorruptCheckpointError(
            f"checkpoint {p} is not a readable torch checkpoint ({type(err).__name__}). {fix}"
        ) from err


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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters here, before anything is built or
        # written: check the file first so that a bad one gets a message naming it.
        sub = self.config.get("subcommand")
        if sub:
            check_checkpoint(self.config[sub].get("ckpt_path"))
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "fit":
            return super()._run_subcommand(subcommand)
        paths = self._output_paths()
        existed = {p for p in paths if p.exists()}
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.global_step == 0:
                _remove_new(paths, existed)
            raise

    def _output_paths(self) -> list[Path]:
        """What a fit writes (logger version folders, config.yaml, the report) and their parents.

        Listed deepest first, so that folders emptied by the clean-up can be removed after their
        contents.
        """
        t = self.trainer
        root = Path(t.default_root_dir)
        paths = [root / "report", root]
        for logger in t.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir:
                paths = [Path(log_dir), Path(log_dir).parent, *paths]
        if t.log_dir:
            paths.insert(0, Path(t.log_dir) / "config.yaml")
        return paths


def _remove_new(paths: list[Path], existed: set[Path]) -> None:
    """Remove the ``paths`` created since ``existed`` was taken (folders only when empty,
    except logger version folders and the report, which belong to this run alone)."""
    for p in paths:
        if p in existed or not p.exists():
            continue
        if p.is_file():
            p.unlink()
        elif p.name == "report" or p.name.startswith("version_"):
            shutil.rmtree(p, ignore_errors=True)
        elif not any(p.iterdir()):
            p.rmdir()


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
