"""Random views of medical images for self-supervised pretraining, in torch on the images' device.

`ViewAugment` turns a batch ``(N, C, H, W)`` of intensities in ``[0, 1]`` into one random view per image:
a random resized crop, horizontal/vertical flips and a small rotation (one affine resampling), then
brightness, contrast, a gaussian blur and gaussian noise, each the same on every channel. There is no hue
or saturation jitter: grey images (X-ray, MRI, CT) have none, grey images repeated to RGB stay grey, and
stain colour is a signal in microscopy. Every random number is drawn
from the `torch.Generator` passed in (on the CPU), so the same generator state gives the same views on any
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.config import AugmentConfig
from medmeta.errors import DataError

_ASPECT = (3 / 4, 4 / 3)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``(n,)`` float32 uniform in ``[low, high)``, drawn on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator)


@dataclass(frozen=True)
class ViewAugment:
    """One random view per image; the fields mirror `medmeta.config.AugmentConfig`.

    Example:
        >>> augment = ViewAugment(crop_scale=(0.4, 1.0))
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.rand(4, 1, 32, 32), 32, g).shape
        torch.Size([4, 1, 32, 32])
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    hflip: float = 0.5
    vflip: float = 0.5
    rotation: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise: float = 0.02

    @classmethod
    def from_config(cls, cfg: AugmentConfig, *, local: bool = False) -> ViewAugment:
        """The global views of `cfg` (or, with `local`, DINO's local views: ``cfg.local_crop_scale``)."""
        return cls(
            crop_scale=cfg.local_crop_scale if local else cfg.crop_scale,
            hflip=cfg.hflip,
            vflip=cfg.vflip,
            rotation=cfg.rotation,
            brightness=cfg.brightness,
            contrast=cfg.contrast,
            blur=cfg.blur,
            blur_sigma=cfg.blur_sigma,
            noise=cfg.noise,
        )

    def __call__(self, images: Tensor, size: int, generator: torch.Generator) -> Tensor:
        """Views of `images`.

        Args:
            images: ``(N, C, H, W)`` float intensities in ``[0, 1]``.
            size: side of the square views.
            generator: a CPU generator; it advances by the draws of this batch.

        Returns:
            ``(N, C, size, size)`` float views, intensities in ``[0, 1]``.

        Raises:
            DataError: images that are not ``(N, C, H, W)`` (3-D volumes included).
        """
        if images.ndim != 4:
            raise DataError(
                f"views are made of 2-D images (N, C, H, W), got shape {tuple(images.shape)}: self-supervised "
                "pretraining takes 2-D domains"
            )
        views = self._geometry(images, size, generator)
        return self._intensity(views, generator).clamp_(0.0, 1.0)

    def _geometry(self, images: Tensor, size: int, generator: torch.Generator) -> Tensor:
        """Crop (area fraction and aspect ratio), flips and rotation as one affine map per image."""
        n = images.shape[0]
        area = _uniform(n, *self.crop_scale, generator)  # (N,)
        ratio = _uniform(
            n, math.log(_ASPECT[0]), math.log(_ASPECT[1]), generator
        ).exp()  # (N,) width / height
        width = (area * ratio).sqrt()  # (N,) fraction of the image side
        height = (area / ratio).sqrt()  # (N,)
        width, height = (
            torch.where(width > 1, 1.0, width),
            torch.where(width > 1, area, height),
        )  # keep the area
        width, height = torch.where(height > 1, area, width), torch.where(height > 1, 1.0, height)
        cx = (1 - width) * _uniform(n, -1.0, 1.0, generator)  # (N,) crop centre, normalised coordinates
        cy = (1 - height) * _uniform(n, -1.0, 1.0, generator)  # (N,)
        angle = torch.deg2rad(_uniform(n, -self.rotation, self.rotation, generator))  # (N,)
        fx = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)  # (N,)
        fy = torch.where(torch.rand(n, generator=generator) < self.vflip, -1.0, 1.0)  # (N,)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos * width * fx, -sin * height * fy, cx], 1),
                torch.stack([sin * width * fx, cos * height * fy, cy], 1),
            ],
            1,
        )  # (N, 2, 3): output coordinates -> input coordinates
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)  # (N, s, s, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _intensity(self, views: Tensor, generator: torch.Generator) -> Tensor:
        """Brightness and contrast per image, then a gaussian blur (some images) and gaussian noise."""
        n, device, dtype = views.shape[0], views.device, views.dtype
        shape = (n, 1, 1, 1)
        shift = _uniform(n, -self.brightness, self.brightness, generator).view(shape)  # (N, 1, 1, 1)
        gain = _uniform(n, 1 - self.contrast, 1 + self.contrast, generator).view(shape)  # (N, 1, 1, 1)
        mean = views.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
        views = (views - mean) * gain.to(device, dtype) + mean + shift.to(device, dtype)
        blurred = torch.rand(n, generator=generator) < self.blur  # (N,)
        sigma = _uniform(n, *self.blur_sigma, generator)  # (N,)
        if self.blur > 0 and bool(blurred.any()):
            chosen = blurred.nonzero().squeeze(1)  # (n_blurred,) only these are blurred
            blur = _gaussian_blur(views[chosen.to(device)], sigma[chosen].to(device))
            views = views.index_copy(0, chosen.to(device), blur)
        if self.noise > 0:
            h, w = views.shape[-2:]
            noise = torch.randn((n, 1, h, w), generator=generator)  # (N, 1, s, s): no colour noise
            views = views + self.noise * noise.to(device, dtype)
        return views


def _gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own isotropic gaussian (separable, reflected borders).

    Args:
        images: ``(N, C, H, W)``.
        sigma: ``(N,)`` standard deviations in pixels.

    Returns:
        ``(N, C, H, W)``.
    """
    n, c, h, w = images.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)  # (k,)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None].to(images.dtype)) ** 2)  # (N, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, k)
    x = F.pad(images.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(n * c, 1, -1, 1), groups=n * c)  # (1, N * C, H, W + 2r)
    x = F.conv2d(x, kernel.view(n * c, 1, 1, -1), groups=n * c)  # (1, N * C, H, W)
    return x.view(n, c, h, w)
