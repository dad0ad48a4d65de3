"""Datasets by name under the data root, domain specs, and the real sets in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.data.registry import DomainSpec, list_datasets, load_dataset, resolve
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import DataError


def test_domain_specs_parse_name_split_and_classes() -> None:
    spec = DomainSpec.parse("brain_tumor_mri@test:glioma_tumor,no_tumor")
    assert spec == DomainSpec("brain_tumor_mri", "test", ("glioma_tumor", "no_tumor"))
    assert str(spec) == "brain_tumor_mri@test:glioma_tumor,no_tumor"
    assert DomainSpec.parse("blood_pbc") == DomainSpec("blood_pbc")


def test_an_unknown_dataset_name_lists_what_is_available(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"unknown dataset 'nope' under .*available: synthetic\. Set MEDMETA_DATA"
    ):
        resolve("nope", tmp_path)


def test_an_unknown_class_lists_the_classes() -> None:
    ds = make_synthetic(n_classes=3, n_per_class=4, image_size=8)
    with pytest.raises(DataError, match="has no class 'tumour'; its classes are"):
        ds.select_classes(["tumour"])


def test_synthetic_set_is_deterministic_and_labelled_synthetic() -> None:
    a = make_synthetic(n_classes=4, n_per_class=5, image_size=16, seed=3)
    b = make_synthetic(n_classes=4, n_per_class=5, image_size=16, seed=3)
    assert np.array_equal(a.images, b.images)
    assert a.synthetic and a.display_name == "synthetic"


def test_split_holdout_is_stratified_and_disjoint() -> None:
    ds = make_synthetic(n_classes=4, n_per_class=20, image_size=8)
    rest, held = ds.split_holdout(0.25, seed=0)
    assert len(rest) + len(held) == len(ds)
    assert held.class_counts() == dict.fromkeys(ds.class_names, 5)


def test_split_holdout_keeps_each_patient_on_one_side() -> None:
    ds = make_synthetic(n_classes=2, n_per_class=12, image_size=8)
    patients = np.repeat(np.arange(8), 3)
    ds = type(ds)(ds.images, ds.labels, ds.class_names, ds.domain, patient_ids=patients)
    rest, held = ds.split_holdout(0.3, seed=1)
    assert rest.patient_ids is not None and held.patient_ids is not None
    assert not set(rest.patient_ids.tolist()) & set(held.patient_ids.tolist())


@pytest.mark.data
def test_the_real_sets_are_listed_and_load(data_dir: Path) -> None:
    names = {e.name for e in list_datasets(data_dir)}
    assert {"blood_pbc", "brain_tumor_mri", "synthetic"} <= names
    assert not {"classification", "segmentation", "detection"} & names
    blood = load_dataset("blood_pbc", root=data_dir, image_size=32)
    assert blood.images.shape == (4000, 3, 32, 32)
    assert set(blood.class_counts().values()) == {500}
    brain = load_dataset("brain_tumor_mri", root=data_dir, image_size=32, channels=1)
    assert brain.available_splits() == ("test", "train")
    test = DomainSpec.parse("brain_tumor_mri@test").load(root=data_dir, image_size=32, channels=1)
    assert test.class_counts() == {
        "glioma_tumor": 100,
        "meningioma_tumor": 115,
        "no_tumor": 105,
        "pituitary_tumor": 74,
    }


@pytest.mark.data
def test_medmnist_files_resolve_by_their_official_name_prefix(data_dir: Path) -> None:
    entry = resolve("breastmnist", data_dir)
    assert entry.kind == "medmnist" and entry.name == "breastmnist_resaved"
    ds = load_dataset("breastmnist", root=data_dir, image_size=28)
    assert ds.images.shape[1:] == (3, 28, 28)
    assert ds.available_splits() == ("test", "train", "val")


def test_class_names_holding_a_comma_are_written_in_double_quotes(tmp_path: Path) -> None:
    spec = DomainSpec.parse('my_folder@test:"nevus, atypical", melanoma')
    assert spec.classes == ("nevus, atypical", "melanoma") and spec.split == "test"
    assert str(spec) == 'my_folder@test:"nevus, atypical",melanoma'
    assert DomainSpec.parse(str(spec)) == spec
    assert DomainSpec.parse("blood_pbc:basophil, eosinophil").classes == ("basophil", "eosinophil")
    with pytest.raises(DataError, match="put a name holding a comma in double quotes"):
        DomainSpec.parse('my_folder:"nevus, atypical,melanoma')
    for c in ("nevus, atypical", "melanoma"):  # and such a folder loads with the quoted spec
        for i in range(2):
            d = tmp_path / "skin" / c
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * i + (100 if c == "melanoma" else 0), np.uint8)).save(
                d / f"{i}.png"
            )
    ds = DomainSpec.parse(f'{tmp_path / "skin"}:"nevus, atypical"').load(image_size=8)
    assert ds.class_names == ("nevus, atypical",) and len(ds.images) == 2
