"""The web page for a detector checkpoint: upload images, see the boxes drawn on them, download them as CSV.

`medmeta serve --model OUT/adapted` (a `medmeta det train` output) serves this page instead of the
classification one. Uploads follow the same rules (`medmeta.serve.uploads`, the session's folder only,
deleted after each request); boxes are drawn at the image's own resolution (`medmeta.pipeline.detection_io`).
"""

from __future__ import annotations

import base64
import math
import shutil
import threading
from html import escape
from pathlib import Path
from typing import Any

from medmeta.data.boxes import read_rgb
from medmeta.data.readers import IMAGE_SUFFIXES, ImageTooLargeError, UnreadableImageError
from medmeta.errors import MedmetaError
from medmeta.methods.detection import FewShotDetector
from medmeta.pipeline.detection_io import detections_csv, overlay, to_original
from medmeta.serve.page import skipped_html
from medmeta.serve.session import Session, SessionEnded, hide_paths
from medmeta.serve.uploads import Form, Limits, UploadError, basename

ACCEPT = ",".join(IMAGE_SUFFIXES)
DEFAULT_MIN_SCORE = 0.3


class DetectorWorkspace:
    """A detector behind the page and the work done for one request (the classification page's
    `medmeta.serve.app.Workspace` counterpart)."""

    download_name = "boxes.csv"

    def __init__(self, detector: FewShotDetector, meta: dict[str, Any], limits: Limits) -> None:
        self.detector, self.meta, self.limits = detector, meta, limits
        self.predictor = detector.base_predictor()
        self._lock = threading.Lock()  # one computation at a time on the shared model

    def model_text(self) -> str:
        classes = ", ".join(self.predictor.classes)
        return (
            f"Detector: {self.meta.get('method')} (Faster R-CNN) finding {classes}; images are letterboxed to "
            f"{self.detector.options.image_size} px and boxes drawn at the image's own size."
        )

    def limits_text(self) -> str:
        lim = self.limits
        return (
            f"Up to {lim.max_files} files, {lim.max_file_bytes / 1e6:g} MB each, "
            f"{lim.max_upload_bytes / 1e6:g} MB per upload, {lim.max_pixels / 1e6:g} megapixels per image."
        )

    def form(self) -> str:
        return f"""
<p class="model">{escape(self.model_text())}</p>
<form id="run" method="post" action="/predict" enctype="multipart/form-data">
<fieldset><legend>Images to search</legend>
<input type="file" id="queries" name="queries" multiple accept="{ACCEPT}"></fieldset>
<label>Show boxes scoring at least <input type="number" id="min_score" name="min_score" min="0" max="1"
step="0.05" value="{DEFAULT_MIN_SCORE}"></label>
<button type="submit" id="submit">Detect</button>
<span class="note">{escape(self.limits_text())}</span>
</form>
<form method="post" action="/end"><button type="submit" id="end">End session (delete my files)</button></form>
"""

    def _min_score(self, form: Form) -> float:
        text = form.value("min_score", str(DEFAULT_MIN_SCORE)).strip() or str(DEFAULT_MIN_SCORE)
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise UploadError(f"minimum score '{text[:20]}' is not a number from 0 to 1: enter e.g. 0.3")
        return value

    def run(self, session: Session, form: Form) -> str:
        """Detect objects in the uploaded images; returns the results' HTML (boxes stay in memory only)."""
        min_score = self._min_score(form)
        uploads = form.files_of("queries")
        if not uploads:
            raise UploadError("choose one or more images to search")
        run = session.new_run_folder()
        session.csv = None
        names: list[str] = []
        dets: list[dict[str, Any]] = []
        pictures: list[bytes] = []
        skipped: list[tuple[str, str]] = []
        size = self.detector.options.image_size
        try:
            with self._lock:
                for k, f in enumerate(uploads):
                    name = basename(f.filename)
                    path = run / f"{k:04d}{Path(name.lower()).suffix[:8]}"
                    path.write_bytes(f.data)
                    try:
                        image, scale, hw = read_rgb(path, size, max_pixels=self.limits.max_pixels)
                        original, _, _ = read_rgb(path, max(hw), max_pixels=self.limits.max_pixels)
                    except ImageTooLargeError:
                        skipped.append((name, f"has more than {self.limits.max_pixels / 1e6:g} megapixels"))
                        continue
                    except UnreadableImageError:
                        skipped.append((name, "could not be read as an image"))
                        continue
                    det = to_original(self.predictor.detections(image[None])[0], scale, hw)
                    pictures.append(
                        overlay(original[:, : hw[0], : hw[1]], det, self.predictor.classes, min_score)
                    )
                    names.append(name)
                    dets.append(det)
        except MedmetaError as exc:
            raise UploadError(hide_paths(str(exc), session.folder), 400) from None
        except FileNotFoundError:
            if session.ended:
                raise SessionEnded() from None
            raise
        finally:
            shutil.rmtree(run, ignore_errors=True)
        if not names:
            raise UploadError(
                f"none of the {len(skipped)} uploaded file(s) could be read as an image: upload "
                f"{', '.join(IMAGE_SUFFIXES)} files"
            )
        session.csv = detections_csv(names, dets, self.predictor.classes)
        return self._results(names, dets, pictures, skipped, min_score)

    def _results(
        self,
        names: list[str],
        dets: list[dict[str, Any]],
        pictures: list[bytes],
        skipped: list[tuple[str, str]],
        min_score: float,
    ) -> str:
        classes = self.predictor.classes
        rows = []
        total = 0
        for name, det, png in zip(names, dets, pictures, strict=True):
            keep = det["scores"] >= min_score
            total += int(keep.sum())
            counts = ", ".join(
                f"{escape(c)}: {int((det['labels'][keep] == i).sum())}" for i, c in enumerate(classes)
            )
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            rows.append(
                f'<tr class="detection"><td class="file">{escape(name)}</td><td class="boxes">{int(keep.sum())}'
                f'</td><td class="counts">{counts}</td><td><img class="overlay" src="{uri}" '
                f'style="max-width:480px" alt="boxes on {escape(name)}"></td></tr>'
            )
        summary = f"Found {total} box(es) scoring at least {min_score:g} in {len(names)} image(s)."
        return f"""
<section id="results"><h2>Detections</h2>
<p id="summary">{escape(summary)} <a id="download" href="/download.csv" download="boxes.csv">Download CSV
(every box with its score)</a></p>
{skipped_html(skipped, "file(s)")}
<table id="detections"><thead><tr><th>image</th><th>boxes</th><th>per class</th><th>boxes drawn</th></tr>
</thead><tbody>{"".join(rows)}</tbody></table>
</section>"""
