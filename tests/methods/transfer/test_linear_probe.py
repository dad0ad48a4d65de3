"""Linear probe: scikit-learn's optimum on separable toy features, cached scoring, real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.methods.transfer.linear_probe import LinearProbe, LinearProbeOptions, fit_logistic_regression
from medmeta.tasks.episode import Support
from tests._helpers.transfer import (
    Flat,
    as_images,
    assert_above_chance,
    real_config,
    seeded,
    single_thread,  # noqa: F401  (autouse fixture)
    train_and_test,
)


def separable(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian clusters in 10 dimensions: features ``(3 * n_per, 10)``, labels."""
    g = seeded(seed)
    centres = torch.zeros(3, 10)
    centres[0, 0], centres[1, 1], centres[2, 2] = 4.0, 4.0, 4.0
    labels = torch.arange(3).repeat_interleave(n_per)
    return centres[labels] + 0.5 * torch.randn(3 * n_per, 10, generator=g), labels


def test_probe_matches_scikit_learns_logistic_regression() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = separable(4, seed=0)
    q, _ = separable(5, seed=1)
    w, b = fit_logistic_regression(x, y, 3, c=0.5, max_iter=500, tol=1e-10)
    ref = sklearn.LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    probs = torch.softmax(q @ w.T + b, -1)
    torch.testing.assert_close(
        probs, torch.from_numpy(ref.predict_proba(q.numpy())).float(), atol=1e-4, rtol=0
    )


def test_probe_separates_separable_classes_and_predicts_every_query() -> None:
    x, y = separable(2, seed=0)
    q, qy = separable(10, seed=1)
    method = LinearProbe(Flat(10), LinearProbeOptions(transform="none")).eval()  # type: ignore[arg-type]
    logits = method.adapt(Support(as_images(x), y, 3)).predict(as_images(q))
    assert torch.equal(logits.argmax(-1), qy)


def test_probe_runs_under_no_grad_and_is_deterministic() -> None:
    x, y = separable(2, seed=0)
    method = LinearProbe(Flat(10)).eval()
    with torch.no_grad():
        a = method.adapt(Support(as_images(x), y, 3)).predict(as_images(x))
    b = method.adapt(Support(as_images(x), y, 3)).predict(as_images(x))
    assert torch.equal(a, b)
    assert torch.equal(a.argmax(-1), y)


def test_cached_scoring_equals_adapting_on_each_episode() -> None:
    method = LinearProbe(Flat(10), LinearProbeOptions(transform="cl2n")).eval()  # type: ignore[arg-type]
    method.feature_mean.fill_(0.3)
    episodes = [separable(2, seed=s) for s in range(3)]
    queries = [separable(3, seed=10 + s)[0] for s in range(3)]
    expected = torch.stack(
        [
            method.adapt(Support(as_images(x), y, 3)).predict(as_images(q))
            for (x, y), q in zip(episodes, queries, strict=True)
        ]
    )
    got = method.logits_from_features(
        torch.stack([x for x, _ in episodes]), torch.stack([y for _, y in episodes]), 3, torch.stack(queries)
    )
    torch.testing.assert_close(got, expected)


@pytest.mark.data
def test_linear_probe_pretrains_and_beats_chance_on_unseen_blood_cell_classes(data_dir: Path) -> None:
    _, results = train_and_test(real_config(data_dir, "linear_probe"))
    assert_above_chance(results[0], 3)
