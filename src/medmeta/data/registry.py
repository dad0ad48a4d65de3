"""Find datasets by name or path under the data root, and select splits and classes from them.

Names resolve, in order, to: the built-in ``synthetic`` set; ``ROOT/classification/NAME`` or ``ROOT/NAME``
folders; MedMNIST files ``ROOT/medmnist/NAME[_SIZE][_*].npz``; with ``download=True``, an official
MedMNIST download. Anything with a path separator (or that exists) is read as a folder or ``.npz`` path.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medmeta.data.datasets import ImageDataset
from medmeta.data.folder import load_image_folder
from medmeta.data.root import data_root
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import DataError

SYNTHETIC = "synthetic"
# folders of the data root that hold datasets of other tasks or formats, not a class-folder dataset
_CONTAINERS = frozenset({"classification", "medmnist", "segmentation", "detection"})
_SPEC = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<split>[A-Za-z]+))?(?::(?P<classes>.+))?$")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset found under the data root."""

    name: str
    kind: str  # "folder", "medmnist", "builtin"
    path: Path | None


def list_datasets(root: str | Path | None = None) -> list[DatasetEntry]:
    """Every dataset under the data root, plus the built-in synthetic set."""
    base = data_root(root)
    found: list[DatasetEntry] = []
    for parent in (base / "classification", base):
        if parent.is_dir():
            for d in sorted(parent.iterdir()):
                if d.name in _CONTAINERS or d.name.startswith(".") or not d.is_dir():
                    continue
                if _looks_like_image_folder(d):
                    found.append(DatasetEntry(d.name, "folder", d))
    med = base / "medmnist"
    if med.is_dir():
        for f in sorted(med.glob("*.npz")):
            found.append(DatasetEntry(f.stem, "medmnist", f))
    found.append(DatasetEntry(SYNTHETIC, "builtin", None))
    return found


def _looks_like_image_folder(d: Path) -> bool:
    """True for ``d/CLASS/<images>`` or ``d/{train,val,test}/CLASS/<images>`` (first few entries checked)."""
    from medmeta.data.folder import SPLIT_NAMES
    from medmeta.data.readers import is_image_file

    def has_images(folder: Path) -> bool:
        return any(is_image_file(f) for f in sorted(folder.iterdir())[:8])

    subs = [s for s in sorted(d.iterdir()) if s.is_dir() and not s.name.startswith(".")]
    if subs and all(s.name in SPLIT_NAMES for s in subs):
        return any(has_images(c) for s in subs for c in sorted(s.iterdir())[:4] if c.is_dir())
    return sum(has_images(s) for s in subs[:8]) >= 2  # at least two class folders


def resolve(name_or_path: str, root: str | Path | None = None) -> DatasetEntry:
    """Find a dataset by registered name or path.

    Raises:
        DataError: nothing of that name is found; the message lists what is available.
    """
    if name_or_path == SYNTHETIC:
        return DatasetEntry(SYNTHETIC, "builtin", None)
    as_path = Path(name_or_path).expanduser()
    if as_path.exists() or "/" in name_or_path or name_or_path.endswith(".npz"):
        if not as_path.exists():
            raise DataError(f"{as_path} does not exist: check the path")
        kind = "medmnist" if as_path.suffix == ".npz" else "folder"
        return DatasetEntry(as_path.stem if kind == "medmnist" else as_path.name, kind, as_path)
    entries = list_datasets(root)
    for e in entries:
        if e.name == name_or_path:
            return e
    prefixed = [e for e in entries if e.kind == "medmnist" and e.name.startswith(name_or_path + "_")]
    if prefixed:
        return prefixed[0]
    names = ", ".join(e.name for e in entries)
    raise DataError(
        f"unknown dataset '{name_or_path}' under {data_root(root)}; available: {names}. "
        "Set MEDMETA_DATA or --data-dir to the data folder, or give a folder path"
    )


@lru_cache(maxsize=8)
def _load_cached(
    kind: str, path: str | None, name: str, image_size: int, channels: int, skip_bad: bool
) -> ImageDataset:
    if kind == "builtin":
        return make_synthetic(image_size=image_size, channels=channels)
    assert path is not None
    if kind == "medmnist":
        from medmeta.data.medmnist import load_medmnist_npz

        return load_medmnist_npz(Path(path), domain=name, channels=channels, image_size=image_size)
    return load_image_folder(
        Path(path), domain=name, image_size=image_size, channels=channels, skip_bad=skip_bad
    )


def load_dataset(
    name_or_path: str,
    *,
    root: str | Path | None = None,
    image_size: int = 64,
    channels: int = 3,
    skip_bad: bool = False,
) -> ImageDataset:
    """Load a dataset by name or path at ``(channels, image_size, image_size)``.

    Results are cached in memory per (dataset, size, channels), so repeated loads are free.
    """
    entry = resolve(name_or_path, root)
    return _load_cached(
        entry.kind,
        None if entry.path is None else str(entry.path.resolve()),
        entry.name,
        image_size,
        channels,
        skip_bad,
    )


def _parse_classes(text: str, spec: str) -> tuple[str, ...]:
    """``a,b`` or, for names holding a comma, ``"a, b",c`` (CSV quoting) -> class names."""
    try:
        (fields,) = list(csv.reader([text], skipinitialspace=True, strict=True))
    except (csv.Error, ValueError):
        raise DataError(
            f"cannot read the classes of dataset spec '{spec}': separate them with commas and put a name "
            'holding a comma in double quotes, e.g. NAME:"class, one",class2'
        ) from None
    return tuple(f.strip() for f in fields if f.strip())


@dataclass(frozen=True)
class DomainSpec:
    """A dataset plus an optional split and class selection, written ``NAME[@SPLIT][:CLASS,CLASS,...]``.

    Examples: ``blood_pbc:basophil,eosinophil``, ``brain_tumor_mri@test``, ``../my_folder``,
    ``my_folder:"nevus, atypical",melanoma`` (a class name holding a comma, in double quotes).
    """

    name: str
    split: str | None = None
    classes: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> DomainSpec:
        m = _SPEC.match(text.strip())
        if m is None or not m.group("name"):
            raise DataError(f"cannot read dataset spec '{text}': write NAME[@SPLIT][:CLASS,CLASS,...]")
        classes = m.group("classes")
        return cls(
            name=m.group("name"),
            split=m.group("split"),
            classes=_parse_classes(classes, text) if classes else None,
        )

    def __str__(self) -> str:
        out = self.name
        if self.split:
            out += f"@{self.split}"
        if self.classes:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(self.classes)  # quotes names holding a comma
            out += ":" + buf.getvalue()
        return out

    def load(
        self,
        *,
        root: str | Path | None = None,
        image_size: int = 64,
        channels: int = 3,
        skip_bad: bool = False,
        exclude_classes: tuple[str, ...] = (),
        dedupe: bool = False,
    ) -> ImageDataset:
        """Load the dataset and apply the split, class selection and `exclude_classes`.

        `dedupe`: first keep one image per near-duplicate group (`medmeta.data.near_duplicates.dedupe`;
        the training copy when a group spans splits), so a test split holds no near-copy of training.
        """
        ds = load_dataset(self.name, root=root, image_size=image_size, channels=channels, skip_bad=skip_bad)
        if dedupe:
            from medmeta.data.near_duplicates import dedupe as drop_near_duplicates

            ds = drop_near_duplicates(ds)
        if self.split:
            ds = ds.select_split(self.split)
        if self.classes:
            ds = ds.select_classes(self.classes)
        if exclude_classes:
            keep = [c for c in ds.class_names if c not in exclude_classes]
            if not keep:
                raise DataError(f"{self}: excluding {list(exclude_classes)} leaves no class")
            ds = ds.select_classes(keep)
        return ds
