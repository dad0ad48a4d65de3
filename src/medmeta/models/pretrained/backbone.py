"""`PretrainedBackbone`: a library's network behind medmeta's backbone contract.

``(N, in_channels, size, size)`` preprocessed images -> ``(N, out_features)`` pooled features, with the
preprocessing the weights were trained with and a record of what was loaded.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from medmeta.models.pretrained.preprocessing import Preprocessing
from medmeta.models.pretrained.spec import BackboneSpec


class PretrainedBackbone(nn.Module):
    """A pretrained feature extractor from timm, open_clip or Hugging Face transformers.

    Built by `load_backbone`; returned in eval mode (call ``.train()`` to fine-tune). Its parameters are the
    library network's, under ``network.``, so ``torch.func.functional_call`` and optimisers see them as usual.

    Args:
        network: module mapping ``(N, in_channels, size, size)`` to ``(N, out_features)``.
        out_features: width of the features.
        preprocessing: what turns raw images into the network's input (`Preprocessing.__call__`).
        spec: the library and name it was loaded as.
        source: JSON-safe record of what was loaded: library, name, version, path, sha256 per weight file.

    Example:
        >>> backbone = load_backbone("timm:resnet18", pretrained=False)  # doctest: +SKIP
        >>> backbone(backbone.preprocessing(images_uint8)).shape  # doctest: +SKIP
        torch.Size([N, 512])
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        out_features: int,
        preprocessing: Preprocessing,
        spec: BackboneSpec,
        source: dict[str, Any],
    ) -> None:
        super().__init__()
        self.network = network
        self.out_features = out_features
        self.preprocessing = preprocessing
        self.spec = spec
        self.source = copy.deepcopy(source)
        self.eval()  # pretrained features: dropout off, batch-norm statistics as trained

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features.

        Args:
            x: ``(N, in_channels, H, W)`` preprocessed images (``H = W = preprocessing.size`` as trained).

        Returns:
            ``(N, out_features)``.

        Raises:
            ValueError: not ``(N, in_channels, H, W)``.
        """
        channels = self.preprocessing.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"{self.spec} expects preprocessed images (N, {channels}, H, W), got {tuple(x.shape)}; "
                "apply backbone.preprocessing(images) first"
            )
        return self.network(x)  # (N, out_features)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, out_features={self.out_features}"
