"""Each benchmark domain split once into training, validation and test images.

The test images of a domain are its published ``test`` split when it has one, else a stratified,
seeded share of it (`DataSection.test_fraction`). Few-shot episodes on a held-out domain and its
fully-supervised reference use the same test images; no domain's test images are ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmeta.bench.protocol import Protocol
from medmeta.data.datasets import ImageDataset
from medmeta.data.near_duplicates import dedupe
from medmeta.data.registry import load_dataset
from medmeta.tasks.sampler import queries_per_class


@dataclass(frozen=True)
class DomainSplits:
    """One domain's images, split.

    Attributes:
        name: the protocol's domain entry.
        dataset: the dataset it loads (for example ``breastmnist_resaved``).
        train: training images (meta-training when another domain is held out; the reference's
            training set when this one is).
        val: validation images (checkpoint selection).
        test: test images (few-shot episodes and the reference's test set).
        test_source: where `test` comes from, for the report.
    """

    name: str
    dataset: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    test_source: str

    @property
    def n_classes(self) -> int:
        return self.test.n_classes


def _without_split(ds: ImageDataset, split: str) -> ImageDataset:
    assert ds.splits is not None
    return ds.subset(np.nonzero(ds.splits != split)[0])


def split_domain(name: str, ds: ImageDataset, protocol: Protocol) -> DomainSplits:
    """Split a loaded dataset as the protocol says (deterministic in ``data.split_seed``)."""
    cfg = protocol.data
    splits = ds.available_splits()
    if "test" in splits:
        test, rest = ds.select_split("test"), _without_split(ds, "test")
        source = "its test split"
    else:
        rest, test = ds.split_holdout(cfg.test_fraction, seed=cfg.split_seed)
        source = f"a stratified {100 * cfg.test_fraction:.0f}% of its images (seed {cfg.split_seed})"
    if "val" in splits:
        train, val = _without_split(rest, "val"), rest.select_split("val")
    else:
        train, val = rest.split_holdout(cfg.val_fraction, seed=cfg.split_seed + 1)
    return DomainSplits(name, ds.domain, train, val, test, source)


def load_domains(
    protocol: Protocol, datasets: dict[str, str], root: str | Path | None
) -> dict[str, DomainSplits]:
    """Load and split every domain of the protocol at its image size and channels.

    Args:
        protocol: the benchmark.
        datasets: domain entry -> dataset name (from `medmeta.bench.protocol.check_domains`).
        root: data root.
    """
    out = {}
    for name in protocol.data.domains:
        ds = load_dataset(
            datasets[name], root=root, image_size=protocol.data.image_size, channels=protocol.data.channels
        )
        if protocol.data.dedupe:
            ds = dedupe(ds)
        out[name] = split_domain(name, ds, protocol)
    return out


def query_size(splits: DomainSplits, n_shot: int, n_query: int) -> int:
    """Queries per class for `n_shot`-shot test episodes of a domain (`queries_per_class`)."""
    fix = f"drop {n_shot} from eval.shots or remove the domain from held_out"
    return queries_per_class(splits.test, n_shot, n_query, f"domain '{splits.name}'", fix)
