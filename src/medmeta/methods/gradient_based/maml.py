"""MAML and first-order MAML: `InnerLoopMethod` with plain SGD inner steps, second or first order."""

from __future__ import annotations

from medmeta.methods.inner_loop import InnerLoopMethod, InnerLoopOptions


class MAMLOptions(InnerLoopOptions):
    """Options of `MAML` (see `InnerLoopOptions` for the shared ones).

    Attributes:
        first_order: drop the second-order terms (first-order MAML).
        checkpoint_inner: recompute each inner step's graph in the backward pass (second order only):
            memory of one inner step instead of all, for one more support forward and backward per step.
    """

    first_order: bool = False
    checkpoint_inner: bool = False


class MAML(InnerLoopMethod):
    """Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017, arXiv:1703.03400).

    Meta-learns an initialisation from which a few gradient steps on a task's support set fit the task:
    the query loss after the inner steps is differentiated through them (second order, or first order
    with ``first_order=True``). Batch norm uses per-task batch statistics (see `medmeta.methods.inner_loop`).

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MAML(Conv4(in_channels=1, image_size=28), MAMLOptions(inner_steps=5, inner_lr=0.1))
        >>> # loss = method.batch_loss(episodes); predictor = method.adapt(episode.support)
    """

    Options = MAMLOptions
    options: MAMLOptions

    def second_order(self) -> bool:
        return not self.options.first_order


class FOMAMLOptions(MAMLOptions):
    """Options of `FOMAML`: `MAMLOptions` with ``first_order`` on."""

    first_order: bool = True


class FOMAML(MAML):
    """First-order MAML (Finn, Abbeel, Levine, ICML 2017, arXiv:1703.03400, section 5.2).

    MAML without the second-order terms: the query gradient at the adapted parameters is applied to the
    initialisation. The same class as `MAML` with ``first_order=True`` by default.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = FOMAML(Conv4(in_channels=1, image_size=28), FOMAMLOptions(inner_steps=5))
    """

    Options = FOMAMLOptions
    options: FOMAMLOptions
