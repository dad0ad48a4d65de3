"""`PretrainedFeatures`: a pretrained network behind medmeta's backbone contract and input convention.

medmeta's episodes reach every backbone as ``(N, C, H, W)`` images normalised with the run's
`medmeta.data.transforms.Normalization` (``(x / 255 - mean) / std``, ``C`` = ``data.channels``). A pretrained
network wants what its weights were trained with. This module undoes the run's normalisation (back to
``[0, 1]``), then applies the weights' own `Preprocessing` (grey repeated to RGB or RGB to luminance,
resize, centre crop, the weights' mean/std) and runs the network, so the preprocessing travels with the
backbone: in training, evaluation, checkpoints, deployment and ONNX export alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.preprocessing import Preprocessing


class PretrainedFeatures(nn.Module):
    """``(N, C, H, W)`` run-normalised images -> ``(N, out_features)`` features of a pretrained network.

    Args:
        backbone: the loaded network (`medmeta.models.pretrained.load_backbone`).
        input_mean: the run's normalisation mean per input channel.
        input_std: the run's normalisation std per input channel.

    Example:
        >>> net = load_backbone("timm:resnet18", pretrained=False)  # doctest: +SKIP
        >>> features = PretrainedFeatures(net, (0.5,), (0.25,))  # doctest: +SKIP
        >>> features(torch.randn(2, 1, 64, 64)).shape  # doctest: +SKIP
        torch.Size([2, 512])
    """

    def __init__(
        self, backbone: PretrainedBackbone, input_mean: tuple[float, ...], input_std: tuple[float, ...]
    ) -> None:
        super().__init__()
        if len(input_mean) != len(input_std) or len(input_mean) not in (1, 3):
            raise ValueError(f"input normalisation must have 1 or 3 channels, got {input_mean} / {input_std}")
        self.backbone = backbone
        self.out_features = backbone.out_features
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing

    def forward(self, x: Tensor) -> Tensor:
        """Features of run-normalised images.

        Args:
            x: ``(N, C, H, W)`` float, normalised with the run's mean/std (``C`` = len(input_mean)).

        Returns:
            ``(N, out_features)``.

        Raises:
            ValueError: not ``(N, C, H, W)`` with the run's channel count (3-D volumes included).
        """
        channels = len(self.input_mean)
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{self.backbone.spec} takes 2-D images (N, {channels}, H, W), got {tuple(x.shape)}: "
                "pretrained backbones do not take 3-D volumes; use conv4 or resnet12 for those"
            )
        shape = (1, channels, 1, 1)
        mean = torch.tensor(self.input_mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.input_std, dtype=x.dtype, device=x.device).view(shape)
        unit = (x * std + mean).clamp(0.0, 1.0)  # (N, C, H, W) in [0, 1]
        return self.backbone(self.backbone.preprocessing(unit))  # (N, out_features)

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this backbone and show where it came from."""
        return {
            "spec": str(self.backbone.spec),
            "preprocessing": self.backbone.preprocessing.to_dict(),
            "source": dict(self.backbone.source),
        }

    def extra_repr(self) -> str:
        return f"input_mean={self.input_mean}, input_std={self.input_std}"
