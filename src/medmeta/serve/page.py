"""The HTML of the web page: the upload form and the results (no template engine, everything escaped)."""

from __future__ import annotations

import base64
from html import escape
from io import BytesIO

from PIL import Image

from medmeta.data.readers import IMAGE_SUFFIXES
from medmeta.explain.explanations import Explanation
from medmeta.explain.render import overlay_image

ACCEPT = ",".join(IMAGE_SUFFIXES)
THUMB = 96

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:1200px;color:#222}
fieldset{margin:.8rem 0;border:1px solid #bbb;padding:.6rem 1rem}
.class-row{margin:.3rem 0} .class-row input[type=text]{width:14rem}
#error{color:#a00;font-weight:bold;white-space:pre-wrap}
table{border-collapse:collapse;margin-top:1rem} td,th{border:1px solid #ccc;padding:.3rem;vertical-align:top}
td.predicted{font-weight:bold} td.neighbours{white-space:nowrap} figure{display:inline-block;margin:0 .3rem;text-align:center;font-size:.8rem}
.note{color:#555;font-size:.9rem}
"""

_SCRIPT = """
document.getElementById('add_class').addEventListener('click', function () {
  var box = document.getElementById('class_rows');
  var i = box.querySelectorAll('.class-row').length;
  var row = box.querySelector('.class-row').cloneNode(true);
  var name = row.querySelector('input[type=text]'), files = row.querySelector('input[type=file]');
  name.name = 'class_name_' + i; name.id = 'class_name_' + i; name.value = '';
  files.name = 'support_' + i; files.id = 'support_' + i; files.value = '';
  box.appendChild(row);
});
"""

#: Content-Security-Policy of every page: nothing is loaded from anywhere; images are inline data.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def data_uri(image: Image.Image) -> str:
    buf = BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _class_row(i: int) -> str:
    return (
        f'<div class="class-row"><input type="text" id="class_name_{i}" name="class_name_{i}" '
        f'placeholder="class name" maxlength="64"> <input type="file" id="support_{i}" name="support_{i}" '
        f'multiple accept="{ACCEPT}"></div>'
    )


def form_html(model_text: str, stored: dict[str, int] | None, limits_text: str) -> str:
    """The upload form; `stored` (class name -> images) offers the adapted model's own support classes."""
    picks = ""
    if stored:
        boxes = "".join(
            f'<label class="stored"><input type="checkbox" name="stored_class" value="{escape(name)}" checked> '
            f"{escape(name)} ({n} images)</label> "
            for name, n in stored.items()
        )
        picks = (
            f'<p id="stored_classes">The model\'s own support images, per class: {boxes}</p>'
            '<p class="note">Images uploaded below under the same class name are added to them; new names '
            "add classes.</p>"
        )
    rows = "".join(_class_row(i) for i in range(2))
    return f"""
<p class="model">{escape(model_text)}</p>
<form id="run" method="post" action="/predict" enctype="multipart/form-data">
<fieldset id="support"><legend>Support set: a few labelled images per class</legend>{picks}
<div id="class_rows">{rows}</div>
<button type="button" id="add_class">Add a class</button></fieldset>
<fieldset><legend>Images to classify</legend>
<input type="file" id="queries" name="queries" multiple accept="{ACCEPT}"></fieldset>
<button type="submit" id="submit">Predict</button>
<span class="note">{escape(limits_text)}</span>
</form>
<form method="post" action="/end"><button type="submit" id="end">End session (delete my files)</button></form>
"""


def _neighbours(expl: Explanation, thumbs: dict[str, str]) -> str:
    parts = []
    for n in expl.neighbours:
        uri = thumbs.get(n.file)
        if uri is None:
            uri = data_uri(Image.fromarray(n.image).resize((THUMB, THUMB), Image.Resampling.BILINEAR))
            thumbs[n.file] = uri
        parts.append(
            f'<figure><img class="neighbour" src="{uri}" width="{THUMB}" height="{THUMB}" alt="support image">'
            f'<figcaption><span class="neighbour-class">{escape(n.class_name)}</span> '
            f'd=<span class="distance">{n.distance:.2f}</span></figcaption></figure>'
        )
    return "".join(parts) or '<span class="note">(not a metric method)</span>'


def skipped_html(skipped: list[tuple[str, str]], noun: str) -> str:
    """The list of skipped uploads, each with its reason ("" when none was skipped)."""
    if not skipped:
        return ""
    items = "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in skipped)
    return f'<p>Skipped {len(skipped)} {noun}:</p><ul id="skipped">{items}</ul>'


def results_html(
    explanations: list[Explanation],
    names: list[str],
    probabilities: list[list[float]],
    class_names: tuple[str, ...],
    summary: str,
    skipped: list[tuple[str, str]],
) -> str:
    """The results table: name, predicted class, probabilities, saliency overlay, nearest support images."""
    thumbs: dict[str, str] = {}
    head = "".join(f"<th>p({escape(c)})</th>" for c in class_names)
    rows = []
    for expl, name, probs in zip(explanations, names, probabilities, strict=True):
        cells = "".join(f'<td class="prob">{p:.3f}</td>' for p in probs)
        rows.append(
            f'<tr class="prediction"><td class="file">{escape(name)}</td>'
            f'<td class="predicted">{escape(expl.predicted)}</td>{cells}'
            f'<td><img class="saliency" src="{data_uri(overlay_image(expl))}" width="160" height="160" '
            f'alt="{escape(expl.technique)} saliency"></td><td class="neighbours">{_neighbours(expl, thumbs)}</td></tr>'
        )
    return f"""
<section id="results"><h2>Predictions</h2>
<p id="summary">{escape(summary)} <a id="download" href="/download.csv" download="predictions.csv">Download CSV</a></p>
{skipped_html(skipped, "unreadable file(s)")}
<table id="predictions"><thead><tr><th>image</th><th>predicted</th>{head}<th>saliency (predicted class)</th>
<th>nearest support images (embedding distance)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
</section>"""


def page(body: str, error: str | None = None) -> str:
    err = f'<div id="error" role="alert">{escape(error)}</div>' if error else '<div id="error"></div>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medmeta: adapt and predict</title>
<style>{_STYLE}</style></head><body>
<h1>medmeta: adapt and predict</h1>
<p class="note">Runs on this machine. Uploaded files stay in this session's temporary folder and are deleted when
the session ends; DICOM files are read for their pixels only. Research use only, not a medical device.</p>
{err}{body}
<script>{_SCRIPT}</script></body></html>"""
