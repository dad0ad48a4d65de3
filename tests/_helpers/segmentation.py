"""Small segmenter options (a few thousand weights) for fast tests."""

from __future__ import annotations

from typing import Any

SMALL: dict[str, dict[str, Any]] = {
    "panet": {"base": 4, "depth": 2, "feature_dim": 8},
    "alpnet": {"base": 4, "depth": 2, "feature_dim": 8, "local_window": 4},
    "ssl_alpnet": {"base": 4, "depth": 2, "feature_dim": 8, "local_window": 4},
    "maml": {"base": 4, "depth": 2, "inner_steps": 1, "eval_steps": 2},
    "finetune": {"base": 4, "depth": 2, "steps": 2},
}
