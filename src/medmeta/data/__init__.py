"""Medical image datasets: MedMNIST, image folders (PNG/JPG/TIFF/DICOM/NIfTI) and a synthetic set."""

from __future__ import annotations

from medmeta.data.datasets import ImageDataset
from medmeta.data.registry import list_datasets, load_dataset
from medmeta.data.root import data_root

__all__ = ["ImageDataset", "data_root", "list_datasets", "load_dataset"]
