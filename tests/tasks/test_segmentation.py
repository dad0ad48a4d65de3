"""Segmentation episodes: validation errors and the seeded sampler."""

from __future__ import annotations

import pytest
import torch

from medmeta.data.segmentation.sources import SegSource
from medmeta.errors import DataError
from medmeta.tasks.segmentation import SegEpisode, SegEpisodeSampler


def _pair(n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(n, size, size)
    masks[:, 2:5, 2:5] = 1
    return torch.rand(n, 1, size, size), masks


def test_a_valid_episode_reports_its_shots() -> None:
    (si, sm), (qi, qm) = _pair(3), _pair(2)
    assert SegEpisode(si, sm, qi, qm, "x").n_shot == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: {**e, "support_masks": e["support_masks"][:, :4]}, r"support masks must be \(N, H, W\)"),
        (lambda e: {**e, "support_images": e["support_images"][0]}, r"support images must be \(N, C, H, W\)"),
        (
            lambda e: {**e, "query_images": torch.rand(2, 1, 9, 9), "query_masks": None},
            "resize them to one size",
        ),
        (lambda e: {**e, "support_masks": e["support_masks"] * 0.5}, "must be binary"),
        (lambda e: {**e, "support_masks": torch.zeros(3, 8, 8)}, r"support mask\(s\) \[0, 1, 2\] .* empty"),
        (lambda e: {**e, "query_images": torch.zeros(0, 1, 8, 8), "query_masks": None}, "query has no image"),
        (lambda e: {**e, "support_images": torch.zeros(3, 1, 8, 8, dtype=torch.uint8)}, "must be float"),
    ],
)
def test_bad_episodes_are_rejected_with_the_reason(change, message: str) -> None:  # type: ignore[no-untyped-def]
    (si, sm), (qi, qm) = _pair(3), _pair(2)
    fields = {"support_images": si, "support_masks": sm, "query_images": qi, "query_masks": qm}
    with pytest.raises(DataError, match=message):
        SegEpisode(**change(fields), structure="x")


def test_sampler_is_deterministic_and_keeps_support_and_query_apart(
    seg_sources: dict[str, SegSource],
) -> None:
    structures = {k: v for k, v in seg_sources["em"].structures.items()}
    a = SegEpisodeSampler(structures, n_shot=2, n_query=3, seed=7)
    b = SegEpisodeSampler(structures, n_shot=2, n_query=3, seed=7)
    e1, e2 = a.episode(4), b.episode(4)
    assert torch.equal(e1.support_images, e2.support_images) and torch.equal(e1.query_masks, e2.query_masks)
    assert not torch.equal(a.episode(5).support_images, e1.support_images)
    assert e1.support_images.shape == (2, 1, 32, 32) and e1.query_masks is not None
    assert e1.query_masks.shape == (3, 32, 32)
    # query tiles come from other EM images than the support tiles
    em = seg_sources["em"].structures["em:membrane"]
    rng_groups = {em.groups[i] for i in range(len(em))}
    assert len(rng_groups) == 30
    for i in range(5):
        ep = a.episode(i)
        s_rows = {bytes(x.numpy().tobytes()) for x in ep.support_images}
        assert not any(bytes(x.numpy().tobytes()) in s_rows for x in ep.query_images)


def test_sampler_rejects_structures_too_small_for_the_episode(seg_sources: dict[str, SegSource]) -> None:
    ct = seg_sources["ct"].structures
    with pytest.raises(DataError, match=r"fewer than n_shot \+ n_query = 40 samples: .*ct:liver"):
        SegEpisodeSampler({"ct:liver": ct["ct:liver"]}, n_shot=20, n_query=20)
    with pytest.raises(DataError, match="n_shot and n_query must be >= 1"):
        SegEpisodeSampler(ct, n_shot=0, n_query=1)
