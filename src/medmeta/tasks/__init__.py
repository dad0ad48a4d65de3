"""What a few-shot task is, generic over its target: episodes, seeded samplers and batching.

Classification episodes (`Episode`, targets: class labels) and segmentation episodes (`SegEpisode`,
targets: masks) share `TaskEpisode`; their samplers share `SeededSampler`.
"""

from __future__ import annotations

from medmeta.tasks.base import SeededSampler, TaskEpisode
from medmeta.tasks.collate import EpisodeBatch, collate_episodes
from medmeta.tasks.episode import Episode, Support
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.tasks.segmentation import SegEpisode, SegEpisodeSampler

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeSampler",
    "MultiDomainSampler",
    "SeededSampler",
    "SegEpisode",
    "SegEpisodeSampler",
    "Support",
    "TaskEpisode",
    "collate_episodes",
]
