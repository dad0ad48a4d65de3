"""A picture of one episode for `medmeta data show`: a row per class, support images then query images, with class names."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from medmeta.data.datasets import ImageDataset
from medmeta.tasks.episode import Episode


def _to_display(img: Tensor) -> np.ndarray:
    """uint8 ``(C, H, W)`` (or ``(C, D, H, W)``: middle slice) -> ``(H, W)`` or ``(H, W, 3)``."""
    arr = img.cpu().numpy()
    if arr.ndim == 4:
        arr = arr[:, arr.shape[1] // 2]
    if arr.shape[0] == 1:
        return arr[0]
    return arr.transpose(1, 2, 0)


def save_episode_grid(episode: Episode, dataset: ImageDataset, out: str | Path, max_query: int = 5) -> Path:
    """Write `episode` as a PNG grid.

    Args:
        episode: uint8 episode from an `EpisodeSampler` over `dataset`.
        dataset: gives the class names and the (synthetic) domain label.
        out: PNG path.
        max_query: query images shown per class.
    """
    n_way = episode.n_way
    support = [episode.support_images[episode.support_labels == c] for c in range(n_way)]
    query = [episode.query_images[episode.query_labels == c][:max_query] for c in range(n_way)]
    n_s, n_q = support[0].shape[0], query[0].shape[0]
    cols = n_s + n_q
    fig, axes = plt.subplots(n_way, cols, figsize=(1.3 * cols + 1.5, 1.3 * n_way + 0.6), squeeze=False)
    for c in range(n_way):
        name = dataset.class_names[int(episode.class_ids[c])]
        for j in range(cols):
            ax = axes[c][j]
            img = support[c][j] if j < n_s else query[c][j - n_s]
            shown = _to_display(img)
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title("support" if j < n_s else "query", fontsize=8)
        axes[c][0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"{dataset.display_name}: {n_way}-way {n_s}-shot episode", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
