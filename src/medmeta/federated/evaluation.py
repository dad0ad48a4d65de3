"""A site's few-shot test: adapt from K shots of its held-out images, predict the queries, per episode."""

from __future__ import annotations

from medmeta.config.federated import FedEvalConfig
from medmeta.eval.evaluate import evaluate
from medmeta.federated.learners import normalization
from medmeta.federated.sites import Site, SiteOrderSampler, query_size
from medmeta.methods.base import FewShotMethod


def site_accuracy(method: FewShotMethod, site: Site, cfg: FedEvalConfig) -> dict[int, list[float]]:
    """Accuracy of every test episode at the site, for each K of ``cfg.shots``.

    Episodes hold every class of the site in its class order (`SiteOrderSampler`), K support and up to
    ``cfg.n_query`` query images per class from its test images, seeded by ``cfg.seed`` (the same
    episodes for every strategy). The method adapts with its own `adapt` (MAML's inner loop, fine-tuning
    a new head...) and is left unchanged.

    Returns:
        K -> ``cfg.episodes`` accuracies in [0, 1].

    Raises:
        ConfigError: a test class too small for K shots and one query.
    """
    prepare = normalization(site.test.channels)
    out: dict[int, list[float]] = {}
    for k in cfg.shots:
        n_query = query_size(site, k, cfg.n_query)
        sampler = SiteOrderSampler(site.test, k, n_query, seed=cfg.seed, n_episodes=cfg.episodes)
        out[k] = list(evaluate(method, sampler, prepare=prepare, device="cpu").per_episode_accuracy)
    return out
