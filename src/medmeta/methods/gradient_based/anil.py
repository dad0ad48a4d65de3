"""ANIL: MAML whose inner loop adapts only the classification head."""

from __future__ import annotations

from medmeta.methods.gradient_based.maml import MAML, MAMLOptions


class ANILOptions(MAMLOptions):
    """Options of `ANIL`: `MAMLOptions` with ``adapt="head"`` (other values make it plain MAML).

    Attributes:
        adapt: parameters the inner loop updates (``head``: the linear head only).
    """

    adapt: str = "head"


class ANIL(MAML):
    """Almost No Inner Loop (Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse?", ICLR 2020,
    arXiv:1909.09157).

    The backbone is meta-learned but not adapted per task; only the head is, so each support and query
    set is embedded once per task and the inner loop runs on features (much cheaper than MAML). The
    meta-gradient still flows into the backbone through the head's inner updates (second order) and
    through the query features.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = ANIL(Conv4(in_channels=1, image_size=28), ANILOptions(inner_steps=5, inner_lr=0.4))
    """

    Options = ANILOptions
    options: ANILOptions
