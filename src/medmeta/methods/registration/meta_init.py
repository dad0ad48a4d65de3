"""Meta-learned initialisation for test-time instance optimisation of a VoxelMorph network.

Each training task is a set of pairs; the network's weights are adapted on them by a few Adam steps of the
unsupervised registration loss, and the initialisation is meta-trained so that those few steps register
well: first-order MAML (the loss after the steps, its gradient applied to the initialisation) or Reptile
(the initialisation moves towards the adapted weights). At test time the same few steps run on each new
pair. The inner loop is `medmeta.methods.functional.inner_loop`; Reptile's direction and the gradient
hand-over are those of `medmeta.methods.gradient_based.reptile` and `medmeta.methods.meta_batch`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from medmeta.methods.gradient_based.reptile import reptile_direction
from medmeta.methods.meta_batch import straight_through
from medmeta.methods.registration.base import RegOptions
from medmeta.methods.registration.voxelmorph import VoxelMorph, VoxelMorphOptions
from medmeta.tasks.registration import PairEpisode


class MetaInitOptions(VoxelMorphOptions):
    """Options of `MetaInitRegistration` (see `VoxelMorphOptions`).

    Attributes:
        meta: ``fomaml`` (first-order MAML) or ``reptile``.
        inner_steps: inner Adam steps per training task.
        eval_steps: Adam steps per test pair.
    """

    meta: Literal["fomaml", "reptile"] = "fomaml"
    inner_steps: int = Field(3, ge=1)
    eval_steps: int = Field(3, ge=0)


class MetaInitRegistration(VoxelMorph):
    """Meta-learned initialisation (Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning", ICML 2017,
    arXiv:1703.03400, first order; Nichol et al., "On First-Order Meta-Learning Algorithms", 2018,
    arXiv:1803.02999) for test-time instance optimisation of a VoxelMorph network (as proposed for
    registration by Baum et al., "Meta-Learning Initializations for Interactive Medical Image
    Registration", IEEE TMI 2022, arXiv:2210.12014).

    The weights are an initialisation, not a final model: a few unsupervised gradient steps on each new
    pair produce its displacement. With ``eval_steps=0`` it is a plain network forward.

    Example:
        >>> method = MetaInitRegistration(MetaInitOptions(channels=(4, 8), final_channels=(4,), eval_steps=1))
        >>> method.eval().register(torch.rand(1, 2, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """

    Options: ClassVar[type[RegOptions]] = MetaInitOptions
    options: MetaInitOptions

    def episode_loss(self, episode: PairEpisode) -> Tensor:
        """FOMAML: query loss after `inner_steps` on the support (first-order gradient to the initialisation).
        Reptile: the last inner loss, whose gradient is ``theta - theta_adapted``."""
        steps = self.options.inner_steps
        if self.options.meta == "fomaml":
            adapted = self.trajectory(episode.support_images, steps, track=True)
            return self.loss(episode.query_images, self.forward_with(adapted, episode.query_images))
        losses: list[Tensor] = []
        final = self.trajectory(episode.support_images, steps, track=False, losses=losses)
        names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        theta = dict(self.net.named_parameters())
        grads = reptile_direction([theta[n] for n in names], [final[n] for n in names])
        return straight_through(losses[-1], [theta[n] for n in names], grads)
