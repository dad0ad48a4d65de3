"""From a typed config to a trained, evaluated model, and back from a checkpoint: the Python API behind
the CLI, one module per task family.

- `medmeta.pipeline.classification`: `RunConfig` -> data, method, `train_method`, `evaluate_on_tests`,
  `load_method` (``medmeta train/evaluate``).
- `medmeta.pipeline.segmentation`: `SegConfig` -> structures, segmenter, `train_segmenter`,
  `load_segmenter` (``medmeta seg train/evaluate``).

Both train through the one loop, `medmeta.train.loop.fit`.
"""

from __future__ import annotations

from medmeta.pipeline.classification import (
    RunData,
    backbone_record,
    build_method_from_config,
    check_test_episodes,
    default_normalization,
    evaluate_on_tests,
    load_domain,
    load_method,
    load_run_data,
    normalization_from_meta,
    record_from_meta,
    train_method,
)
from medmeta.pipeline.segmentation import (
    SegData,
    build_segmenter,
    load_seg_data,
    load_segmenter,
    train_segmenter,
    training_episodes,
)

__all__ = [
    "RunData",
    "SegData",
    "backbone_record",
    "build_method_from_config",
    "build_segmenter",
    "check_test_episodes",
    "default_normalization",
    "evaluate_on_tests",
    "load_domain",
    "load_method",
    "load_run_data",
    "load_seg_data",
    "load_segmenter",
    "normalization_from_meta",
    "record_from_meta",
    "train_method",
    "train_segmenter",
    "training_episodes",
]
