"""Segmentation sources on the real data, slice selection, windowing and the square resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medmeta.data.segmentation.labels import TOTAL_CT, TOTAL_MR, label_names
from medmeta.data.segmentation.sources import SegSource, parse_spec, select_structures
from medmeta.data.segmentation.volumes import (
    from_square,
    scale_percentiles,
    select_slices,
    to_square,
    window_ct,
)
from medmeta.errors import DataError

SIZE = 32  # the side of the session-wide `seg_sources` fixture (tests/conftest.py)


def test_label_maps_follow_totalsegmentator_v2() -> None:
    ct, mr = label_names(TOTAL_CT), label_names(TOTAL_MR)
    assert len(ct) == 117 and len(mr) == 50
    assert (ct[1], ct[2], ct[3], ct[5], ct[52], ct[79], ct[117]) == (
        "spleen",
        "kidney_right",
        "kidney_left",
        "liver",
        "aorta",
        "spinal_cord",
        "costal_cartilages",
    )
    assert (mr[5], mr[19], mr[49], mr[50]) == ("liver", "vertebrae", "iliopsoas_right", "brain")


def test_every_source_gives_grey_images_and_binary_nonempty_masks(seg_sources: dict[str, SegSource]) -> None:
    for source in seg_sources.values():
        assert source.images.shape[1:] == (1, SIZE, SIZE)
        assert float(source.images.min()) >= 0.0 and float(source.images.max()) <= 1.0
        for s in source.structures.values():
            assert s.masks.shape == (len(s), SIZE, SIZE)
            assert set(np.unique(s.masks.numpy())) <= {0.0, 1.0}
            assert bool(s.masks.flatten(1).any(1).all())
            assert all(s.images[i].equal(source.images[p]) for i, p in enumerate(s.pool_index))


def test_sources_hold_the_expected_structures(seg_sources: dict[str, SegSource]) -> None:
    assert list(seg_sources["drive"].structures) == ["drive:vessel"]
    assert len({g for g in seg_sources["drive"].groups}) == 40  # 20 training + 20 testing images
    assert list(seg_sources["em"].structures) == ["em:membrane"]
    assert len(set(seg_sources["em"].groups)) == 30
    membrane = float(seg_sources["em"].structures["em:membrane"].masks.mean())
    assert 0.1 < membrane < 0.5  # membranes are the dark minority (label 0), not the cells
    for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
        assert f"ct:{organ}" in seg_sources["ct"].structures
        assert f"mr:{organ}" in seg_sources["mr"].structures
    assert seg_sources["ct"].images.shape[0] == 30  # axial slices of example_ct_sm


def test_training_structures_exclude_the_test_ones(seg_sources: dict[str, SegSource]) -> None:
    test = select_structures(seg_sources, ["ct:liver,spleen"])
    train = select_structures(seg_sources, ["ct", "em"], exclude=set(test))
    assert set(test) == {"ct:liver", "ct:spleen"}
    assert not set(train) & set(test)
    assert "ct:stomach" in train and "em:membrane" in train


def test_unknown_structure_and_source_are_named(seg_sources: dict[str, SegSource]) -> None:
    with pytest.raises(DataError, match=r"ct:lever not found.*available: .*ct:liver"):
        select_structures(seg_sources, ["ct:lever"])
    with pytest.raises(DataError, match="unknown source 'xray'"):
        parse_spec("xray:lung")


def test_a_missing_data_folder_is_named(tmp_path: Path) -> None:
    from medmeta.data.segmentation.sources import load_source

    with pytest.raises(DataError, match="DRIVE not found"):
        load_source("drive", tmp_path, SIZE)


def test_ct_window_maps_minus_160_and_240_hu_to_0_and_1() -> None:
    out = window_ct(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(DataError, match="width must be positive"):
        window_ct(np.zeros(3), width=0)


def test_percentile_scaling_clips_outliers() -> None:
    vol = np.arange(1000, dtype=np.float32)
    vol[0] = -1e6
    out = scale_percentiles(vol)
    assert out.min() == 0.0 and out.max() == 1.0 and 0.45 < out[500] < 0.55


def test_slices_are_selected_by_structure_area() -> None:
    mask = np.zeros((8, 8, 4), dtype=bool)
    mask[:2, :2, 1] = True  # 4 pixels
    mask[:, :, 3] = True  # 64 pixels
    assert select_slices(mask, 4) == [1, 3]
    assert select_slices(mask, 5) == [3]
    with pytest.raises(DataError, match="3-D mask volume"):
        select_slices(mask[:, :, 0], 1)


def test_square_resize_is_inverted_to_the_input_grid() -> None:
    image = np.zeros((33, 20), dtype=np.float32)
    image[5:25, 4:16] = 1.0
    square, geo = to_square(image, 16, is_mask=True)
    assert square.shape == (16, 16) and set(np.unique(square)) <= {0.0, 1.0}
    back = from_square(square, geo) >= 0.5
    assert back.shape == (33, 20)
    assert (back == image.astype(bool)).mean() > 0.9
