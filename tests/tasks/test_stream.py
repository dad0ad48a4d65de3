"""The stream of stages: global class ids prefixed by dataset, seeded K-shot draws from the training images,
test images from the test split, and one-line errors for streams that cannot be learnt."""

from __future__ import annotations

import numpy as np
import pytest

from medmeta.data.synthetic import make_synthetic
from medmeta.errors import DataError
from medmeta.tasks.stream import Stream, check_shots, draw_shots, load_stream

NAMES = make_synthetic(image_size=8).class_names
STAGES = ["synthetic:" + ",".join(NAMES[:3]), "synthetic:" + ",".join(NAMES[3:5])]


def _stream(test_per_class: int | None = 50) -> Stream:
    return load_stream(STAGES, image_size=16, test_per_class=test_per_class)


def test_classes_get_global_ids_in_stage_order_prefixed_by_their_dataset() -> None:
    stream = _stream()
    assert stream.class_names == tuple(f"synthetic/{n}" for n in NAMES[:5])
    assert [s.first_class for s in stream.stages] == [0, 3]
    assert stream.seen(0) == 3 and stream.seen(1) == 5
    assert stream.stage_of_class().tolist() == [0, 0, 0, 1, 1]
    images, labels = stream.test_set(1)
    assert images.shape[1:] == (3, 16, 16) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]


def test_shots_come_from_the_training_split_and_tests_from_the_test_split() -> None:
    stream = _stream(test_per_class=5)
    stage = stream.stages[1]
    assert set(stage.train.splits.tolist()) == {"train"}  # type: ignore[union-attr]
    assert set(stage.test.splits.tolist()) == {"test"}  # type: ignore[union-attr]
    assert stage.test.class_counts() == {NAMES[3]: 5, NAMES[4]: 5}
    assert stage.test_source == "its test split"


def test_shot_draws_are_seeded_per_stage_and_labelled_with_global_ids() -> None:
    stream = _stream()
    images, labels = draw_shots(stream, 1, n_shot=4, seed=7)
    assert images.shape == (8, 3, 16, 16)
    assert labels.tolist() == [3] * 4 + [4] * 4
    again, _ = draw_shots(stream, 1, n_shot=4, seed=7)
    other, _ = draw_shots(stream, 1, n_shot=4, seed=8)
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(images, other)
    train = stream.stages[1].train
    pool = {train.images[i].tobytes() for i in range(len(train))}
    assert all(img.tobytes() in pool for img in images)


def test_the_test_images_do_not_depend_on_the_run_seed() -> None:
    a, b = _stream(test_per_class=4), _stream(test_per_class=4)
    np.testing.assert_array_equal(a.test_set(1)[0], b.test_set(1)[0])


def test_a_class_in_two_stages_is_refused() -> None:
    with pytest.raises(DataError, match=r"stage 2 .*synthetic/.* is already stage 1's: .*disjoint classes"):
        load_stream([STAGES[0], f"synthetic:{NAMES[2]},{NAMES[7]}"], image_size=16)


def test_a_stage_naming_a_split_is_refused() -> None:
    with pytest.raises(DataError, match=r"stage 2 \(synthetic@test\): names split 'test'.*drop the @test"):
        load_stream([STAGES[0], "synthetic@test"], image_size=16)


def test_an_unknown_dataset_names_its_stage() -> None:
    with pytest.raises(DataError, match=r"stage 2 \(no_such_set\): unknown dataset 'no_such_set'"):
        load_stream([STAGES[0], "no_such_set"], image_size=16)


def test_more_shots_than_training_images_are_refused_naming_the_class() -> None:
    stream = _stream()
    check_shots(stream, 36)  # synthetic has 36 training images per class
    with pytest.raises(
        DataError, match=rf"stage 1 .*class '{NAMES[0]}' has 36 training images, fewer than 37"
    ):
        check_shots(stream, 37)
    with pytest.raises(DataError, match=r"stage 2 .*fewer than 40 shots"):
        draw_shots(stream, 1, n_shot=40, seed=0)
