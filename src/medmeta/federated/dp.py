"""Differential privacy of a site's updates: Opacus DP-SGD at every local step, epsilon by its RDP accountant.

The privacy unit is one training image of the site (one patient image, record-level DP): every local step
draws a Poisson sample of the site's images (rate ``q = batch_size / N``), clips each image's gradient to
``max_grad_norm``, adds Gaussian noise of ``noise_multiplier * max_grad_norm`` and averages
(Abadi et al. 2016; Opacus's `DPOptimizer` and `GradSampleModule`). All ``rounds * local_steps`` steps
of the run are one composition at the site; what the site sends (the weights after its steps) is
post-processing, so the server and the other sites see an (epsilon, delta)-DP output of the site's data.
The noise multiplier is chosen before training, from the target epsilon (`noise_for`), and the reached
epsilon is read back from the accountant.

Only the supervised learner (FedAvg, FedProx) runs under DP: a meta-learner's query gradient depends on
its support images through the inner loop, which per-image clipping does not bound, and Opacus's hooks do
not follow `torch.func.functional_call`'s second-order graph. Batch norm is replaced by group norm (no
per-image gradient through batch statistics), and the supervised feature mean, an unclipped statistic of
the training images, is never computed or sent (it stays zero: fine-tuning's ``cl2n`` becomes ``l2n``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medmeta._optional import optional_import
from medmeta.federated.learners import normalization
from medmeta.methods.base import FewShotMethod
from medmeta.train.loop import BatchSource
from medmeta.train.supervised import LabelledImages

if TYPE_CHECKING:
    from medmeta.data.datasets import ImageDataset

FEATURE = "differential privacy of site updates (Opacus)"


def noise_for(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest Gaussian noise multiplier that keeps `steps` DP-SGD steps at rate `sample_rate` within
    (`epsilon`, `delta`) under Opacus's RDP accountant.

    Raises:
        OptionalDependencyError: Opacus is not installed.
    """
    utils = optional_import("opacus.accountants.utils", FEATURE)
    return float(
        utils.get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        )
    )


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after `steps` DP-SGD steps (RDP accountant, converted at `delta`)."""
    rdp = optional_import("opacus.accountants", FEATURE)
    accountant = rdp.RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


class PoissonBatches:
    """Poisson-sampled mini-batches of a site's images for DP-SGD (each image in with probability `rate`).

    Batch ``b`` is drawn from ``default_rng((seed, b, 5))``; labels are the site's classes (head 0).
    The feature mean is not recomputed after a round (see the module docstring).
    """

    def __init__(
        self, dataset: ImageDataset, rate: float, *, seed: int, steps: int, prepare: Callable[..., Any]
    ) -> None:
        self.data = LabelledImages.build([dataset])
        self.rate, self.seed, self.prepare = rate, seed, prepare
        self.steps_per_epoch = steps

    def batch(self, index: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)``, labels ``(B,)`` and heads ``(B,)`` with ``B ~ Binomial(N, rate)``."""
        rng = np.random.default_rng((self.seed, index, 5))
        pick = np.nonzero(rng.random(len(self.data)) < self.rate)[0]
        images, labels, heads = self.data.gather(pick)
        return self.prepare(images.to(device)), labels.to(device), heads.to(device)

    def loss(self, method: Any, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return method.supervised_loss(*batch)

    def after_epoch(self, method: Any, device: torch.device) -> None:
        """Nothing: the feature mean would be a statistic of the images outside the DP guarantee."""


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD for one site's rounds (a `medmeta.federated.learners.Privacy`).

    Attributes:
        dataset: the site's training images.
        noise_multiplier: Gaussian noise std over the clipping norm.
        max_grad_norm: per-image clipping norm.
        batch_size: expected images per step (``rate = batch_size / N``).
        seed: seeds the Poisson samples (the noise is drawn from torch's global generator).
    """

    dataset: ImageDataset
    noise_multiplier: float
    max_grad_norm: float
    batch_size: int
    seed: int

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch_size / len(self.dataset))

    def wrap(
        self, method: FewShotMethod, optimizer: torch.optim.Optimizer, source: BatchSource
    ) -> tuple[torch.optim.Optimizer, BatchSource, Callable[[], None]]:
        """A DP optimiser over `optimizer`, Poisson batches instead of `source`, and a function that takes
        Opacus's hooks off `method` again. Round ``r`` draws batches ``r * steps ..`` of the stream."""
        gsm = optional_import("opacus.grad_sample", FEATURE)
        optim = optional_import("opacus.optimizers", FEATURE)
        wrapped = gsm.GradSampleModule(method, loss_reduction="mean")
        dp_optimizer = optim.DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
        )  # the noise comes from torch's global generator: fresh every round, not replayable
        prepare = normalization(self.dataset.channels)
        batches = PoissonBatches(
            self.dataset, self.sample_rate, seed=self.seed, steps=source.steps_per_epoch, prepare=prepare
        )
        return dp_optimizer, batches, wrapped._close
