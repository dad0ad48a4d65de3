"""MedMNIST: the table, reading ``.npz`` files, and downloads from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medmeta.data.medmnist import (
    BASE_URL_ENV,
    INFO,
    download_medmnist,
    info_for,
    load_medmnist_npz,
)
from medmeta.errors import DataError

SHARED_DATA = Path(os.environ.get("MEDMETA_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
MEDMNIST_DIR = SHARED_DATA / "medmnist"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def real_file(name: str) -> Path:
    path = MEDMNIST_DIR / name
    if not path.is_file():
        pytest.skip(f"real data not found at {path}: set MEDMETA_DATA")
    return path


# --- a loopback HTTP server with Range support that can misbehave on request -------------------


@dataclass
class ServerState:
    folder: Path
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        target = state.folder / self.path.split("?")[0].lstrip("/")
        if not target.is_file():
            self.send_error(404)
            return
        data = target.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and state.honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_after is not None:
            body = body[: state.cut_after]
            state.cut_after = None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Server:
    url: str
    state: ServerState

    def serve(self, content: bytes, filename: str) -> None:
        (self.state.folder / filename).write_bytes(content)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    state = ServerState(folder)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def synthetic_npz(path: Path, *, n: int = 12, shape: tuple[int, ...] = (28, 28)) -> bytes:
    """A small file in the official layout; returns its bytes."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).astype(np.uint8)[:, None]
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


@pytest.fixture
def payload(tmp_path: Path) -> bytes:
    """Bytes of a synthetic MedMNIST file, large enough to be sent in several chunks."""
    return synthetic_npz(tmp_path / "synthetic.npz", n=3000)


def download(
    server: Server,
    root: Path,
    name: str = "bloodmnist",
    size: int = 28,
    expected_md5: str | None = None,
) -> Path:
    """`download_medmnist` from the test server, quietly and with a short timeout."""
    return download_medmnist(
        name,
        size,
        root=root,
        base_url=server.url,
        progress=False,
        timeout=5,
        expected_md5=expected_md5,
    )


# --- the table ---------------------------------------------------------------------------------


def test_table_lists_every_medmnist_v2_dataset_with_a_checksum_per_size() -> None:
    assert len(INFO) == 18
    assert sum(e.spatial_dims == 2 for e in INFO.values()) == 12
    for entry in INFO.values():
        assert entry.sizes == ((28, 64, 128, 224) if entry.spatial_dims == 2 else (28, 64))
        assert len(entry.md5) == len(entry.sizes)
        assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in entry.md5)
        assert entry.n_channels in (1, 3)
    assert len({m for e in INFO.values() for m in e.md5}) == sum(len(e.md5) for e in INFO.values())


def test_official_file_names_and_urls_follow_the_zenodo_record() -> None:
    blood = INFO["bloodmnist"]
    assert blood.filename(28) == "bloodmnist.npz"
    assert blood.filename(224) == "bloodmnist_224.npz"
    assert blood.url(64) == "https://zenodo.org/records/10519652/files/bloodmnist_64.npz?download=1"
    assert INFO["adrenalmnist3d"].md5_for(28) == "bbd3c5a5576322bc4cdfea780653b1ce"


def test_chestmnist_is_marked_multi_label() -> None:
    assert INFO["chestmnist"].multi_label
    assert not any(e.multi_label for n, e in INFO.items() if n != "chestmnist")


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("breastmnist_resaved", "breastmnist"),
        ("pneumoniamnist_modified", "pneumoniamnist"),
        ("adrenalmnist3d_64", "adrenalmnist3d"),
        ("OrganMNIST3D", "organmnist3d"),
        ("organamnist_128", "organamnist"),
        ("pathmnist.npz", "pathmnist"),
    ],
)
def test_info_for_maps_a_file_stem_to_its_dataset_by_prefix(stem: str, expected: str) -> None:
    entry = info_for(stem)
    assert entry is not None and entry.name == expected


@pytest.mark.parametrize("stem", ["blood_pbc", "bloodmnistx", "mnist", ""])
def test_info_for_returns_none_for_other_names(stem: str) -> None:
    assert info_for(stem) is None


# --- reading .npz files ------------------------------------------------------------------------


def test_a_synthetic_file_of_unknown_name_gets_generic_class_names_and_splits(
    tmp_path: Path,
) -> None:
    synthetic_npz(tmp_path / "mine.npz", n=10, shape=(33, 34))
    ds = load_medmnist_npz(tmp_path / "mine.npz", domain="mine", channels=1)
    assert ds.images.shape == (20, 1, 33, 34)
    assert ds.class_names == ("class_0", "class_1", "class_2")
    assert ds.splits is not None and ds.splits.tolist()[:11] == ["train"] * 10 + ["val"]
    assert ds.labels.dtype == np.int64


def test_an_unknown_four_dimensional_file_is_read_as_volumes(tmp_path: Path) -> None:
    synthetic_npz(tmp_path / "vol.npz", n=4, shape=(7, 8, 9))
    ds = load_medmnist_npz(tmp_path / "vol.npz", domain="vol", channels=3, image_size=10)
    assert ds.images.shape == (8, 3, 10, 10, 10)
    assert ds.spatial_dims == 3


def test_rgb_images_keep_their_colour_channels(tmp_path: Path) -> None:
    synthetic_npz(tmp_path / "rgb.npz", n=4, shape=(9, 9, 3))
    ds = load_medmnist_npz(tmp_path / "rgb.npz", domain="rgb", class_names=["a", "b", "c"])
    assert ds.images.shape == (8, 3, 9, 9)
    assert ds.class_names == ("a", "b", "c")


def test_a_truncated_npz_raises_a_data_error_saying_to_download_again(tmp_path: Path) -> None:
    data = synthetic_npz(tmp_path / "full.npz", n=200)
    (tmp_path / "bloodmnist.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bloodmnist\.npz.*delete it and download again"):
        load_medmnist_npz(tmp_path / "bloodmnist.npz", domain="bloodmnist")


def test_a_file_that_is_not_a_zip_raises_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match=r"junk\.npz is not a readable \.npz"):
        load_medmnist_npz(tmp_path / "junk.npz", domain="junk")


def test_a_file_missing_official_keys_names_the_expected_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "odd.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"lacks train_images.*expected keys train_images"):
        load_medmnist_npz(tmp_path / "odd.npz", domain="odd")


def test_a_missing_file_raises_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_medmnist_npz(tmp_path / "nope.npz", domain="nope")


def test_images_and_labels_of_different_lengths_raise_a_data_error(tmp_path: Path) -> None:
    arrays = {f"{s}_images": np.zeros((3, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((3, 1), np.uint8) for s in ("train", "val", "test")}
    arrays["val_labels"] = np.zeros((2, 1), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="val_images holds 3 images but val_labels holds 2"):
        load_medmnist_npz(tmp_path / "bad.npz", domain="bad")


def test_chestmnist_is_refused_for_few_shot_classification(tmp_path: Path) -> None:
    synthetic_npz(tmp_path / "chestmnist.npz", n=4)
    with pytest.raises(DataError, match=r"multi-label.*one label per image"):
        load_medmnist_npz(tmp_path / "chestmnist.npz", domain="chestmnist")


def test_multi_label_labels_are_refused_whatever_the_file_name(tmp_path: Path) -> None:
    arrays = {f"{s}_images": np.zeros((3, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((3, 14), np.uint8) for s in ("train", "val", "test")}
    np.savez(tmp_path / "xray.npz", **arrays)
    with pytest.raises(DataError, match="multi-label"):
        load_medmnist_npz(tmp_path / "xray.npz", domain="xray")


@pytest.mark.data
def test_breastmnist_resaved_with_flat_labels_loads_with_official_splits_and_names() -> None:
    ds = load_medmnist_npz(real_file("breastmnist_resaved.npz"), domain="breastmnist_resaved")
    assert ds.images.shape == (780, 3, 28, 28)
    assert ds.class_names == ("malignant", "normal, benign")
    assert ds.splits is not None
    assert [int((ds.splits == s).sum()) for s in ("train", "val", "test")] == [546, 78, 156]
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == {0, 1}


@pytest.mark.data
def test_pneumoniamnist_modified_loads_grey_and_resized() -> None:
    path = real_file("pneumoniamnist_modified.npz")
    ds = load_medmnist_npz(path, domain="pneumonia", channels=1, image_size=32)
    assert ds.images.shape == (3882 + 524 + 624, 1, 32, 32)
    assert ds.class_names == ("normal", "pneumonia")  # from the file name
    assert ds.select_split("train").class_counts() == {"normal": 388, "pneumonia": 3494}
    with np.load(path) as raw:
        np.testing.assert_array_equal(ds.labels[:3882], raw["train_labels"][:, 0])


@pytest.mark.data
def test_adrenalmnist3d_loads_as_volumes() -> None:
    ds = load_medmnist_npz(real_file("adrenalmnist3d.npz"), domain="adrenalmnist3d", channels=1)
    assert ds.images.shape == (1188 + 98 + 298, 1, 28, 28, 28)
    assert ds.spatial_dims == 3
    assert ds.class_names == ("normal", "hyperplasia")
    assert ds.available_splits() == ("test", "train", "val")


# --- downloads ---------------------------------------------------------------------------------


def test_download_fetches_and_verifies_a_file(server: Server, payload: bytes, tmp_path: Path) -> None:
    server.serve(payload, "bloodmnist_64.npz")
    path = download(server, tmp_path / "root", size=64, expected_md5=_md5(payload))
    assert path == tmp_path / "root" / "medmnist" / "bloodmnist_64.npz"
    assert path.read_bytes() == payload
    assert not path.with_name("bloodmnist_64.npz.part").exists()
    assert server.state.requests == [("/bloodmnist_64.npz", None)]


def test_a_corrupted_download_raises_a_checksum_error_and_leaves_no_file(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    corrupted = bytearray(payload)
    corrupted[100:110] = bytes(b ^ 0xFF for b in corrupted[100:110])
    server.serve(bytes(corrupted), "bloodmnist.npz")
    with pytest.raises(DataError, match=rf"checksum mismatch for bloodmnist\.npz: expected {_md5(payload)}"):
        download(server, tmp_path, expected_md5=_md5(payload))
    assert list((tmp_path / "medmnist").iterdir()) == []


def test_a_partial_download_resumes_with_a_range_request(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    server.serve(payload, "bloodmnist.npz")
    half = len(payload) // 2
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "bloodmnist.npz.part").write_bytes(payload[:half])
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert server.state.requests == [("/bloodmnist.npz", f"bytes={half}-")]
    assert path.read_bytes() == payload


def test_a_server_ignoring_range_restarts_the_download_from_zero(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    server.serve(payload, "bloodmnist.npz")
    server.state.honour_range = False
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "bloodmnist.npz.part").write_bytes(b"stale bytes from elsewhere")
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert server.state.requests[0][1] == "bytes=26-"
    assert path.read_bytes() == payload


def test_a_part_longer_than_the_file_is_discarded_and_downloaded_again(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    server.serve(payload, "bloodmnist.npz")
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "bloodmnist.npz.part").write_bytes(payload + b"extra")
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert [r[1] for r in server.state.requests] == [f"bytes={len(payload) + 5}-", None]
    assert path.read_bytes() == payload


def test_a_dropped_connection_keeps_the_part_and_the_next_call_resumes(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    server.serve(payload, "bloodmnist.npz")
    server.state.cut_after = 1000
    with pytest.raises(DataError, match=r"download of http://127\.0\.0\.1:\d+/bloodmnist\.npz stopped"):
        download(server, tmp_path, expected_md5=_md5(payload))
    part = tmp_path / "medmnist" / "bloodmnist.npz.part"
    assert part.stat().st_size == 1000
    assert not (tmp_path / "medmnist" / "bloodmnist.npz").exists()
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert server.state.requests[-1][1] == "bytes=1000-"
    assert path.read_bytes() == payload


def test_an_existing_valid_file_is_returned_without_a_request(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "bloodmnist.npz").write_bytes(payload)
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert path.read_bytes() == payload
    assert server.state.requests == []


def test_an_existing_file_with_a_wrong_checksum_is_replaced(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    server.serve(payload, "bloodmnist.npz")
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "bloodmnist.npz").write_bytes(b"old")
    path = download(server, tmp_path, expected_md5=_md5(payload))
    assert path.read_bytes() == payload


def test_the_base_url_can_come_from_the_environment(
    server: Server, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.serve(payload, "bloodmnist.npz")
    monkeypatch.setenv(BASE_URL_ENV, server.url + "/")
    path = download_medmnist(
        "bloodmnist", root=tmp_path, progress=True, timeout=5, expected_md5=_md5(payload)
    )
    assert path.read_bytes() == payload


def test_an_unknown_name_raises_a_data_error_listing_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown MedMNIST dataset 'bloodmnst'.*bloodmnist"):
        download_medmnist("bloodmnst", root=tmp_path, progress=False)


def test_an_unpublished_size_raises_a_data_error_listing_sizes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="adrenalmnist3d has no size 128: available sizes are 28, 64"):
        download_medmnist("adrenalmnist3d", 128, root=tmp_path, progress=False)


def test_a_missing_remote_file_raises_a_data_error_naming_the_url(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:\d+/octmnist\.npz: HTTP 404"):
        download(server, tmp_path, name="octmnist")


def test_an_unreachable_server_raises_a_data_error_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DataError, match=rf"cannot download {re.escape(url)}/octmnist\.npz"):
        download_medmnist("octmnist", root=tmp_path, base_url=url, progress=False, timeout=5)


@pytest.mark.data
def test_a_real_file_served_under_its_official_name_downloads_and_loads(
    server: Server, tmp_path: Path
) -> None:
    data = real_file("breastmnist_resaved.npz").read_bytes()
    server.serve(data, "breastmnist.npz")
    path = download(server, tmp_path, name="breastmnist", expected_md5=_md5(data))
    ds = load_medmnist_npz(path, domain="breastmnist", channels=1)
    assert ds.images.shape == (780, 1, 28, 28)


@pytest.mark.data
def test_adrenalmnist3d_downloads_by_name_with_the_official_checksum(server: Server, tmp_path: Path) -> None:
    shutil.copy(real_file("adrenalmnist3d.npz"), server.state.folder / "adrenalmnist3d.npz")
    path = download(server, tmp_path, name="adrenalmnist3d")
    assert path.name == "adrenalmnist3d.npz"
    assert _md5(path.read_bytes()) == INFO["adrenalmnist3d"].md5_for(28)


@pytest.mark.data
def test_a_corrupted_official_file_fails_the_official_checksum(server: Server, tmp_path: Path) -> None:
    data = bytearray(real_file("adrenalmnist3d.npz").read_bytes())
    data[-2000] ^= 0xFF
    server.serve(bytes(data), "adrenalmnist3d.npz")
    with pytest.raises(DataError, match=r"checksum mismatch for adrenalmnist3d\.npz"):
        download(server, tmp_path, name="adrenalmnist3d")
    assert list((tmp_path / "medmnist").iterdir()) == []
