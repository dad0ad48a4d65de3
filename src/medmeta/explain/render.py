"""Explanations as pictures: saliency overlays and one PNG panel per prediction (Pillow only)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medmeta.explain.explanations import Explanation

TILE = 160  # side of each picture in a panel, pixels
_HEADER = 34
_CAPTION = 28


def jet(values: np.ndarray) -> np.ndarray:
    """Map ``(H, W)`` values in ``[0, 1]`` to ``(H, W, 3)`` uint8 colours (blue = low, red = high)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)  # (H, W, 3)
    return np.rint(rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a ``(H, W)`` saliency map in ``[0, 1]`` (as colours) over a ``(H, W, 3)`` uint8 image."""
    heat = jet(saliency).astype(np.float32)
    weight = alpha * np.clip(saliency, 0.0, 1.0)[..., None]  # low saliency leaves the image visible
    out = image.astype(np.float32) * (1 - weight) + heat * weight
    return np.rint(out).clip(0, 255).astype(np.uint8)


def _tile(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.BILINEAR)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def overlay_image(expl: Explanation) -> Image.Image:
    """The saliency overlay of one explanation at tile size."""
    return _tile(overlay(expl.image, expl.saliency))


def panel(expl: Explanation) -> Image.Image:
    """One picture: the query, its saliency overlay, then its nearest support images with distances."""
    tiles = [(_tile(expl.image), "query"), (overlay_image(expl), expl.technique)]
    tiles += [(_tile(n.image), f"{n.class_name} d={n.distance:.2f}") for n in expl.neighbours]
    width = TILE * len(tiles) + 4 * (len(tiles) + 1)
    canvas = Image.new("RGB", (max(width, 360), _HEADER + TILE + _CAPTION), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), f"{Path(expl.file).name}", fill="black")
    draw.text((6, 18), f"predicted {expl.predicted} (p={expl.probability:.3f})", fill="black")
    for i, (img, caption) in enumerate(tiles):
        x = 4 + i * (TILE + 4)
        canvas.paste(img, (x, _HEADER))
        draw.text((x + 2, _HEADER + TILE + 6), caption[:26], fill="black")
    return canvas


def safe_stem(name: str) -> str:
    """A file-name-safe version of an image's name (letters, digits, ``._-``)."""
    stem = Path(name).name
    for suffix in (".nii.gz", *Path(stem).suffixes[-1:]):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"


def write_panels(explanations: Sequence[Explanation], folder: str | Path) -> list[Path]:
    """Write ``NNNN_<image name>.png`` per explanation into `folder`; returns the paths."""
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, expl in enumerate(explanations):
        path = out_dir / f"{i:04d}_{safe_stem(expl.file)}.png"
        panel(expl).save(path)
        paths.append(path)
    return paths
