"""`ViewFeatures`: one backbone shared by every view of a case, the views' features side by side.

Feature-level fusion: a case ``(N, V * C, H, W)`` (V views of C channels each, `medmeta.data.multiview`) is
embedded view by view with the same weights and the V feature vectors are concatenated, so any method that
works on a backbone's features (prototypes, a logistic-regression head, fine-tuning) sees the case as one
vector. Early fusion needs no module (the views are the input channels of one backbone); late fusion
combines per-view predictions (`medmeta.methods.fusion.LateFusion`).
"""

from __future__ import annotations

from torch import Tensor, nn


class ViewFeatures(nn.Module):
    """``(N, V * C, *spatial)`` -> ``(N, V * F)``: `backbone` (``(n, C, *spatial) -> (n, F)``) on each view.

    Args:
        backbone: any medmeta backbone declaring ``out_features`` F.
        views: V.
        channels: C, the backbone's input channels (one view's channels).

    Example:
        >>> import torch
        >>> from medmeta.models.pixels import RawPixels
        >>> ViewFeatures(RawPixels(in_channels=1, grid=4), views=3, channels=1)(torch.zeros(2, 3, 28, 28)).shape
        torch.Size([2, 48])
    """

    def __init__(self, backbone: nn.Module, views: int, channels: int) -> None:
        super().__init__()
        width = getattr(backbone, "out_features", None)
        if not isinstance(width, int):
            raise ValueError(
                f"{type(backbone).__name__} declares no integer out_features: it cannot be fused"
            )
        if views < 1 or channels < 1:
            raise ValueError(f"views and channels must be positive, got {views} and {channels}")
        self.backbone = backbone
        self.views, self.channels = views, channels
        self.view_features = width
        self.out_features = views * width

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if x.shape[1] != self.views * self.channels:
            raise ValueError(
                f"expected {self.views} views of {self.channels} channels ({self.views * self.channels} channels), "
                f"got {x.shape[1]}"
            )
        per_view = x.reshape(n * self.views, self.channels, *x.shape[2:])  # (N * V, C, *spatial)
        return self.backbone(per_view).reshape(n, self.out_features)  # (N, V * F)

    def extra_repr(self) -> str:
        return f"views={self.views}, channels={self.channels}, out_features={self.out_features}"
