"""Few-shot episodes: the `Episode` record, the samplers that draw them and batching."""

from __future__ import annotations

from medmeta.episodes.collate import EpisodeBatch, collate_episodes
from medmeta.episodes.episode import Episode, Support
from medmeta.episodes.sampler import EpisodeSampler, MultiDomainSampler

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeSampler",
    "MultiDomainSampler",
    "Support",
    "collate_episodes",
]
