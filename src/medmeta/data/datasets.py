"""`ImageDataset`: labelled images materialised as one uint8 array, so episodes are drawn by index."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medmeta.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image collection from one domain.

    Attributes:
        images: uint8 array ``(N, C, H, W)`` (2D) or ``(N, C, D, H, W)`` (3D).
        labels: int64 array ``(N,)``, class ids in ``0..len(class_names)-1``.
        class_names: name of each class id.
        domain: name of the domain (for example ``"blood_pbc"``); shown in reports.
        splits: optional ``(N,)`` array of split names (``"train"``, ``"val"``, ``"test"``).
        patient_ids: optional ``(N,)`` array of patient ids, so that splits can keep a patient on one side.
        files: optional ``(N,)`` source path of each image (relative to the dataset root).
        skipped: files that could not be read and were skipped (``--skip-bad``).
        synthetic: True for the built-in synthetic set; shown wherever the set is named.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    domain: str
    splits: np.ndarray | None = None
    patient_ids: np.ndarray | None = None
    files: np.ndarray | None = None
    skipped: tuple[str, ...] = ()
    synthetic: bool = False
    _by_class: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise DataError(f"{self.domain}: images must be uint8, got {self.images.dtype}")
        if self.images.ndim not in (4, 5):
            raise DataError(
                f"{self.domain}: images must be (N, C, H, W) or (N, C, D, H, W), got {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.domain}: {self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )
        if len(self) == 0:
            raise DataError(f"{self.domain}: the dataset holds no images")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise DataError(
                f"{self.domain}: labels must lie in 0..{len(self.class_names) - 1}, "
                f"got {self.labels.min()}..{self.labels.max()}"
            )
        for name, arr in (
            ("splits", self.splits),
            ("patient_ids", self.patient_ids),
            ("files", self.files),
        ):
            if arr is not None and arr.shape != self.labels.shape:
                raise DataError(f"{self.domain}: {name} has shape {arr.shape}, expected {self.labels.shape}")
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.class_names) + 1))
        for c in range(len(self.class_names)):
            self._by_class[c] = order[bounds[c] : bounds[c + 1]]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def spatial_dims(self) -> int:
        """2 for ``(N, C, H, W)`` images, 3 for volumes."""
        return self.images.ndim - 2

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(C, H, W)`` or ``(C, D, H, W)``."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def display_name(self) -> str:
        if self.synthetic and "synthetic" not in self.domain:
            return f"{self.domain} (synthetic)"
        return self.domain

    def indices_of_class(self, class_id: int) -> np.ndarray:
        """Indices (into `images`) of every image of `class_id`, ascending."""
        return self._by_class[class_id]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def available_splits(self) -> tuple[str, ...]:
        if self.splits is None:
            return ()
        return tuple(sorted(set(self.splits.tolist())))

    def subset(self, indices: np.ndarray, *, relabel: bool = True) -> ImageDataset:
        """A new dataset holding `indices`; with `relabel`, classes absent from it are dropped."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = self.labels[indices]
        names = self.class_names
        if relabel:
            kept = np.unique(labels)
            remap = np.full(len(self.class_names), -1, dtype=np.int64)
            remap[kept] = np.arange(len(kept))
            labels = remap[labels]
            names = tuple(self.class_names[i] for i in kept)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[indices]

        return ImageDataset(
            images=self.images[indices],
            labels=labels,
            class_names=names,
            domain=self.domain,
            splits=take(self.splits),
            patient_ids=take(self.patient_ids),
            files=take(self.files),
            skipped=self.skipped,
            synthetic=self.synthetic,
        )

    def select_split(self, split: str) -> ImageDataset:
        """Only the images of `split` (for example ``"test"``)."""
        if self.splits is None:
            raise DataError(
                f"{self.domain} has no splits, so split '{split}' cannot be selected: drop the @{split}"
            )
        mask = self.splits == split
        if not mask.any():
            raise DataError(
                f"{self.domain} has no split '{split}'; it has {', '.join(self.available_splits())}"
            )
        return self.subset(np.nonzero(mask)[0])

    def select_classes(self, names: list[str] | tuple[str, ...]) -> ImageDataset:
        """Only the classes in `names`, relabelled in the given order."""
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise DataError(
                f"{self.domain} has no class {', '.join(repr(u) for u in unknown)}; "
                f"its classes are {', '.join(self.class_names)}"
            )
        if len(set(names)) != len(names):
            raise DataError(f"{self.domain}: a class is named twice in {list(names)}")
        ids = [self.class_names.index(n) for n in names]
        idx = np.concatenate([self.indices_of_class(i) for i in ids])
        idx.sort()
        sub = self.subset(idx, relabel=False)
        remap = np.full(len(self.class_names), -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        return ImageDataset(
            images=sub.images,
            labels=remap[sub.labels],
            class_names=tuple(names),
            domain=self.domain,
            splits=sub.splits,
            patient_ids=sub.patient_ids,
            files=sub.files,
            skipped=self.skipped,
            synthetic=self.synthetic,
        )

    def split_holdout(self, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
        """Split images (by patient when patient ids exist) into ``(rest, holdout)``, stratified by class.

        Used for validation episodes on the training classes. Deterministic in `seed`.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"holdout fraction must lie in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        hold: list[np.ndarray] = []
        for c in range(self.n_classes):
            idx = self.indices_of_class(c)
            if self.patient_ids is not None:
                groups = np.unique(self.patient_ids[idx])
                rng.shuffle(groups)
                n_hold = max(1, round(len(groups) * fraction)) if len(groups) > 1 else 0
                chosen = np.isin(self.patient_ids[idx], groups[:n_hold])
                hold.append(idx[chosen])
            else:
                perm = rng.permutation(len(idx))
                n_hold = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
                hold.append(idx[perm[:n_hold]])
        hold_idx = np.sort(np.concatenate(hold))
        rest_mask = np.ones(len(self), dtype=bool)
        rest_mask[hold_idx] = False
        return (
            self.subset(np.nonzero(rest_mask)[0], relabel=False),
            self.subset(hold_idx, relabel=False),
        )


def check_training_domains(datasets: Sequence[ImageDataset]) -> None:
    """Training domains must exist and share one image shape (they are batched together).

    Raises:
        DataError: no dataset, or datasets whose image shapes differ.
    """
    if not datasets:
        raise DataError("no training domain given: name at least one dataset")
    shapes = {d.image_shape for d in datasets}
    if len(shapes) > 1:
        raise DataError(
            f"domains differ in image shape {sorted(shapes)}: load them with one image_size and channels"
        )
