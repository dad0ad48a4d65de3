"""The MedMNIST v2 table: class names, task, channels, and the official file names, URLs and MD5s.

Transcribed from ``medmnist/info.py`` of the medmnist package, version 3.0.2 (Zenodo record
10519652, which added the 64/128/224 sizes). The 28-pixel 2D organ sets (organ{a,c,s}mnist) were
re-released in that record, so their MD5s and sample counts differ from the medmnist 2.x table
(record 6496656); the other 28-pixel files are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from medmeta.errors import DataError

MEDMNIST_VERSION = "3.0.2"
ZENODO_FILES = "https://zenodo.org/records/10519652/files"
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


@dataclass(frozen=True)
class MedMNISTInfo:
    """One MedMNIST dataset as published.

    Attributes:
        name: official lower-case name, for example ``"bloodmnist"``.
        task: official task type: ``"multi-class"``, ``"binary-class"``, ``"ordinal-regression"`` or
            ``"multi-label, binary-class"`` (chestmnist, unusable for few-shot classification).
        class_names: the official label of each class id.
        n_channels: 1 (grey) or 3 (RGB) in the published files.
        spatial_dims: 2 for ``(N, H, W[, 3])`` images, 3 for ``(N, D, H, W)`` volumes.
        n_samples: ``(train, val, test)`` sizes.
        md5: MD5 of each file, in the order of `sizes`.
        license: licence as published.
    """

    name: str
    task: str
    class_names: tuple[str, ...]
    n_channels: int
    spatial_dims: int
    n_samples: tuple[int, int, int]
    md5: tuple[str, ...]
    license: str = "CC BY 4.0"

    @property
    def sizes(self) -> tuple[int, ...]:
        """Published image sizes: 28, 64, 128, 224 (2D) or 28, 64 (3D)."""
        return SIZES_2D if self.spatial_dims == 2 else SIZES_3D

    @property
    def multi_label(self) -> bool:
        """True when an image carries several labels at once (chestmnist)."""
        return self.task.startswith("multi-label")

    def check_size(self, size: int) -> None:
        """Raise `DataError` unless `size` is published for this dataset."""
        if size not in self.sizes:
            raise DataError(
                f"{self.name} has no size {size}: available sizes are {', '.join(str(s) for s in self.sizes)}"
            )

    def filename(self, size: int = 28) -> str:
        """Official file name: ``NAME.npz`` for size 28, ``NAME_SIZE.npz`` otherwise."""
        self.check_size(size)
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"

    def md5_for(self, size: int = 28) -> str:
        """Official MD5 of the file of `size`."""
        self.check_size(size)
        return self.md5[self.sizes.index(size)]

    def url(self, size: int = 28) -> str:
        """Official Zenodo download URL of the file of `size`."""
        return f"{ZENODO_FILES}/{self.filename(size)}?download=1"


_ORGANS_2D = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

_ENTRIES = (
    MedMNISTInfo(
        name="pathmnist",
        task="multi-class",
        class_names=(
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        n_channels=3,
        spatial_dims=2,
        n_samples=(89996, 10004, 7180),
        md5=(
            "a8b06965200029087d5bd730944a56c1",
            "55aa9c1e0525abe5a6b9d8343a507616",
            "ac42d08fb904d92c244187169d1fd1d9",
            "2c51a510bcdc9cf8ddb2af93af1eadec",
        ),
    ),
    MedMNISTInfo(
        name="chestmnist",
        task="multi-label, binary-class",
        class_names=(
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        n_channels=1,
        spatial_dims=2,
        n_samples=(78468, 11219, 22433),
        md5=(
            "02c8a6516a18b556561a56cbdd36c4a8",
            "9de6cd0b934ebb5b7426cfba5efbae16",
            "db107e5590b27930b62dbaf558aebee3",
            "45bd33e6f06c3e8cdb481c74a89152aa",
        ),
    ),
    MedMNISTInfo(
        name="dermamnist",
        task="multi-class",
        class_names=(
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        n_channels=3,
        spatial_dims=2,
        n_samples=(7007, 1003, 2005),
        md5=(
            "0744692d530f8e62ec473284d019b0c7",
            "b70a2f5635c6199aeaa28c31d7202e1f",
            "2defd784463fa5243564e855ed717de1",
            "8974907d8e169bef5f5b96bc506ae45d",
        ),
        license="CC BY-NC 4.0",
    ),
    MedMNISTInfo(
        name="octmnist",
        task="multi-class",
        class_names=("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        n_channels=1,
        spatial_dims=2,
        n_samples=(97477, 10832, 1000),
        md5=(
            "c68d92d5b585d8d81f7112f81e2d0842",
            "e229e9440236b774d9f0dfef9d07bdaf",
            "0a97e76651ace45c5d943ee3f65b63ae",
            "abc493b6d529d5de7569faaef2773ba3",
        ),
    ),
    MedMNISTInfo(
        name="pneumoniamnist",
        task="binary-class",
        class_names=("normal", "pneumonia"),
        n_channels=1,
        spatial_dims=2,
        n_samples=(4708, 524, 624),
        md5=(
            "28209eda62fecd6e6a2d98b1501bb15f",
            "8f4eceb4ccffa70c672198ea285246c6",
            "05b46931834c231683c68f40c47b2971",
            "d6a3c71de1b945ea11211b03746c1fe1",
        ),
    ),
    MedMNISTInfo(
        name="retinamnist",
        task="ordinal-regression",
        class_names=("0", "1", "2", "3", "4"),
        n_channels=3,
        spatial_dims=2,
        n_samples=(1080, 120, 400),
        md5=(
            "bd4c0672f1bba3e3a89f0e4e876791e4",
            "afda852cc34dcda56f86ad2b2457dbcc",
            "e48e916a24454daf90583d4e6efb1a18",
            "eae7e3b6f3fcbda4ae613ebdcbe35348",
        ),
    ),
    MedMNISTInfo(
        name="breastmnist",
        task="binary-class",
        class_names=("malignant", "normal, benign"),
        n_channels=1,
        spatial_dims=2,
        n_samples=(546, 78, 156),
        md5=(
            "750601b1f35ba3300ea97c75c52ff8f6",
            "742edef2a1fd1524b2efff4bd7ba9364",
            "363e4b3f8d712e9b5de15470a2aaadf1",
            "b56378a6eefa9fed602bb16d192d4c8b",
        ),
    ),
    MedMNISTInfo(
        name="bloodmnist",
        task="multi-class",
        class_names=(
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        n_channels=3,
        spatial_dims=2,
        n_samples=(11959, 1712, 3421),
        md5=(
            "7053d0359d879ad8a5505303e11de1dc",
            "2b94928a2ae4916078ca51e05b6b800b",
            "adace1e0ed228fccda1f39692059dd4c",
            "b718ff6835fcbdb22ba9eacccd7b2601",
        ),
    ),
    MedMNISTInfo(
        name="tissuemnist",
        task="multi-class",
        class_names=(
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        n_channels=1,
        spatial_dims=2,
        n_samples=(165466, 23640, 47280),
        md5=(
            "ebe78ee8b05294063de985d821c1c34b",
            "123ece2eba09d0aa5d698fda57103344",
            "61b955355d7425a89687b06cca3ce0c2",
            "b077128c4a949f0a4eb01517f9037b9c",
        ),
    ),
    MedMNISTInfo(
        name="organamnist",
        task="multi-class",
        class_names=_ORGANS_2D,
        n_channels=1,
        spatial_dims=2,
        n_samples=(34561, 6491, 17778),
        md5=(
            "68e3f8846a6bd62f0c9bf841c0d9eacc",
            "2dcccc29b88e6da5a01161ef20cda288",
            "eeae80d0a227a8d099027e1b3cfd3b60",
            "50747347e05c87dd3aaf92c49f9f3170",
        ),
    ),
    MedMNISTInfo(
        name="organcmnist",
        task="multi-class",
        class_names=_ORGANS_2D,
        n_channels=1,
        spatial_dims=2,
        n_samples=(12975, 2392, 8216),
        md5=(
            "b9ceb9546e10131b32923c5bbeaea2b1",
            "3ce34a8724ea6f548e6db4744d03b6a9",
            "773c1f009daa3fe5d9a2a201b2a7ed94",
            "050f5e875dc056f6768abf94ec9995d1",
        ),
    ),
    MedMNISTInfo(
        name="organsmnist",
        task="multi-class",
        class_names=_ORGANS_2D,
        n_channels=1,
        spatial_dims=2,
        n_samples=(13932, 2452, 8827),
        md5=(
            "9ab87b696fb54e2a387ebe992d6ed5f1",
            "53a6d115339d874c25e309a994ff46d3",
            "ded0c5fa01a95dc4978b956f613e9b8e",
            "b354719e553fbbb2513d5533f52a4cb1",
        ),
    ),
    MedMNISTInfo(
        name="organmnist3d",
        task="multi-class",
        class_names=(  # the 3D set numbers the organs differently from organ{a,c,s}mnist
            "liver",
            "kidney-right",
            "kidney-left",
            "femur-right",
            "femur-left",
            "bladder",
            "heart",
            "lung-right",
            "lung-left",
            "spleen",
            "pancreas",
        ),
        n_channels=1,
        spatial_dims=3,
        n_samples=(971, 161, 610),
        md5=("a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10"),
    ),
    MedMNISTInfo(
        name="nodulemnist3d",
        task="binary-class",
        class_names=("benign", "malignant"),
        n_channels=1,
        spatial_dims=3,
        n_samples=(1158, 165, 310),
        md5=("8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8"),
    ),
    MedMNISTInfo(
        name="adrenalmnist3d",
        task="binary-class",
        class_names=("normal", "hyperplasia"),
        n_channels=1,
        spatial_dims=3,
        n_samples=(1188, 98, 298),
        md5=("bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f"),
    ),
    MedMNISTInfo(
        name="fracturemnist3d",
        task="multi-class",
        class_names=(
            "buckle rib fracture",
            "nondisplaced rib fracture",
            "displaced rib fracture",
        ),
        n_channels=1,
        spatial_dims=3,
        n_samples=(1027, 103, 240),
        md5=("6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42"),
    ),
    MedMNISTInfo(
        name="vesselmnist3d",
        task="binary-class",
        class_names=("vessel", "aneurysm"),
        n_channels=1,
        spatial_dims=3,
        n_samples=(1335, 191, 382),
        md5=("b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f"),
    ),
    MedMNISTInfo(
        name="synapsemnist3d",
        task="binary-class",
        class_names=("inhibitory synapse", "excitatory synapse"),
        n_channels=1,
        spatial_dims=3,
        n_samples=(1230, 177, 352),
        md5=("1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e"),
    ),
)

INFO: dict[str, MedMNISTInfo] = {entry.name: entry for entry in _ENTRIES}


def info_for(name: str) -> MedMNISTInfo | None:
    """The MedMNIST entry that `name` (a dataset name or file stem) refers to, or None.

    Matches case-insensitively on the longest official name that is `name` itself or a prefix of it
    followed by ``_``, ``-`` or ``.``, so ``breastmnist_resaved``, ``adrenalmnist3d_64`` and
    ``pathmnist_224.npz`` resolve to breastmnist, adrenalmnist3d and pathmnist.
    """
    key = name.strip().lower()
    matches = [
        entry
        for official, entry in INFO.items()
        if key == official or (key.startswith(official) and key[len(official)] in "_-.")
    ]
    return max(matches, key=lambda entry: len(entry.name), default=None)


def get_info(name: str) -> MedMNISTInfo:
    """The entry of the official name `name`.

    Raises:
        DataError: `name` is not a MedMNIST v2 dataset; the message lists the valid names.
    """
    entry = INFO.get(name.strip().lower())
    if entry is None:
        raise DataError(f"unknown MedMNIST dataset '{name}': valid names are {', '.join(INFO)}")
    return entry
