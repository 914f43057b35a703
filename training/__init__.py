"""Lightning training of UOT flow matching: modules, data modules, callbacks and the CLI."""

from .callbacks import TranslationReport
from .data import (
    ImageDataModule,
    MedMNISTDataModule,
    MNISTDataModule,
    Toy2DDataModule,
    UnpairedDataModule,
)
from .module import FlowMatchingModule

__all__ = [
    "FlowMatchingModule",
    "ImageDataModule",
    "MNISTDataModule",
    "MedMNISTDataModule",
    "UnpairedDataModule",
    "Toy2DDataModule",
    "TranslationReport",
]
