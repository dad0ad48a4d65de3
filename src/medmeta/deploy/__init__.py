"""Adapt a meta-trained model to a new condition from a few labelled images, predict, export."""

from medmeta.deploy.adapted import (
    AdaptedModel,
    TrainedModel,
    adapt_support,
    load_adapted,
    load_model,
    load_trained,
    save_adapted,
)
from medmeta.deploy.api import adapt, predict
from medmeta.deploy.inputs import load_queries, load_support
from medmeta.deploy.predict import Predictions, predict_files

__all__ = [
    "AdaptedModel",
    "Predictions",
    "TrainedModel",
    "adapt",
    "adapt_support",
    "load_adapted",
    "load_model",
    "load_queries",
    "load_support",
    "load_trained",
    "predict",
    "predict_files",
    "save_adapted",
]
