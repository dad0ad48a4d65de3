"""One site's images: its domain loaded on the site, split once into training and held-out test images.

The test images are the domain's published ``test`` split when it has one, else a stratified, seeded share
(`SitesConfig.test_fraction`); everything else trains. Episodes keep the site's class order (label ``c`` is
the site's class ``c``): the task at a hospital is its own classes, and a learner with a fixed head
(FedAvg, Per-FedAvg) is tested on the labels it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmeta.config.federated import SitesConfig
from medmeta.data.datasets import ImageDataset
from medmeta.data.registry import load_dataset
from medmeta.tasks.sampler import EpisodeSampler, queries_per_class


@dataclass(frozen=True)
class Site:
    """A site's images (never sent anywhere).

    Attributes:
        name: the site's entry in ``data.sites``.
        train: training images ``(N, C, H, W)`` uint8 with labels.
        test: held-out test images.
        test_source: where `test` comes from, for the report.
    """

    name: str
    train: ImageDataset
    test: ImageDataset
    test_source: str

    @property
    def n_classes(self) -> int:
        return self.train.n_classes


def load_site(name: str, cfg: SitesConfig, root: str | Path | None = None) -> Site:
    """Load and split site `name` (deterministic in ``cfg.split_seed``); `root` overrides ``cfg.data_dir``.

    Raises:
        DataError: an unknown or unreadable domain.
    """
    ds = load_dataset(
        name,
        root=root if root is not None else cfg.data_dir,
        image_size=cfg.image_size,
        channels=cfg.channels,
    )
    if "test" in ds.available_splits():
        assert ds.splits is not None
        test = ds.select_split("test")
        train = ds.subset(np.nonzero(ds.splits != "test")[0], relabel=False)
        return Site(name, train, test, "its test split")
    train, test = ds.split_holdout(cfg.test_fraction, seed=cfg.split_seed)
    share = f"a stratified {100 * cfg.test_fraction:.0f}% of its images (seed {cfg.split_seed})"
    return Site(name, train, test, share)


class SiteOrderSampler(EpisodeSampler):
    """`EpisodeSampler` over every class of the dataset, with labels in the dataset's class order.

    Episode ``i`` holds the same images as the parent's; only the order of the classes (and so the labels)
    differs: label ``c`` is class ``c`` of the dataset.
    """

    def __init__(
        self, dataset: ImageDataset, n_shot: int, n_query: int, *, seed: int, n_episodes: int
    ) -> None:
        super().__init__(dataset, None, n_shot, n_query, seed=seed, n_episodes=n_episodes)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        support, query, classes = super().indices(index)
        order = np.argsort(classes)  # episode label -> position in class order
        support = support.reshape(self.n_way, self.n_shot)[order].reshape(-1)  # (n_way * n_shot,)
        query = query.reshape(self.n_way, self.n_query)[order].reshape(-1)  # (n_way * n_query,)
        return support, query, classes[order]


def query_size(site: Site, n_shot: int, n_query: int) -> int:
    """Queries per class for `n_shot`-shot test episodes of a site (`queries_per_class`)."""
    return queries_per_class(
        site.test, n_shot, n_query, f"site '{site.name}'", f"drop {n_shot} from eval.shots"
    )


def site_seed(seed: int, index: int) -> int:
    """Seed of site number `index`'s training episodes (different sites draw different streams)."""
    return seed * 1009 + index + 1
