"""What every transfer-learning baseline shares: a backbone pretrained with ordinary supervised learning.

Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-shot Classification", ICLR 2019, arXiv:1904.04232:
train a backbone with a classification head over all meta-training classes, drop the head, and adapt a
simple classifier on each task's support set. `SupervisedMethod` holds the backbone, the pretraining
heads and the training-feature mean; the test-time rule (fine-tuning, linear probe, SimpleShot, cosine
classifier) is each subclass's `adapt`. Pretraining itself is `medmeta.train.supervised.fit_supervised`;
`medmeta.methods.switch_method` puts the same weights behind another rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.errors import ConfigError
from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.models.heads import HeadKind, build_head

FeatureTransform = Literal["none", "l2n", "cl2n"]


def transform_features(features: Tensor, mean: Tensor, kind: FeatureTransform) -> Tensor:
    """SimpleShot's feature transforms (Wang et al. 2019): none, L2-normalise, or centre then L2-normalise.

    Args:
        features: ``(n, d)``.
        mean: ``(d,)`` mean feature of the training images (used by ``cl2n``).
        kind: ``none`` (UN), ``l2n`` (L2N) or ``cl2n`` (CL2N).

    Returns:
        ``(n, d)`` transformed features.
    """
    if kind == "none":
        return features
    if kind == "cl2n":
        features = features - mean  # (n, d)
    return F.normalize(features, dim=-1)


def backbone_width(backbone: nn.Module) -> int:
    """The backbone's declared ``out_features``.

    Raises:
        ValueError: the backbone does not declare an integer ``out_features``.
    """
    width = getattr(backbone, "out_features", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError(
            f"{type(backbone).__name__} has no integer 'out_features' (got {width!r}): transfer baselines "
            "size their heads and feature mean from it; set backbone.out_features to the feature width"
        )
    return width


class SupervisedOptions(MethodOptions):
    """Pretraining options shared by every transfer baseline.

    Attributes:
        label_space: ``union``: one head over the classes of all training domains (labels never
            merged across domains); ``per_domain``: one head per training domain.
        head_sizes: classes of each pretraining head. Leave empty: `fit_supervised` sets it from the
            training data and stores it in the checkpoint's config, so the checkpoint rebuilds exactly.
        pretrain_head: ``linear`` (Baseline) or ``cosine`` (Baseline++) pretraining head.
        cosine_scale: logit scale of cosine heads.
        batch_size: images per pretraining mini-batch.
        flip: random flips along every spatial axis during pretraining (seeded per batch).
        mean_images: training images used to estimate the training-feature mean after each epoch.
    """

    label_space: Literal["union", "per_domain"] = "union"
    head_sizes: tuple[Annotated[int, Field(ge=1)], ...] = ()
    pretrain_head: HeadKind = "linear"
    cosine_scale: float = Field(10.0, gt=0.0)
    batch_size: int = Field(64, ge=1)
    flip: bool = False
    mean_images: int = Field(1024, ge=1)


class SupervisedMethod(FewShotMethod):
    """Base class of the transfer baselines: a backbone pretrained on all training classes at once.

    Subclasses implement `adapt` (the test-time classifier) and may subclass `SupervisedOptions`.
    State: ``backbone``, ``heads`` (one per entry of ``options.head_sizes``, empty until pretraining)
    and the buffer ``feature_mean`` ``(d,)``.

    Example:
        >>> from medmeta.methods.transfer.simpleshot import SimpleShot
        >>> from medmeta.models import Conv4
        >>> method = SimpleShot(Conv4(in_channels=3, image_size=32))
        >>> method.set_head_sizes([8])  # fit_supervised does this from the training data
        >>> # loss = method.supervised_loss(images, labels, domains)
    """

    trainer = "supervised"
    Options = SupervisedOptions
    options: SupervisedOptions
    feature_mean: Tensor

    def __init__(self, backbone: nn.Module, options: SupervisedOptions | None = None) -> None:
        opts = options if options is not None else self.Options()
        if not isinstance(opts, SupervisedOptions):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, got {type(opts).__name__}: build it "
                f"with {type(self).__name__}.from_options(backbone, {{...}})"
            )
        super().__init__(backbone, opts)
        self.width = backbone_width(backbone)
        self.register_buffer("feature_mean", torch.zeros(self.width))
        self.heads = self._build_heads(opts.head_sizes)

    def _build_heads(self, sizes: Sequence[int]) -> nn.ModuleList:
        o = self.options
        return nn.ModuleList(build_head(o.pretrain_head, self.width, n, scale=o.cosine_scale) for n in sizes)

    def set_head_sizes(self, sizes: Sequence[int]) -> None:
        """Create the pretraining heads (no-op when the method already has exactly these heads).

        Raises:
            ConfigError: the method already has heads of other sizes.
        """
        wanted = tuple(int(n) for n in sizes)
        if wanted == self.options.head_sizes:
            return
        if self.options.head_sizes:
            raise ConfigError(
                f"method option head_sizes={list(self.options.head_sizes)} does not match the training "
                f"data, which needs heads of {list(wanted)} classes: drop the head_sizes option (pretraining "
                "sets it) or train on the same classes"
            )
        self.options = self.options.model_copy(update={"head_sizes": wanted})
        device = self.feature_mean.device
        self.heads = self._build_heads(wanted).to(device)

    def features(self, images: Tensor) -> Tensor:
        """``(n, C, *spatial)`` -> backbone features ``(n, d)``."""
        return self.backbone(images)

    def supervised_logits(self, features: Tensor, head: int = 0) -> Tensor:
        """Logits ``(n, head_sizes[head])`` of pretraining head `head` for features ``(n, d)``."""
        if not self.heads:
            raise ConfigError(
                "the method has no pretraining head: call set_head_sizes or train it with fit_supervised"
            )
        return self.heads[head](features)

    def supervised_loss(self, images: Tensor, labels: Tensor, domains: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of a pretraining mini-batch.

        Args:
            images: ``(n, C, *spatial)`` normalised float images.
            labels: ``(n,)`` int64 class ids in the label space of each image's head.
            domains: ``(n,)`` int64 head of each image (None: all use head 0, the union label space).

        Returns:
            Scalar loss.
        """
        features = self.features(images)  # (n, d)
        if domains is None or len(self.heads) == 1:
            return F.cross_entropy(self.supervised_logits(features), labels)
        total = features.new_zeros(())
        for h in torch.unique(domains).tolist():
            rows = domains == h  # (n,)
            logits = self.supervised_logits(features[rows], int(h))  # (n_h, head_sizes[h])
            total = total + F.cross_entropy(logits, labels[rows], reduction="sum")
        return total / labels.shape[0]
