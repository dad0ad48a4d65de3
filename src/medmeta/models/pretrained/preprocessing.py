"""The eval-time preprocessing a pretrained network was trained with, as one small JSON-safe record.

Every library states it differently (timm's data config, open_clip's ``preprocess_cfg``, a Hugging Face image
processor); `Preprocessing` holds the common part (resize, center crop, scale to [0, 1], normalise) and applies
it to image tensors with the resampler and crop offsets the library itself uses, so the network sees the input
it was trained on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from medmeta.errors import ConfigError

Interpolation = Literal["bilinear", "bicubic", "nearest"]
ResizeMode = Literal["shortest", "squash"]
CropOffset = Literal["round", "floor"]
Resampler = Literal["pil", "torch"]
GreyPolicy = Literal["repeat"]
_CHOICES: dict[str, tuple[str, ...]] = {
    "interpolation": get_args(Interpolation),
    "resize_mode": get_args(ResizeMode),
    "crop_offset": get_args(CropOffset),
    "resampler": get_args(Resampler),
    "grey": get_args(GreyPolicy),
}
_FIELDS = (
    "size", "resize", "mean", "std", "in_channels", "interpolation", "grey", "resize_mode", "crop_offset", "resampler"
)  # fmt: skip
# PIL's resampling codes, as Hugging Face image processors store them
_PIL_CODES: dict[int, str] = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_DEFAULT_TIMM_CROP_PCT = 0.875  # what timm's eval transform uses when a config leaves crop_pct unset


@dataclass(frozen=True)
class Preprocessing:
    """Resize, center-crop `size`, scale to [0, 1], normalise per channel: a library's eval transform.

    Args:
        size: side of the square the network takes.
        resize: side the image is resized to before the center crop (``size / crop_pct``; equals `size`
            when the whole image is kept).
        mean: per-channel mean subtracted after scaling to [0, 1], one per network input channel.
        std: per-channel standard deviation divided by, one per network input channel.
        in_channels: channels the network takes (usually 3).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (antialiased when shrinking).
        grey: how channels are matched, ``"repeat"``: a 1-channel image is repeated to 3 channels (what
            ``PIL.Image.convert("RGB")`` does), a 3-channel image given to a 1-channel network becomes its
            ITU-R 601 luminance (what ``convert("L")`` does).
        resize_mode: ``"shortest"`` resizes the short side to `resize` keeping the aspect ratio (timm's
            ``center`` crop mode, open_clip's ``shortest``, HF ``shortest_edge``); ``"squash"`` resizes both
            sides to `resize`.
        crop_offset: the crop's top-left corner, ``"round"`` (``round((H - size) / 2)``, torchvision's, so timm
            and open_clip) or ``"floor"`` (``(H - size) // 2``, Hugging Face image processors').
        resampler: what resizes uint8 images: ``"pil"`` (PIL, as timm's and open_clip's transforms on PIL
            images) or ``"torch"`` (``torch.nn.functional.interpolate`` on uint8, as HF's torchvision
            backend). Float images are always resized with torch.

    Example:
        >>> prep = Preprocessing(size=4, resize=5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        >>> prep(torch.zeros(2, 1, 9, 7, dtype=torch.uint8)).shape
        torch.Size([2, 3, 4, 4])
    """

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3
    interpolation: Interpolation = "bicubic"
    grey: GreyPolicy = "repeat"
    resize_mode: ResizeMode = "shortest"
    crop_offset: CropOffset = "round"
    resampler: Resampler = "pil"

    def __post_init__(self) -> None:
        for name in ("size", "resize", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"preprocessing {name} must be a positive integer, got {value!r}")
        if self.resize < self.size:
            raise ConfigError(f"preprocessing resize ({self.resize}) must be >= the crop size ({self.size})")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.in_channels:
                raise ConfigError(
                    f"preprocessing {name} must be a tuple of {self.in_channels} numbers "
                    f"(one per input channel), got {values!r}"
                )
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ConfigError(f"preprocessing {name} must be finite numbers, got {values!r}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive, got {self.std!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"preprocessing {name} '{getattr(self, name)}' is not one of {', '.join(choices)}"
                )

    # ---- JSON ----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field (lists for the tuples)."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: a missing or unknown key, or a value out of range (one line naming it).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"preprocessing must be a mapping of {', '.join(_FIELDS)}, got {type(data).__name__}"
            )
        missing = [k for k in _FIELDS if k not in data]
        unknown = sorted(set(data) - set(_FIELDS))
        if missing or unknown:
            raise ConfigError(
                f"preprocessing keys: missing {missing or 'none'}, unknown {unknown or 'none'}; "
                f"expected exactly {', '.join(_FIELDS)}"
            )
        for name in ("mean", "std"):
            if not isinstance(data[name], list | tuple):
                raise ConfigError(f"preprocessing {name} must be a list of numbers, got {data[name]!r}")
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    # ---- from each library's own description ---------------------------------------------------------------

    @classmethod
    def from_timm(cls, cfg: Mapping[str, Any]) -> Preprocessing:
        """From a timm data config (``timm.data.resolve_model_data_config(model)``), as ``create_transform``.

        Raises:
            ConfigError: crop mode ``border``, a non-square input or an unsupported interpolation.
        """
        channels, height, width = (int(v) for v in cfg["input_size"])
        if height != width:
            raise ConfigError(
                f"timm input_size {tuple(cfg['input_size'])} is not square; only square inputs are supported"
            )
        crop_mode = cfg.get("crop_mode") or "center"
        if crop_mode not in ("center", "squash"):
            raise ConfigError(f"timm crop_mode '{crop_mode}' is not supported; only 'center' or 'squash'")
        crop_pct = float(cfg.get("crop_pct") or _DEFAULT_TIMM_CROP_PCT)
        return cls(
            size=height,
            resize=math.floor(height / crop_pct),
            mean=_per_channel(cfg["mean"], channels),
            std=_per_channel(cfg["std"], channels),
            in_channels=channels,
            interpolation=_interpolation(cfg.get("interpolation") or "bilinear", "timm"),
            resize_mode="squash" if crop_mode == "squash" else "shortest",
        )

    @classmethod
    def from_open_clip(cls, preprocess_cfg: Any) -> Preprocessing:
        """From open_clip's ``preprocess_cfg`` (the dict in ``open_clip_config.json`` or a ``PreprocessCfg``).

        Raises:
            ConfigError: resize mode ``longest``, a non-square size, or no size, mean or std.
        """
        is_dataclass = dataclasses.is_dataclass(preprocess_cfg) and not isinstance(preprocess_cfg, type)
        cfg = dataclasses.asdict(preprocess_cfg) if is_dataclass else preprocess_cfg
        if not isinstance(cfg, Mapping) or any(cfg.get(k) is None for k in ("size", "mean", "std")):
            raise ConfigError(f"open_clip preprocess_cfg must give size, mean and std, got {cfg!r}")
        size = cfg["size"]
        if isinstance(size, list | tuple):
            if len(set(size)) != 1:
                raise ConfigError(
                    f"open_clip image size {tuple(size)} is not square; only square inputs are supported"
                )
            size = size[0]
        resize_mode = cfg.get("resize_mode") or "shortest"
        if resize_mode not in ("shortest", "squash"):
            raise ConfigError(
                f"open_clip resize_mode '{resize_mode}' is not supported; only 'shortest' or 'squash'"
            )
        return cls(
            size=int(size),
            resize=int(size),
            mean=_per_channel(cfg["mean"], 3),
            std=_per_channel(cfg["std"], 3),
            in_channels=3,
            interpolation=_interpolation(cfg.get("interpolation") or "bicubic", "open_clip"),
            resize_mode=cast(ResizeMode, resize_mode),
        )

    @classmethod
    def from_hf(cls, image_processor: Any) -> Preprocessing:
        """From a Hugging Face image processor that resizes then center-crops (DINOv2's ``BitImageProcessor``).

        Raises:
            ConfigError: a size other than ``{"shortest_edge": N}`` or a square ``{"height", "width"}``, a
                non-square crop, or a rescale factor other than 1/255.
        """
        proc = image_processor
        name = type(proc).__name__
        size = {k: v for k, v in dict(getattr(proc, "size", None) or {}).items() if v is not None}
        if getattr(proc, "do_resize", True) and set(size) == {"shortest_edge"}:
            resize, resize_mode = int(size["shortest_edge"]), "shortest"
        elif (
            getattr(proc, "do_resize", True)
            and set(size) == {"height", "width"}
            and size["height"] == size["width"]
        ):
            resize, resize_mode = int(size["height"]), "squash"
        else:
            raise ConfigError(
                f"{name} size {size} is not supported; only {{'shortest_edge': N}} or a square {{'height', 'width'}}"
            )
        crop = resize
        if getattr(proc, "do_center_crop", False):
            crop_size = {k: v for k, v in dict(proc.crop_size).items() if v is not None}
            if crop_size.get("height") != crop_size.get("width"):
                raise ConfigError(
                    f"{name} crop_size {crop_size} is not square; only square crops are supported"
                )
            crop = int(crop_size["height"])
        if getattr(proc, "do_rescale", True) and not math.isclose(float(proc.rescale_factor), 1 / 255):
            raise ConfigError(
                f"{name} rescale_factor {proc.rescale_factor} is not 1/255; only 8-bit scaling is supported"
            )
        normalize = getattr(proc, "do_normalize", True)
        mean = proc.image_mean if normalize else 0.0
        std = proc.image_std if normalize else 1.0
        channels = 3 if getattr(proc, "do_convert_rgb", None) or len(_as_list(mean)) != 1 else 1
        return cls(
            size=crop,
            resize=resize,
            mean=_per_channel(mean, channels),
            std=_per_channel(std, channels),
            in_channels=channels,
            interpolation=_interpolation(getattr(proc, "resample", 3), name),
            resize_mode=cast(ResizeMode, resize_mode),
            crop_offset="floor",
            resampler="torch" if getattr(proc, "backend", "pil") == "torchvision" else "pil",
        )

    # ---- applying it ---------------------------------------------------------------------------------------

    def __call__(self, images: Tensor) -> Tensor:
        """Preprocess a batch the way the library's eval transform does.

        Args:
            images: ``(N, C, H, W)``, uint8 in [0, 255] or float in [0, 1]; C is `in_channels`, or 1 (repeated)
                for a 3-channel network, or 3 (luminance) for a 1-channel network.

        Returns:
            ``(N, in_channels, size, size)`` float32, normalised.

        Raises:
            ValueError: not a 4-d tensor, or a channel count the grey policy cannot match.
            TypeError: a dtype other than uint8 or floating point.
        """
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"preprocessing expects images (N, C, H, W), got {shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(
                f"preprocessing expects uint8 in [0, 255] or float in [0, 1] images, got {images.dtype}"
            )
        x = images if images.dtype == torch.uint8 else images.float()
        channels = x.shape[1]
        repeat = channels == 1 and self.in_channels == 3
        if channels == 3 and self.in_channels == 1:
            x = _luminance(x)  # (N, 1, H, W)
        elif channels != self.in_channels and not repeat:
            raise ValueError(
                f"preprocessing cannot match {channels}-channel images to a {self.in_channels}-channel network; "
                "give 1- or 3-channel images"
            )
        height, width = x.shape[-2:]
        if self.resize_mode == "squash":
            target = (self.resize, self.resize)
        else:
            target = _short_side_to(height, width, self.resize)
        x = self._resize(x, target)  # (N, c, *target)
        x = _center_crop(x, self.size, self.crop_offset)  # (N, c, size, size)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        if repeat:
            x = x.expand(-1, 3, -1, -1)  # (N, 3, size, size)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std  # (N, in_channels, size, size)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, *size)``; uint8 stays uint8 (8-bit resampling, as the libraries')."""
        if tuple(x.shape[-2:]) == size:
            return x
        if x.dtype == torch.uint8 and self.resampler == "pil":
            return _pil_resize(x, size, self.interpolation)
        if self.interpolation == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if x.dtype == torch.uint8 and x.device.type == "cpu":
            return F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
        if x.dtype == torch.uint8:
            out = F.interpolate(
                x.float(), size=size, mode=self.interpolation, align_corners=False, antialias=True
            )
            return out.round_().clamp_(0, 255).to(torch.uint8)
        out = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)
        return out.clamp_(0.0, 1.0)


def _as_list(values: Any) -> list[float]:
    if isinstance(values, int | float):
        return [float(values)]
    return [float(v) for v in values]


def _per_channel(values: Any, channels: int) -> tuple[float, ...]:
    """One value per channel; a single value is repeated (timm and HF accept a scalar mean)."""
    out = _as_list(values)
    if len(out) == 1:
        out = out * channels
    if len(out) != channels:
        raise ConfigError(f"{len(out)} normalisation values {out} for a {channels}-channel network")
    return tuple(out)


def _interpolation(value: Any, source: str) -> Interpolation:
    """Name of a timm/open_clip interpolation string, PIL resampling code or torchvision mode."""
    if isinstance(value, int) and not isinstance(value, bool):
        name = _PIL_CODES.get(int(value), str(value))
    else:
        name = str(getattr(value, "value", value)).lower()
    if name not in _CHOICES["interpolation"]:
        raise ConfigError(
            f"{source} interpolation '{value}' is not supported; use one of {', '.join(_CHOICES['interpolation'])}"
        )
    return cast(Interpolation, name)


def _short_side_to(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) once the short side is `side`, the long side truncated (torchvision's and HF's rule)."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def _pil_resize(x: Tensor, size: tuple[int, int], interpolation: Interpolation) -> Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, C, *size)`` uint8 with PIL, one 8-bit band at a time."""
    arrays = x.cpu().numpy()
    height, width = size
    out = np.empty((*arrays.shape[:2], height, width), dtype=np.uint8)
    for n in range(arrays.shape[0]):
        for c in range(arrays.shape[1]):
            band = Image.fromarray(np.ascontiguousarray(arrays[n, c]))
            out[n, c] = np.asarray(band.resize((width, height), _PIL_FILTERS[interpolation]))
    return torch.from_numpy(out).to(x.device)


def _center_crop(x: Tensor, size: int, offset: CropOffset) -> Tensor:
    """Center crop of side `size`; the corner is rounded (torchvision) or floored (Hugging Face)."""
    height, width = x.shape[-2:]
    if offset == "round":
        top, left = round((height - size) / 2), round((width - size) / 2)
    else:
        top, left = (height - size) // 2, (width - size) // 2
    return x[..., top : top + size, left : left + size]


def _luminance(x: Tensor) -> Tensor:
    """``(N, 3, H, W)`` -> ``(N, 1, H, W)`` ITU-R 601 luminance; uint8 with PIL's fixed-point rounding."""
    if x.dtype == torch.uint8:
        r, g, b = x.int().unbind(1)
        lum = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        return lum.to(torch.uint8).unsqueeze(1)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)
