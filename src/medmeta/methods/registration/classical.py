"""Classical iterative registration with SimpleITK (the reference): demons, B-spline or affine.

* ``demons``: diffeomorphic demons (Vercauteren et al., "Diffeomorphic demons", NeuroImage 2009), a dense
  field smoothed by a Gaussian of ``demons_sigma`` voxels; mono-modal (intensities are compared directly).
* ``bspline``: a cubic B-spline free-form deformation (Rueckert et al., IEEE TMI 1999) on a
  ``mesh_size`` control grid, Mattes mutual information, L-BFGS-B, two resolution levels; works across
  modalities.
* ``affine``: an affine transform, Mattes mutual information, regular-step gradient descent, initialised
  at the images' centres of mass; the affine-only baseline.

The SimpleITK transform maps a fixed-image point to the moving image; sampled on the fixed grid it is
exactly medmeta's displacement convention (``moved(x) = moving(x + ddf(x))``), with SimpleITK's
``(x, y[, z])`` components reordered to array axes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from medmeta.methods.registration.base import FieldPredictor, RegistrationMethod, RegOptions, stored_fields
from medmeta.methods.registration.deps import simpleitk
from medmeta.tasks.registration import PairSupport


class ClassicalOptions(RegOptions):
    """Options of `ClassicalRegistration` (the loss options of `RegOptions` are not used).

    Attributes:
        transform: ``demons``, ``bspline`` or ``affine``.
        iterations: optimiser iterations (per resolution level for ``bspline``/``affine``).
        demons_sigma: Gaussian smoothing of the demons field, voxels.
        mesh_size: B-spline control cells per axis.
        threads: SimpleITK threads for one pair (set on each filter; the process default is left alone).
        seed: seed of the metric sampling.
    """

    transform: Literal["demons", "bspline", "affine"] = "demons"
    iterations: int = Field(100, ge=1)
    demons_sigma: float = Field(1.5, gt=0.0)
    mesh_size: int = Field(4, ge=1)
    threads: int = Field(1, ge=1)
    seed: int = 0


class ClassicalRegistration(RegistrationMethod):
    """SimpleITK demons / B-spline / affine registration of each pair (no training, transductive).

    Example:
        >>> method = ClassicalRegistration(ClassicalOptions(transform="demons", iterations=10))  # doctest: +SKIP
        >>> method.register(torch.rand(1, 2, 32, 32)).shape  # doctest: +SKIP
        torch.Size([1, 2, 32, 32])
    """

    Options: ClassVar[type[RegOptions]] = ClassicalOptions
    options: ClassicalOptions
    transductive: ClassVar[bool] = True

    def __init__(self, options: RegOptions | None = None) -> None:
        super().__init__(options)
        self.sitk = simpleitk("classical registration")

    def _register_one(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """``(*spatial)`` float arrays -> displacement ``(ndim, *spatial)`` in array-axis order."""
        sitk, o = self.sitk, self.options
        f_img = sitk.GetImageFromArray(fixed.astype(np.float32))
        m_img = sitk.GetImageFromArray(moving.astype(np.float32))
        if o.transform == "demons":
            demons = sitk.DiffeomorphicDemonsRegistrationFilter()
            demons.SetNumberOfIterations(o.iterations)
            demons.SetStandardDeviations(o.demons_sigma)
            demons.SetNumberOfThreads(o.threads)
            field = demons.Execute(f_img, m_img)
            transform: Any = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        else:
            transform = self._optimise(f_img, m_img)
        to_field = sitk.TransformToDisplacementFieldFilter()
        to_field.SetReferenceImage(f_img)
        to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
        to_field.SetNumberOfThreads(o.threads)
        disp = sitk.GetArrayFromImage(to_field.Execute(transform))  # (*spatial, ndim) as (x, y[, z])
        return np.moveaxis(disp[..., ::-1], -1, 0).astype(np.float32)  # (ndim, *spatial), array axes

    def _optimise(self, f_img: Any, m_img: Any) -> Any:
        sitk, o = self.sitk, self.options
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetNumberOfThreads(o.threads)
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        dim = f_img.GetDimension()
        if o.transform == "bspline":
            initial = sitk.BSplineTransformInitializer(f_img, [o.mesh_size] * dim)
            reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=o.iterations)
            reg.SetInitialTransform(initial, inPlace=False)
        else:
            centred = sitk.CenteredTransformInitializer(
                f_img, m_img, sitk.AffineTransform(dim), sitk.CenteredTransformInitializerFilter.MOMENTS
            )
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=1.0, minStep=1e-4, numberOfIterations=o.iterations
            )
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetInitialTransform(centred, inPlace=False)
        return reg.Execute(f_img, m_img)

    def fields(self, pairs: Tensor) -> Tensor:
        """Displacements ``(N, ndim, *spatial)`` of pairs ``(N, 2, *spatial)``, one SimpleITK run each."""
        self.check_dims(pairs)
        arr = pairs.detach().cpu().double().numpy()
        out = [self._register_one(p[0], p[1]) for p in arr]
        return torch.from_numpy(np.stack(out)).to(pairs)

    def adapt(self, support: PairSupport) -> FieldPredictor:
        return stored_fields(support, self.fields(support.images), f"{self.options.transform} registration")
