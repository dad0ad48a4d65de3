"""Run configuration: frozen pydantic models, one per concern, composed into `RunConfig` (classification,
`medmeta.config.run`), `PretrainConfig` (self-supervised pretraining, `medmeta.config.pretrain`) and
`SegConfig` (segmentation, `medmeta.config.segmentation`); all share `TrainConfig`.

Only the CLI reads YAML or flags; everything else receives these objects. A bad value raises a
`ConfigError` naming the field, the value and the allowed range. Checkpoints store the config.
This package is a leaf (it imports nothing of medmeta but its errors): method names and their options are
checked against the registries by `medmeta.pipeline.checks`.
"""

from medmeta.config._base import apply_overrides, describe_validation_error, read_yaml_mapping
from medmeta.config.continual import (
    ContinualConfig,
    ContinualTrainConfig,
    PrototypeConfig,
    ReplayConfig,
    StreamConfig,
    load_continual_config,
    make_continual_config,
)
from medmeta.config.pretrain import (
    AugmentConfig,
    PretrainConfig,
    PretrainDataConfig,
    SSLConfig,
    load_pretrain_config,
    make_pretrain_config,
)
from medmeta.config.run import (
    LIBRARY_PREFIXES,
    DataConfig,
    EpisodeConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
    make_config,
)
from medmeta.config.segmentation import (
    SegConfig,
    SegDataConfig,
    SegEpisodeConfig,
    SegEvalConfig,
    SegMethodConfig,
    load_seg_config,
    make_seg_config,
)

__all__ = [
    "LIBRARY_PREFIXES",
    "AugmentConfig",
    "ContinualConfig",
    "ContinualTrainConfig",
    "DataConfig",
    "EpisodeConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "PretrainConfig",
    "PretrainDataConfig",
    "PrototypeConfig",
    "ReplayConfig",
    "RunConfig",
    "SSLConfig",
    "SegConfig",
    "SegDataConfig",
    "SegEpisodeConfig",
    "SegEvalConfig",
    "SegMethodConfig",
    "StreamConfig",
    "TrainConfig",
    "apply_overrides",
    "describe_validation_error",
    "load_config",
    "load_continual_config",
    "load_pretrain_config",
    "load_seg_config",
    "make_config",
    "make_continual_config",
    "make_pretrain_config",
    "make_seg_config",
    "read_yaml_mapping",
]
