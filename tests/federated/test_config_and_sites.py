"""The federated config's one-line errors, the output folder's rules and the site-ordered episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmeta.config.federated import make_federated_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError, OutputError
from medmeta.federated.run import check_federated_folder
from medmeta.federated.sites import SiteOrderSampler
from medmeta.tasks.sampler import EpisodeSampler


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"strategies\.0='fedsgd'"):
        make_federated_config({"data": {"sites": ["a", "b"]}, "strategies": ["fedsgd"]})
    with pytest.raises(ConfigError, match="site a listed twice"):
        make_federated_config({"data": {"sites": ["a", "a"]}})
    with pytest.raises(ConfigError, match=r"data\.sites"):
        make_federated_config({"data": {"sites": ["a"]}})


def test_output_folder_refuses_foreign_files_and_an_earlier_run_without_overwrite(tmp_path: Path) -> None:
    check_federated_folder(tmp_path / "new")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="did not write"):
        check_federated_folder(tmp_path / "other")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "federated.md").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_federated_folder(tmp_path / "mine")
    check_federated_folder(tmp_path / "mine", overwrite=True)


def test_site_order_episodes_hold_the_same_images_with_labels_in_class_order() -> None:
    ds = make_synthetic(n_classes=4, n_per_class=12, image_size=8, channels=1)
    plain = EpisodeSampler(ds, None, 2, 3, seed=5)
    ordered = SiteOrderSampler(ds, 2, 3, seed=5, n_episodes=10)
    for i in range(5):
        s0, q0, _ = plain.indices(i)
        s1, q1, c1 = ordered.indices(i)
        assert c1.tolist() == [0, 1, 2, 3]
        assert sorted(s0.tolist()) == sorted(s1.tolist()) and sorted(q0.tolist()) == sorted(q1.tolist())
        ep = ordered.episode(i)
        assert np.array_equal(ds.labels[s1], ep.support_labels.numpy())  # label c is the dataset's class c
        assert np.array_equal(ds.labels[q1], ep.query_labels.numpy())
