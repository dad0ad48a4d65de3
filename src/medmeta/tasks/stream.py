"""A stream of stages for class-incremental few-shot learning, and its seeded K-shot draws.

Each stage brings new classes (for example blood-cell types, then brain-tumour types, then breast
lesions). A class is named ``DATASET/CLASS`` and has one global id in the order the stages bring them, so
one classifier covers every class seen so far. Each stage is split once into training images (where the
K-shot supports are drawn, per run seed) and test images (the published ``test`` split, else a
stratified, seeded hold-out; at most ``test_per_class`` per class, the same for every run seed).

Example:
    >>> stream = load_stream(["blood_pbc", "brain_tumor_mri"], image_size=32)  # doctest: +SKIP
    >>> images, labels = draw_shots(stream, 1, n_shot=5, seed=0)  # stage 2: (20, 3, 32, 32), ids 8..11
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset, check_training_domains
from medmeta.data.registry import DomainSpec
from medmeta.errors import DataError


@dataclass(frozen=True)
class Stage:
    """One stage of the stream.

    Attributes:
        spec: the stage as given (``NAME[:CLASS,...]`` or a path).
        train: the training images the K-shot supports are drawn from (labels ``0..n_classes-1``).
        test: the test images (at most ``test_per_class`` per class), labelled like `train`.
        first_class: global id of the stage's first class.
        test_source: where `test` comes from, for the report.
    """

    spec: str
    train: ImageDataset
    test: ImageDataset
    first_class: int
    test_source: str

    @property
    def domain(self) -> str:
        return self.train.domain

    @property
    def n_classes(self) -> int:
        return self.train.n_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """``DATASET/CLASS`` for each class, in label order."""
        return tuple(f"{self.domain}/{c}" for c in self.train.class_names)


@dataclass(frozen=True)
class Stream:
    """The stages in order; class ``c`` of stage ``t`` has global id ``stages[t].first_class + c``."""

    stages: tuple[Stage, ...]

    def __len__(self) -> int:
        return len(self.stages)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for s in self.stages for name in s.class_names)

    @property
    def n_classes(self) -> int:
        return sum(s.n_classes for s in self.stages)

    def seen(self, t: int) -> int:
        """Classes seen once stage `t` (0-based) is learnt."""
        return sum(s.n_classes for s in self.stages[: t + 1])

    def stage_of_class(self) -> np.ndarray:
        """``(n_classes,)`` int64: the stage (0-based) that brings each global class."""
        return np.repeat(np.arange(len(self.stages)), [s.n_classes for s in self.stages])

    def test_set(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Test images of every class seen once stage `t` is learnt: uint8 ``(N, C, H, W)``, global ids ``(N,)``."""
        parts = self.stages[: t + 1]
        images = np.concatenate([s.test.images for s in parts])
        labels = np.concatenate([s.test.labels.astype(np.int64) + s.first_class for s in parts])
        return images, labels


def _split(ds: ImageDataset, test_fraction: float, split_seed: int) -> tuple[ImageDataset, ImageDataset, str]:
    """``(train, test, source)``: the published test split when there is one (a ``val`` split is dropped),
    else a stratified, seeded hold-out."""
    if "test" in ds.available_splits():
        assert ds.splits is not None
        train_mask = ds.splits == "train" if "train" in ds.available_splits() else ds.splits != "test"
        train = ds.subset(np.nonzero(train_mask)[0], relabel=False)  # label ids stay those of `ds`
        return train, ds.subset(np.nonzero(ds.splits == "test")[0], relabel=False), "its test split"
    train, test = ds.split_holdout(test_fraction, seed=split_seed)
    return train, test, f"a stratified {100 * test_fraction:.0f}% of its images (seed {split_seed})"


def _cap_per_class(ds: ImageDataset, per_class: int | None, seed: int, where: str) -> ImageDataset:
    """At most `per_class` images of each class (a seeded choice); every class must keep one."""
    keep = []
    rng = np.random.default_rng(seed)
    for c, name in enumerate(ds.class_names):
        idx = ds.indices_of_class(c)
        if len(idx) == 0:
            raise DataError(f"{where}: class '{name}' has no test image: give it test images or drop it")
        if per_class is not None and len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        keep.append(idx)
    return ds.subset(np.sort(np.concatenate(keep)), relabel=False)


def load_stream(
    specs: Sequence[str],
    *,
    root: str | Path | None = None,
    image_size: int = 64,
    channels: int = 3,
    test_per_class: int | None = 50,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    skip_bad: bool = False,
    dedupe: bool = False,
) -> Stream:
    """Load and split every stage at one image size and channel count.

    Raises:
        DataError: an unknown dataset or class, a spec naming a split, a class named in two stages, a
            class without test images, or stages whose images differ in shape (3-D with 2-D).
    """
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    first = 0
    for t, text in enumerate(specs):
        where = f"stage {t + 1} ({text})"
        try:
            spec = DomainSpec.parse(text)
            if spec.split:
                raise DataError(
                    f"names split '{spec.split}', but a stage draws its shots from the training images and is "
                    f"tested on its test images: drop the @{spec.split}"
                )
            ds = spec.load(
                root=root, image_size=image_size, channels=channels, skip_bad=skip_bad, dedupe=dedupe
            )
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if ds.spatial_dims != 2:
            raise DataError(f"{where} holds 3-D volumes: continual learning here takes 2-D images")
        train, test, source = _split(ds, test_fraction, split_seed)
        test = _cap_per_class(test, test_per_class, split_seed + 1000 * (t + 1), where)
        stage = Stage(spec=text, train=train, test=test, first_class=first, test_source=source)
        for name in stage.class_names:
            if name in seen:
                raise DataError(
                    f"{where}: class {name} is already stage {seen[name] + 1}'s: a class is learnt once, so "
                    "list disjoint classes (NAME:CLASS,...)"
                )
            seen[name] = t
        stages.append(stage)
        first += stage.n_classes
    check_training_domains([s.train for s in stages])
    return Stream(tuple(stages))


def check_shots(stream: Stream, n_shot: int) -> None:
    """Every class must have `n_shot` training images.

    Raises:
        DataError: the first class with fewer, naming its stage, count and the fix.
    """
    for t, stage in enumerate(stream.stages):
        _check_stage_shots(stage, t, n_shot)


def _check_stage_shots(stage: Stage, t: int, n_shot: int) -> None:
    for name, n in stage.train.class_counts().items():
        if n < n_shot:
            raise DataError(
                f"stage {t + 1} ({stage.spec}): class '{name}' has {n} training images, fewer than "
                f"{n_shot} shots: lower --shots to at most {n} or drop the class"
            )


def draw_shots(stream: Stream, t: int, *, n_shot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage `t`'s K-shot training set, drawn without replacement per class; depends only on ``(seed, t)``.

    Returns:
        uint8 images ``(n_classes * n_shot, C, H, W)`` and global class ids ``(n_classes * n_shot,)`` int64,
        class by class.
    """
    stage = stream.stages[t]
    _check_stage_shots(stage, t, n_shot)
    rng = np.random.default_rng((seed, t))
    picks = [
        rng.choice(stage.train.indices_of_class(c), n_shot, replace=False) for c in range(stage.n_classes)
    ]
    idx = np.concatenate(picks)  # (n_classes * n_shot,)
    labels = stage.train.labels[idx].astype(np.int64) + stage.first_class
    return stage.train.images[idx], labels
