"""The `medmeta` command end to end, including every bad-input error (one line, exit code 2)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.cli.main import main
from medmeta.data.synthetic import make_synthetic
from tests._helpers.cli import assert_one_line_error, run


def image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            arr = np.clip(rng.normal(40 + 60 * c, 20, (size, size)), 0, 255).astype(np.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


SYN = make_synthetic(image_size=8).class_names
TINY = ["--image-size", "24", "--n-way", "3", "--n-shot", "2", "--n-query", "3", "--epochs", "1"]
TINY += ["--episodes-per-epoch", "6", "--eval-episodes", "5", "--quiet", "--device", "cpu"]


def test_train_then_evaluate_on_synthetic_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    train = "synthetic:" + ",".join(SYN[:6])
    test = "synthetic:" + ",".join(SYN[6:10])
    code, stdout, err = run(capsys, "train", "--train", train, "--test", test, "--out", str(out), *TINY)
    assert code == 0, err
    assert (out / "best.json").is_file() and (out / "config.yaml").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results[0]["n_way"] == 4 and results[0]["episodes"] == 5
    assert "accuracy" in stdout
    code, stdout, err = run(
        capsys,
        "evaluate",
        "--model",
        str(out / "best.json"),
        "--n-way",
        "3",
        "--episodes",
        "4",
        "--quiet",
        "--out",
        str(tmp_path / "eval.json"),
    )
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())[0]["n_way"] == 3


def test_method_options_pass_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "train",
        "--train",
        "synthetic:" + ",".join(SYN[:4]),
        "--out",
        str(tmp_path),
        "--option",
        "distance=cosine",
        "--option",
        "scale=10",
        *TINY,
    )
    assert code == 0, err
    cfg = json.loads((tmp_path / "best.json").read_text())["config"]
    assert cfg["method"]["options"] == {"distance": "cosine", "scale": 10}


def test_data_info_lists_classes_and_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = image_folder(tmp_path / "mine")
    (root / "class1" / "bad.png").write_bytes(b"not a png")
    code, out, err = run(capsys, "data", "info", str(root))
    assert code == 0, err
    assert "class0" in out and "18 images" in out
    assert "unreadable files (1)" in out and "bad.png" in out


def test_data_show_writes_an_episode_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "grid.png"
    code, _, err = run(
        capsys,
        "data",
        "show",
        str(image_folder(tmp_path / "f")),
        "--out",
        str(png),
        "--n-way",
        "3",
        "--n-shot",
        "2",
        "--n-query",
        "2",
    )
    assert code == 0, err
    with Image.open(png) as im:
        assert im.size[0] > 200


def test_an_unknown_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "train", "--train", "nosuchset", "--out", str(tmp_path), "--data-dir", str(tmp_path)
    )
    assert_one_line_error(code, err, "unknown dataset 'nosuchset'", "available:")


def test_a_missing_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "info", str(tmp_path / "gone/"))
    assert_one_line_error(code, err, "does not exist")


def test_an_empty_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    code, _, err = run(
        capsys, "train", "--train", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *TINY
    )
    assert_one_line_error(code, err, "holds no images")


def test_a_corrupt_image_is_named_and_skip_bad_skips_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = image_folder(tmp_path / "f", classes=3, per_class=6)
    (root / "class2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    args = ["train", "--train", str(root), "--out", str(tmp_path / "o"), *TINY]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "broken.png", "--skip-bad")
    code, _, err = run(capsys, *args, "--skip-bad")
    assert code == 0, err


def test_too_few_images_for_k_shots_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(tmp_path / "f", classes=3, per_class=4)
    code, _, err = run(capsys, "train", "--train", str(root), "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "fewer than n_shot + n_query")


def test_fewer_classes_than_n_way_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(tmp_path / "f", classes=3, per_class=8)
    code, _, err = run(
        capsys, "train", "--train", str(root), "--out", str(tmp_path / "o"), *TINY, "--n-way", "5"
    )
    assert_one_line_error(code, err, "fewer than n_way=5")


def test_a_config_value_out_of_range_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--train", "synthetic", "--out", str(tmp_path), "--n-shot", "0")
    assert_one_line_error(code, err, "episodes.n_shot=0", "greater than or equal to 1")
    code, _, err = run(capsys, "train", "--out", str(tmp_path), "--option", "distance=manhattan")
    assert_one_line_error(code, err, "distance", "manhattan")


def test_a_bad_yaml_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: -3\n")
    code, _, err = run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "train.epochs=-3")


def test_a_truncated_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "best.json").write_text('{"format": "medmeta-chec')
    code, _, err = run(capsys, "evaluate", "--model", str(tmp_path / "best.json"))
    assert_one_line_error(code, err, "truncated or not JSON")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.data
def test_a_checksum_mismatch_on_download_is_one_line_and_leaves_no_file(
    served: tuple[str, Path], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, folder = served
    blob = bytearray((data_dir / "medmnist" / "adrenalmnist3d.npz").read_bytes())
    blob[1000] ^= 0xFF
    (folder / "adrenalmnist3d.npz").write_bytes(bytes(blob))
    dest = tmp_path / "root"
    code, _, err = run(
        capsys, "data", "download", "adrenalmnist3d", "--base-url", url, "--data-dir", str(dest)
    )
    assert_one_line_error(code, err, "checksum mismatch for adrenalmnist3d.npz")
    assert not list((dest / "medmnist").glob("adrenalmnist3d*"))


@pytest.mark.data
def test_data_list_shows_the_real_sets(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "data", "list", "--data-dir", str(data_dir))
    assert code == 0, err
    for name in ("blood_pbc", "brain_tumor_mri", "breastmnist_resaved", "synthetic"):
        assert name in out


@pytest.mark.data
@pytest.mark.slow
def test_the_demo_trains_and_tests_on_the_real_data(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "demo",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
        "--episodes",
        "30",
        "--eval-episodes",
        "20",
        "--ssl-epochs",
        "1",
        "--ssl-images",
        "256",
        "--quiet",
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("medmeta demo: REAL medical images")
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["domain"] for r in results] == ["blood_pbc", "brain_tumor_mri"]
    assert results[0]["n_way"] == 3 and results[1]["n_way"] == 4
    assert results[0]["metrics"]["accuracy"]["mean"] > 0.5  # 3-way: chance is 1/3
    reps = json.loads((tmp_path / "representations.json").read_text())
    assert [r["representation"].split(" ")[0] for r in reps] == ["raw", "ProtoNet", "SimCLR", "SimCLR"]
    assert reps[1]["metrics"] == results[1]["metrics"]  # the same brain MRI episodes
    assert {r["episodes"] for r in reps} == {20} and {r["n_way"] for r in reps} == {4}
    assert json.loads((tmp_path / "ssl" / "best.json").read_text())["kind"] == "pretrain"


def test_the_demo_without_real_data_says_it_is_synthetic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "demo",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--episodes",
        "6",
        "--eval-episodes",
        "4",
        "--quiet",
    )
    assert code == 0, err
    assert "SYNTHETIC" in out.splitlines()[0]


def test_ctrl_c_ends_with_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import medmeta.cli.demo

    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(medmeta.cli.demo, "run_demo", interrupted)
    with pytest.raises(SystemExit) as done:
        main(["demo", "--quiet"])
    assert done.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: files and checkpoints written so far are kept"
