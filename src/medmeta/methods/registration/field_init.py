"""A network that predicts the starting field of test-time instance optimisation, meta-trained for it.

Instance optimisation (`InstanceOptimisation`) optimises each pair's displacement from zero. Here a
VoxelMorph network predicts the starting field and the same Adam steps on the pair's own unsupervised loss
refine it. Seen as meta-learning, each pair is a task whose task-specific parameters are its field: the
network is the learned initialisation of those parameters, and it is meta-trained first-order (as FOMAML
treats the inner loop): the loss is taken after `refine_steps` refinement steps and its gradient with
respect to the refined field is passed back through the network's prediction, the steps themselves held
constant. With ``refine_steps=0`` the training is VoxelMorph's (amortised).

At test time `eval_steps` refinement steps run on each pair (no labels needed); 0 is the network alone.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from medmeta.methods.registration.base import FieldPredictor, RegOptions
from medmeta.methods.registration.instance_opt import InstanceOptimisation, InstanceOptOptions
from medmeta.methods.registration.voxelmorph import VoxelMorph, VoxelMorphOptions
from medmeta.tasks.registration import PairEpisode, PairSupport


class FieldInitOptions(VoxelMorphOptions):
    """Options of `FieldInitRegistration` (see `VoxelMorphOptions` for the network).

    Attributes:
        refine_steps: refinement steps inside each training task (0: amortised VoxelMorph training).
        eval_steps: refinement steps on each test pair.
        refine_lr: Adam learning rate of the refinement (voxels per step, as `InstanceOptOptions.lr`).
        refine_downsample: the refinement's correction lives on a grid this many times coarser.
        start_weight: weight of the loss at the network's own field, added to the loss after refinement in
            training. The refined loss alone gives the network a vanishing signal wherever the refinement
            already succeeds, so its field may drift anywhere the refinement can recover from; this term
            keeps the start itself a registration.
    """

    refine_steps: int = Field(5, ge=0)
    eval_steps: int = Field(10, ge=0)
    refine_lr: float = Field(1.0, gt=0.0)
    refine_downsample: int = Field(2, ge=1)
    start_weight: float = Field(1.0, ge=0.0)


class FieldInitRegistration(VoxelMorph):
    """Learned initialisation of the field for instance optimisation: VoxelMorph's prediction refined by
    Adam steps on each pair's loss (network + instance optimisation as in Siebert, Hansen, Heinrich, "Fast
    3D registration with accurate optimisation and little learning for Learn2Reg 2021", arXiv:2112.03053),
    with the network meta-trained first-order for the refinement that follows it.

    Example:
        >>> import torch
        >>> method = FieldInitRegistration(FieldInitOptions(channels=(4, 8), final_channels=(4,), eval_steps=2))
        >>> method.eval().register(torch.rand(1, 2, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """

    Options: ClassVar[type[RegOptions]] = FieldInitOptions
    options: FieldInitOptions

    def refiner(self) -> InstanceOptimisation:
        """The instance optimisation that refines the network's field (same loss as the network's)."""
        o = self.options
        iopt = InstanceOptimisation(
            InstanceOptOptions(
                **o.model_dump(include=set(RegOptions.model_fields)),
                lr=o.refine_lr,
                downsample=o.refine_downsample,
            )
        )
        iopt.similarity, iopt.smoothness, iopt.warp = self.similarity, self.smoothness, self.warp
        return iopt

    def adapt(self, support: PairSupport, steps: int | None = None) -> FieldPredictor:
        """A predictor that registers any pairs: the network's field, then `steps` refinement steps on them.

        Args:
            support: unused beyond its check (each pair is refined on itself); kept for the interface.
            steps: refinement steps (None: ``refine_steps`` in training mode, ``eval_steps`` in eval mode).
        """
        if steps is None:
            steps = self.options.refine_steps if self.training else self.options.eval_steps
        params = dict(self.net.named_parameters())
        refiner = self.refiner()

        def predict(pairs: Tensor) -> Tensor:
            return self._refined(refiner, pairs, self.forward_with(params, pairs), steps)

        return FieldPredictor(predict)

    @staticmethod
    def _refined(refiner: InstanceOptimisation, pairs: Tensor, start: Tensor, steps: int) -> Tensor:
        """`steps` refinement steps from the network's field `start` ``(N, ndim, *spatial)``, with the
        gradient flowing through `start` only (first order)."""
        if steps == 0:
            return start
        refined = refiner.fit_fields(pairs, steps, init=start)  # detached
        return start + (refined - start.detach())

    def episode_loss(self, episode: PairEpisode) -> Tensor:
        """The query pairs' loss at their refined fields, differentiated through the network's prediction
        only (first order), plus ``start_weight`` times the loss at the network's own fields (the same
        forward pass: the network runs once per query pair)."""
        pairs = episode.query_images
        start = self.forward_with(dict(self.net.named_parameters()), pairs)  # (N, ndim, *spatial)
        loss = self.loss(pairs, self._refined(self.refiner(), pairs, start, self.options.refine_steps))
        if self.options.start_weight > 0:
            loss = loss + self.options.start_weight * self.loss(pairs, start)
        return loss
