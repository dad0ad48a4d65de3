"""A built-in synthetic set for offline demos and tests: textured shapes, many classes, no download.

Each class is a (shape, stripe frequency, stripe orientation) triple; each image jitters position, size,
phase, contrast and adds noise, so classes are learnable but not trivially separable. Always shown as
synthetic: its domain is ``"synthetic"`` and ``ImageDataset.synthetic`` is True.
"""

from __future__ import annotations

import numpy as np

from medmeta.data.datasets import ImageDataset

SHAPES = ("disc", "ring", "square", "cross")
FREQUENCIES = (2.0, 4.0, 7.0)
ORIENTATIONS = (0.0, np.pi / 3)
MAX_CLASSES = len(SHAPES) * len(FREQUENCIES) * len(ORIENTATIONS)  # 24


def _shape_mask(kind: str, xx: np.ndarray, yy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Masks ``(N, S, S)`` for shapes of radius `r` ``(N, 1, 1)`` centred at the origin."""
    if kind == "disc":
        return (xx**2 + yy**2 <= r**2).astype(np.float32)
    if kind == "ring":
        d = np.sqrt(xx**2 + yy**2)
        return ((d <= r) & (d >= 0.55 * r)).astype(np.float32)
    if kind == "square":
        return ((np.abs(xx) <= 0.85 * r) & (np.abs(yy) <= 0.85 * r)).astype(np.float32)
    arm = 0.35 * r
    return (((np.abs(xx) <= arm) & (np.abs(yy) <= r)) | ((np.abs(yy) <= arm) & (np.abs(xx) <= r))).astype(
        np.float32
    )


def make_synthetic(
    n_classes: int = MAX_CLASSES,
    n_per_class: int = 60,
    image_size: int = 64,
    channels: int = 3,
    seed: int = 0,
) -> ImageDataset:
    """Generate the synthetic set.

    Args:
        n_classes: 2..24 classes.
        n_per_class: images per class.
        image_size: side of the square images.
        channels: 1 or 3 (colour tints differ per class when 3).
        seed: same seed, same images.

    Returns:
        `ImageDataset` with images ``(n_classes * n_per_class, channels, image_size, image_size)`` and a
        60/20/20 train/val/test split per class.
    """
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"synthetic set has 2..{MAX_CLASSES} classes, asked for {n_classes}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    yy0, xx0 = np.meshgrid(grid, grid, indexing="ij")  # (S, S)
    images, labels, splits, names = [], [], [], []
    n = n_per_class
    for c in range(n_classes):
        shape = SHAPES[c % len(SHAPES)]
        freq = FREQUENCIES[(c // len(SHAPES)) % len(FREQUENCIES)]
        theta = ORIENTATIONS[c // (len(SHAPES) * len(FREQUENCIES))]
        names.append(f"{shape}-f{freq:g}-o{round(np.degrees(theta))}")
        cx = rng.uniform(-0.25, 0.25, (n, 1, 1)).astype(np.float32)
        cy = rng.uniform(-0.25, 0.25, (n, 1, 1)).astype(np.float32)
        r = rng.uniform(0.35, 0.6, (n, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
        contrast = rng.uniform(0.5, 1.0, (n, 1, 1)).astype(np.float32)
        xx, yy = xx0[None] - cx, yy0[None] - cy  # (n, S, S)
        mask = _shape_mask(shape, xx, yy, r)
        stripes = 0.5 + 0.5 * np.sin(np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img = 0.15 + contrast * mask * (0.35 + 0.5 * stripes)
        img += rng.normal(0.0, 0.08, img.shape).astype(np.float32)
        img = np.clip(img, 0.0, 1.0)  # (n, S, S)
        if channels == 3:
            tint = 0.75 + 0.25 * rng.random(3).astype(np.float32)
            img = img[:, None] * tint[None, :, None, None]  # (n, 3, S, S)
        else:
            img = img[:, None]  # (n, 1, S, S)
        images.append(np.rint(img * 255).astype(np.uint8))
        labels.append(np.full(n, c, dtype=np.int64))
        split = np.array(["train"] * n, dtype=object)
        perm = rng.permutation(n)
        split[perm[: round(0.2 * n)]] = "val"
        split[perm[round(0.2 * n) : round(0.4 * n)]] = "test"
        splits.append(split.astype(str))
    return ImageDataset(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=tuple(names),
        domain="synthetic",
        splits=np.concatenate(splits),
        synthetic=True,
    )
