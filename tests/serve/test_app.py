"""The web page over HTTP: adapt on uploads, predict, explain, download, limits, sessions and privacy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the web page needs `pip install 'medmeta[serve]'`")
pytest.importorskip("uvicorn", reason="the web page needs `pip install 'medmeta[serve]'`")

from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.deploy import adapt
from medmeta.serve.app import _hide_paths, create_app
from medmeta.serve.uploads import Limits
from tests._helpers.deploy import PATIENT, png_folder, write_dicom
from tests._helpers.serve import (
    multipart_lists,
    png,
    post_form,
    request,
    running,
    session_cookie,
    session_dirs,
    support_form,
)


def test_uploaded_support_and_queries_give_predictions_explanations_and_a_csv(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    app = create_app(tiny_checkpoint, temp_root=tmp_path)
    with running(app) as url:
        page = request(url + "/")
        assert page.status == 200 and 'id="queries"' in page.text and "use_stored" not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert session_dirs(tmp_path) == []  # viewing the page creates nothing
        fields, files = support_form()
        files += [("queries", f"scan {i}.png", png(50 + 80 * (i % 2))) for i in range(4)]
        reply = post_form(url + "/predict", fields, files)
        assert reply.status == 200, reply.text
        assert reply.text.count('class="prediction"') == 4
        assert reply.text.count('<img class="saliency" src="data:image/png;base64,') == 4
        assert reply.text.count('class="neighbour"') == 12
        assert "Predicted 4 image(s) with protonet adapted to kind 0 (3), kind 1 (3)" in reply.text
        (folder,) = session_dirs(tmp_path)
        assert list(folder.iterdir()) == []  # uploads deleted once the results were computed
        cookie = session_cookie(reply)
        csv_reply = request(url + "/download.csv", headers={"Cookie": cookie})
        lines = csv_reply.text.splitlines()
        assert lines[0] == "file,predicted_class,p_kind 0,p_kind 1"
        assert [ln.split(",")[0] for ln in lines[1:]] == [f"scan {i}.png" for i in range(4)]
        assert request(url + "/download.csv").status == 404  # another browser has no results
        request(url + "/end", b"", {"Cookie": cookie})
        assert session_dirs(tmp_path) == []
        assert request(url + "/download.csv", headers={"Cookie": cookie}).status == 404


def test_an_adapted_model_offers_its_own_support_classes_to_pick_and_extend(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    model = adapt(tiny_checkpoint, png_folder(tmp_path / "s"))
    q = [("queries", "q.png", png(60))]
    with running(create_app(model, temp_root=tmp_path / "t")) as url:
        form = request(url + "/").text
        assert form.count('name="stored_class"') == 3 and "class2 (3 images)" in form

        def summary(fields: dict[str, list[str]], files: list[tuple[str, str, bytes]]) -> str:
            body, ctype = multipart_lists(fields, files)
            reply = request(url + "/predict", body, {"Content-Type": ctype})
            assert reply.status == 200, reply.text
            return reply.text

        everything = summary({"stored_class": ["class0", "class1", "class2"]}, q)
        assert "adapted to class0 (3), class1 (3), class2 (3)" in everything
        extended = summary(
            {"stored_class": ["class0", "class2"], "class_name_0": ["class0"], "class_name_1": ["new one"]},
            [("support_0", "a.png", png(10)), *[("support_1", f"n{i}.png", png(200)) for i in range(2)], *q],
        )
        assert "adapted to class0 (4), class2 (3), new one (2)" in extended
        reply = post_form(url + "/predict", {"stored_class": "class1"}, q)
        assert (
            reply.status == 400
            and "at least two classes (or tick the model&#x27;s own classes)" in reply.text
        )


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ([("queries", f"{i}.png", b"x") for i in range(4)], 413, "more than 3 files in one upload"),
        ([("queries", "big.png", b"x" * 2000)], 413, "file &#x27;big.png&#x27; is larger than 0.001 MB"),
        ([("queries", "notes.txt", b"hello")], 415, "&#x27;notes.txt&#x27; is not an image file"),
    ],
)
def test_uploads_beyond_the_limits_or_of_other_types_are_refused(
    tmp_path: Path, tiny_checkpoint: Path, files: list[tuple[str, str, bytes]], status: int, message: str
) -> None:
    limits = Limits(max_files=3, max_file_bytes=1000, max_upload_bytes=100_000)
    with running(create_app(tiny_checkpoint, limits=limits, temp_root=tmp_path)) as url:
        reply = post_form(url + "/predict", {}, files)
        assert reply.status == status and message in reply.text, reply.text
        assert 'id="error"' in reply.text
        too_big = post_form(url + "/predict", {}, [("queries", "a.png", b"x" * 900)] * 200)
        assert too_big.status == 413 and "larger than 0.1 MB" in too_big.text


def test_a_support_row_without_a_name_or_with_a_bad_name_is_explained(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    with running(create_app(tiny_checkpoint, temp_root=tmp_path)) as url:
        q = [("queries", "q.png", png(60))]
        reply = post_form(url + "/predict", {"class_name_0": ""}, [("support_0", "a.png", png(1)), *q])
        assert reply.status == 400 and "support row 1 has images but no class name" in reply.text
        reply = post_form(url + "/predict", {"class_name_0": "../x"}, [("support_0", "a.png", png(1)), *q])
        assert reply.status == 400 and "is not allowed" in reply.text
        reply = post_form(url + "/predict", {"class_name_0": "a"}, [("support_0", "a.png", png(1)), *q])
        assert reply.status == 400 and "for at least two classes" in reply.text


def test_requests_for_another_host_name_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with running(create_app(tiny_checkpoint, temp_root=tmp_path)) as url:
        assert request(url + "/", headers={"Host": "attacker.example"}).status == 400


def test_dicom_patient_fields_are_never_shown_logged_or_kept(
    tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dicom = tmp_path / "in"
    dicom.mkdir()

    def dcm(value: int, name: str) -> bytes:
        arr = np.clip(np.random.default_rng(value).normal(value, 10, (40, 44)), 0, 255).astype(np.uint8)
        return write_dicom(arr, dicom / name).read_bytes()

    fields, files = support_form()
    files.append(("support_0", "patient.dcm", dcm(55, "s.dcm")))
    files += [("queries", "q.dcm", dcm(60, "q.dcm")), ("queries", "cut.dcm", dcm(61, "c.dcm")[:700])]
    temp = tmp_path / "sessions"
    with running(create_app(tiny_checkpoint, temp_root=temp)) as url:
        reply = post_form(url + "/predict", fields, files)
        assert reply.status == 200, reply.text
        assert reply.text.count('class="prediction"') == 1 and "cut.dcm" in reply.text  # listed as skipped
        csv_text = request(url + "/download.csv", headers={"Cookie": session_cookie(reply)}).text
        leftovers = [p.read_bytes() for p in temp.rglob("*") if p.is_file()]
    assert leftovers == []
    assert session_dirs(temp) == []  # server shutdown ended the session
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in PATIENT.values():
        assert secret not in reply.text and secret not in csv_text and secret not in logs, secret


def test_an_unreadable_support_image_is_named_by_its_upload_name(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    with running(create_app(tiny_checkpoint, temp_root=tmp_path)) as url:
        fields, files = support_form()
        files += [("support_1", "scan 7.jpg", b"not a jpeg"), ("queries", "q.png", png(60))]
        reply = post_form(url + "/predict", fields, files)
        assert reply.status == 400
        assert "support image &#x27;scan 7.jpg&#x27; of class &#x27;kind 1&#x27; cannot be read" in reply.text
        assert str(tmp_path) not in reply.text  # no server path is shown
        broken = request(url + "/predict", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"})
        assert broken.status == 400 and "must be sent as multipart/form-data" in broken.text
        empty = request(
            url + "/predict", b"--x\r\nnonsense", {"Content-Type": "multipart/form-data; boundary=x"}
        )
        assert empty.status == 400 and "choose one or more images to classify" in empty.text


@pytest.mark.parametrize(
    ("fields", "files", "message"),
    [
        (
            {"class_name_0": "kind 0", "class_name_1": "kind 1"},
            [("support_0", "a.png", png(1)), ("support_1", "b.png", png(2)), ("queries", "scan 3.jpg", b"?")],
            "none of the 1 uploaded image(s) could be read as an image: &#x27;scan 3.jpg&#x27;",
        ),
        (
            {"class_name_0": "train", "class_name_1": "test"},
            [("support_0", "a.png", png(1)), ("support_1", "b.png", png(200)), ("queries", "q.png", png(60))],
            "adapted to test (1), train (1)",
        ),
    ],
    ids=["unreadable query", "classes named like splits"],
)
def test_the_page_names_uploads_by_their_own_names_and_never_shows_a_server_path(
    tmp_path: Path,
    tiny_checkpoint: Path,
    fields: dict[str, str],
    files: list[tuple[str, str, bytes]],
    message: str,
) -> None:
    with running(create_app(tiny_checkpoint, temp_root=tmp_path / "t")) as url:
        reply = post_form(url + "/predict", fields, files)
    assert message in reply.text, reply.text
    assert str(tmp_path) not in reply.text and "/run1/" not in reply.text and "0000_" not in reply.text


def test_a_path_inside_the_session_folder_is_replaced_in_an_error_message(tmp_path: Path) -> None:
    folder = tmp_path / "medmeta-session-x"
    message = f"cannot read image {folder}/run1/query/0000_a.png: bad header; folder {folder} is empty"
    assert _hide_paths(message, folder) == (
        "cannot read image an uploaded file: bad header; folder an uploaded file is empty"
    )


def test_images_above_the_pages_pixel_cap_are_refused_by_name_before_decoding(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    assert Limits().max_pixels == 16_000_000 < DEFAULT_MAX_PIXELS  # the page is stricter than the CLI
    limits = Limits(max_pixels=100 * 100)
    with running(create_app(tiny_checkpoint, limits=limits, temp_root=tmp_path / "t")) as url:
        assert "0.01 megapixels per image" in request(url + "/").text
        fields, files = support_form()
        reply = post_form(url + "/predict", fields, [*files, ("queries", "big scan.png", png(60, 120))])
        assert reply.status == 400 and "&#x27;big scan.png&#x27;" in reply.text
        reply = post_form(
            url + "/predict",
            fields,
            [*files, ("queries", "big scan.png", png(60, 120)), ("queries", "q.png", png(60))],
        )
        assert reply.status == 200 and reply.text.count('class="prediction"') == 1
        assert (
            "big scan.png: has more than 0.01 megapixels: downscale it, or start the page with a larger"
            in (reply.text)
        )
        files[0] = ("support_0", "huge.png", png(50, 120))
        reply = post_form(url + "/predict", fields, [*files, ("queries", "q.png", png(60))])
        assert reply.status == 413
        assert (
            "support image &#x27;huge.png&#x27; of class &#x27;kind 0&#x27; has more than 0.01 megapixels"
            in (reply.text)
        )
    assert str(tmp_path) not in reply.text
