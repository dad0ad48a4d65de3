"""The interface of the registration methods (`medmeta.methods.learner.FewShotLearner` for image pairs).

``adapt(support)`` takes a `PairSupport` (pairs ``(n, 2, *spatial)``: moving, fixed) and returns a
`FieldPredictor`; ``predictor.predict(pairs)`` gives the displacement ``(N, ndim, *spatial)`` in voxels
that warps each moving image onto its fixed image (``moved(x) = moving(x + ddf(x))``, MONAI's ``Warp``).
Networks predict any pair; instance-optimisation methods (``transductive = True``) register the pairs they
were adapted on, so their test-time protocol is ``adapt(PairSupport(pairs)).predict(pairs)``.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from medmeta.errors import DataError
from medmeta.methods.learner import FewShotLearner, LearnerOptions
from medmeta.methods.registration.deps import monai_module
from medmeta.methods.registration.losses import Similarity, Smoothness, similarity_loss, smoothness_loss
from medmeta.tasks.registration import PairEpisode, PairSupport, check_pairs


class RegOptions(LearnerOptions):
    """Hyper-parameters shared by the registration methods.

    Attributes:
        spatial_dims: 2 (slices) or 3 (volumes).
        similarity: ``lncc`` (mono-modal), ``mi`` (cross-modal) or ``mse``.
        smoothness: ``diffusion`` or ``bending`` penalty on the displacement.
        smooth_weight: weight of the smoothness penalty.
        kernel_size: window of the local NCC.
    """

    spatial_dims: int = Field(2, ge=2, le=3)
    similarity: Similarity = "lncc"
    smoothness: Smoothness = "diffusion"
    smooth_weight: float = Field(1.0, ge=0.0)
    kernel_size: int = Field(9, ge=3)


class FieldPredictor:
    """A registration model of one task: pairs ``(N, 2, *spatial)`` -> displacement ``(N, ndim, *spatial)``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self._fn = fn

    def predict(self, query_images: Tensor) -> Tensor:
        check_pairs(query_images, None, None, "query")
        return self._fn(query_images)


class RegistrationMethod(FewShotLearner[PairSupport, PairEpisode]):
    """Base class of the registration methods: options, MONAI losses and warp.

    Subclasses set ``Options`` and implement `adapt`; ``episode_loss`` defaults to the registration loss
    of the adapted predictor on the query pairs.
    """

    Options: ClassVar[type[RegOptions]] = RegOptions
    transductive: ClassVar[bool] = False
    options: RegOptions

    def __init__(self, options: RegOptions | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()
        o = self.options
        self.similarity = similarity_loss(o.similarity, o.spatial_dims, o.kernel_size)
        self.smoothness = smoothness_loss(o.smoothness)
        blocks = monai_module("networks.blocks", "warping images")
        with warnings.catch_warnings():  # MONAI warns at every Warp that it uses PyTorch's grid_sample
            warnings.filterwarnings("ignore", message=".*native grid_sample.*")
            self.warp = blocks.Warp(mode="bilinear", padding_mode="border")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None) -> RegistrationMethod:
        """Build from a plain dict of options (validated by ``cls.Options``)."""
        return cls(cls.Options(**(options or {})))

    def check_dims(self, pairs: Tensor) -> None:
        """Raise `DataError` when `pairs` do not have ``spatial_dims`` spatial axes."""
        if pairs.ndim - 2 != self.options.spatial_dims:
            raise DataError(
                f"{type(self).__name__} was built with spatial_dims={self.options.spatial_dims} but got "
                f"pairs of shape {tuple(pairs.shape)}: set the option spatial_dims={pairs.ndim - 2}"
            )

    def loss(self, pairs: Tensor, ddf: Tensor) -> Tensor:
        """``similarity(warp(moving, ddf), fixed) + smooth_weight * smoothness(ddf)`` (scalar).

        Args:
            pairs: ``(N, 2, *spatial)``.
            ddf: ``(N, ndim, *spatial)``.
        """
        moved = self.warp(pairs[:, :1], ddf)  # (N, 1, *spatial)
        return self.similarity(moved, pairs[:, 1:]) + self.options.smooth_weight * self.smoothness(ddf)

    @abc.abstractmethod
    def adapt(self, support: PairSupport) -> FieldPredictor:
        """Build a predictor from the support pairs; never mutates ``self``."""

    def register(self, pairs: Tensor) -> Tensor:
        """Test-time protocol: adapt on `pairs` and predict their displacement ``(N, ndim, *spatial)``."""
        return self.adapt(PairSupport(pairs)).predict(pairs)

    def episode_loss(self, episode: PairEpisode) -> Tensor:
        """Registration loss of the query pairs under the predictor adapted on the support."""
        ddf = self.adapt(episode.support).predict(episode.query_images)
        return self.loss(episode.query_images, ddf)


def zero_field(pairs: Tensor) -> Tensor:
    """``(N, ndim, *spatial)`` zeros for pairs ``(N, 2, *spatial)``."""
    return torch.zeros(
        (pairs.shape[0], pairs.ndim - 2, *pairs.shape[2:]), dtype=pairs.dtype, device=pairs.device
    )


class Identity(RegistrationMethod):
    """The identity transform (no registration): the baseline every method must beat.

    Example:
        >>> Identity().register(torch.rand(1, 2, 16, 16)).abs().sum()
        tensor(0.)
    """

    def adapt(self, support: PairSupport) -> FieldPredictor:
        return FieldPredictor(zero_field)


def stored_fields(support: PairSupport, fields: Tensor, method: str) -> FieldPredictor:
    """A predictor returning `fields` for exactly the support pairs (instance optimisation's result).

    Raises:
        DataError: asked for other pairs (adapt on the query pairs instead).
    """

    def predict(query: Tensor) -> Tensor:
        if query.shape != support.images.shape or not torch.equal(query, support.images):
            raise DataError(
                f"{method} registers the pairs it was adapted on: call adapt(PairSupport(pairs)) with the "
                "pairs to register (or use register(pairs))"
            )
        return fields

    return FieldPredictor(predict)
