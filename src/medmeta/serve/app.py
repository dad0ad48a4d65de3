"""``medmeta serve``: a local web page to adapt a model to uploaded images, predict and explain.

Built on Starlette + uvicorn (the ``serve`` extra), not Gradio: Gradio 6.31 pulls 31 packages (pandas,
huggingface_hub, hf-xet, opentelemetry, ...; its wheel alone is 30 MB), pins ``pillow<13`` (downgrading
this environment's Pillow 13) and copies every upload into its own cache folder, which defeats "nothing
written outside a per-session temp dir". Here uploads are parsed in memory (`medmeta.serve.uploads`),
written only to the session's folder (`medmeta.serve.session`) while a request is processed, and deleted
right after; results live in memory until the session ends. The page loads nothing from the network.

Privacy: DICOM files are read for pixels only; no file content or name is logged (uvicorn's access log is
off, and this module logs counts only).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from medmeta._optional import OptionalDependencyError, optional_import
from medmeta.data.datasets import ImageDataset
from medmeta.data.readers import IMAGE_SUFFIXES, ImageTooLargeError, UnreadableImageError
from medmeta.deploy.adapted import AdaptedModel, TrainedModel, adapt_support, load_model
from medmeta.deploy.inputs import QueryImages, read_model_image
from medmeta.deploy.predict import predict_images
from medmeta.deploy.stability import calibrate_when_possible
from medmeta.errors import MedmetaError
from medmeta.explain.explanations import explain
from medmeta.explain.render import safe_stem
from medmeta.pipeline.detection_io import is_detector_checkpoint, load_detector
from medmeta.serve import page
from medmeta.serve.detection import DetectorWorkspace
from medmeta.serve.session import Session, SessionEnded, SessionsFull, SessionStore
from medmeta.serve.session import hide_paths as _hide_paths
from medmeta.serve.uploads import Form, Limits, UploadedFile, UploadError, basename, parse_form

logger = logging.getLogger(__name__)

COOKIE = "medmeta_session"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_CLASS_NAME = re.compile(r"^[\w][\w .()+-]{0,63}$")

__all__ = ["Limits", "Workspace", "bind", "create_app", "run_server"]


class Workspace:
    """The model behind the page and the work done for one request."""

    download_name = "predictions.csv"

    def __init__(self, model: TrainedModel | AdaptedModel, limits: Limits) -> None:
        self.stored = model if isinstance(model, AdaptedModel) else None
        self.base = model.base if isinstance(model, AdaptedModel) else model
        self.limits = limits
        self._lock = threading.Lock()  # one computation at a time: Grad-CAM hooks live on the shared model

    def model_text(self) -> str:
        b = self.base
        domains = ", ".join(map(str, b.meta.get("train_domains", []))) or "unknown data"
        text = (
            f"Model: {b.meta.get('method')} ({b.config.model.backbone}) meta-trained on {domains}; "
            f"images are read as {b.channels}x{b.image_size}x{b.image_size} (centre crop, bilinear resize)."
        )
        if self.stored is not None:
            text += (
                f" Adapted to {self.stored.n_way} classes ({len(self.stored.support_labels)} support images)."
            )
        return text

    def limits_text(self) -> str:
        lim = self.limits
        return (
            f"Up to {lim.max_files} files, {lim.max_file_bytes / 1e6:g} MB each, "
            f"{lim.max_upload_bytes / 1e6:g} MB per upload, {lim.max_pixels / 1e6:g} megapixels per image; "
            "image files only."
        )

    def form(self) -> str:
        stored = None
        if self.stored is not None:
            labels = self.stored.support_labels
            stored = {c: int((labels == i).sum()) for i, c in enumerate(self.stored.class_names)}
        return page.form_html(self.model_text(), stored, self.limits_text())

    def _read(self, f: UploadedFile, folder: Path, k: int) -> np.ndarray:
        """An uploaded image as the model sees it; written to the session's `folder` for the readers.

        Raises:
            UnreadableImageError: its message holds the temporary path: never show it, name `f.filename`.
        """
        path = folder / f"{k:04d}_{_safe_name(f.filename)}"
        path.write_bytes(f.data)
        return read_model_image(
            path,
            image_size=self.base.image_size,
            channels=self.base.channels,
            max_pixels=self.limits.max_pixels,
        )

    def _too_large(self) -> str:
        return (
            f"has more than {self.limits.max_pixels / 1e6:g} megapixels: downscale it, or start the page with "
            "a larger --max-pixels"
        )

    def _support(self, form: Form, run: Path) -> AdaptedModel:
        uploaded: dict[str, list[tuple[np.ndarray, str]]] = {}  # class -> (image, upload name)
        folder = run / "support"
        folder.mkdir()  # never `parents=True`: an ended session's folder must stay deleted
        for i in range(page_rows(form)):
            name = form.value(f"class_name_{i}").strip()
            files = form.files_of(f"support_{i}")
            if not name and not files:
                continue
            if not files:
                raise UploadError(f"class '{name}' has no image: choose its support images or clear its name")
            if not name:
                raise UploadError(f"support row {i + 1} has images but no class name: name the class")
            if not _CLASS_NAME.match(name) or name in (".", ".."):
                raise UploadError(
                    f"class name '{name}' is not allowed: use letters, digits, spaces and ._-()+ (at most 64)"
                )
            if name in uploaded:
                raise UploadError(f"class name '{name}' is used twice: give each class one row")
            uploaded[name] = []
            for f in files:
                try:
                    image = self._read(f, folder, sum(map(len, uploaded.values())))
                except ImageTooLargeError:
                    raise UploadError(
                        f"support image '{basename(f.filename)}' of class '{name}' {self._too_large()}", 413
                    ) from None
                except UnreadableImageError:
                    raise UploadError(
                        f"support image '{basename(f.filename)}' of class '{name}' cannot be read as an "
                        "image: remove it or upload another file"
                    ) from None
                uploaded[name].append((image, basename(f.filename)))
        return self._combine(form.fields.get("stored_class", []), uploaded)

    def _combine(self, picked: list[str], uploaded: dict[str, list[tuple[np.ndarray, str]]]) -> AdaptedModel:
        """The support set of the picked stored classes plus the uploaded ones (same name: images added)."""
        stored = self.stored
        picked = [c for c in picked if stored is not None and c in stored.class_names]
        if stored is not None and not uploaded and sorted(picked) == sorted(stored.class_names):
            return stored  # the adapted model as it is
        names = sorted(set(picked) | set(uploaded))
        if len(names) < 2:
            raise UploadError(
                "upload a support set: a class name and its images for at least two classes"
                + (" (or tick the model's own classes)" if stored is not None else "")
            )
        images: list[np.ndarray] = []
        labels: list[int] = []
        files: list[str] = []
        if stored is not None:
            for c in picked:
                idx = (stored.support_labels == stored.class_names.index(c)).nonzero().flatten().tolist()
                images += [stored.support_images[i].numpy() for i in idx]
                labels += [names.index(c)] * len(idx)
                files += [stored.support_files[i] for i in idx]
        for c, read in uploaded.items():
            images += [image for image, _ in read]
            labels += [names.index(c)] * len(read)
            files += [f"{c}/{upload}" for _, upload in read]
        support = ImageDataset(
            images=np.stack(images),
            labels=np.asarray(labels, dtype=np.int64),
            class_names=tuple(names),
            domain="support",
        )
        adapted = adapt_support(self.base, support, tuple(files))
        calibrate_when_possible(adapted)  # the page shows probabilities: calibrated as `medmeta adapt` does
        return adapted

    def _queries(self, form: Form, run: Path) -> QueryImages:
        """The query uploads read for the model, named by their upload names (unreadable ones skipped)."""
        queries = form.files_of("queries")
        if not queries:
            raise UploadError("choose one or more images to classify")
        folder = run / "query"
        folder.mkdir()
        images: list[np.ndarray] = []
        names: list[str] = []
        skipped: list[tuple[str, str]] = []
        for k, f in enumerate(queries):
            try:
                images.append(self._read(f, folder, k))
                names.append(basename(f.filename))
            except ImageTooLargeError:
                skipped.append((basename(f.filename), self._too_large()))
            except UnreadableImageError:
                skipped.append((basename(f.filename), "could not be read as an image"))
        if not images:
            listed = ", ".join(f"'{name}'" for name, _ in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            raise UploadError(
                f"none of the {len(skipped)} uploaded image(s) could be read as an image: {listed}; "
                f"upload {', '.join(IMAGE_SUFFIXES)} files"
            )
        return QueryImages(np.stack(images), names, skipped)

    def run(self, session: Session, form: Form) -> str:
        """Adapt (or reuse the stored support set), predict, explain; returns the results' HTML.

        Uploads are named by their upload names only: an error that would show a path inside the
        session's folder is refused with a generic message instead.
        """
        run = session.new_run_folder()
        session.csv = None
        try:
            with self._lock:
                queries = self._queries(form, run)
                adapted = self._support(form, run)
                result = predict_images(adapted, queries)
                explanations = explain(adapted, result)
        except MedmetaError as exc:
            raise UploadError(_hide_paths(str(exc), session.folder), getattr(exc, "status", 400)) from None
        except FileNotFoundError:
            if session.ended:  # "End session" (or server stop) deleted the folder under this request
                raise SessionEnded() from None
            raise
        finally:
            shutil.rmtree(run, ignore_errors=True)  # results stay in memory only
        session.csv = result.to_csv()
        counts = ", ".join(
            f"{c} ({int((adapted.support_labels == i).sum())})" for i, c in enumerate(adapted.class_names)
        )
        summary = (
            f"Predicted {len(result)} image(s) with {self.base.meta.get('method')} adapted to {counts}; "
            f"saliency: {explanations[0].technique if explanations else '-'}."
        )
        logger.info("predicted %d image(s), skipped %d", len(result), len(result.skipped))
        return page.results_html(
            explanations,
            result.files,
            result.probabilities.tolist(),
            adapted.class_names,
            summary,
            result.skipped,
        )


def page_rows(form: Form) -> int:
    """Number of support rows the form may hold (class_name_0 .. class_name_{n-1})."""
    ids = [int(k.rsplit("_", 1)[1]) for k in form.fields if re.fullmatch(r"class_name_\d{1,3}", k)]
    ids += [int(f.field.rsplit("_", 1)[1]) for f in form.files if re.fullmatch(r"support_\d{1,3}", f.field)]
    return max(ids, default=-1) + 1


def _safe_name(filename: str) -> str:
    """A safe local name that keeps the image suffix (``.nii.gz`` included) so the right reader is used."""
    name = basename(filename)
    lower = name.lower()
    suffix = ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix
    return safe_stem(name)[:60] + suffix


def create_app(
    model: str | Path | TrainedModel | AdaptedModel,
    *,
    limits: Limits | None = None,
    temp_root: str | Path | None = None,
    idle_seconds: float = 1800.0,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK,
) -> Any:
    """The Starlette application of the page.

    Args:
        model: a meta-trained or adapted checkpoint (or the loaded model), or a detector checkpoint folder
            (`medmeta det train` output: the page then draws boxes, `medmeta.serve.detection`).
        limits: upload limits.
        temp_root: where session folders are created (default: the system's temporary folder).
        idle_seconds: a session idle this long is ended and its folder deleted (checked in the background
            every quarter of it, at most every minute, even when no request comes).

    At most 16 sessions (`SessionStore.max_sessions`) exist at once, however many requests arrive together:
    a new browser ends the session idle the longest, or gets HTTP 503 with ``Retry-After`` when every
    session has a request in progress. Every session folder is deleted when the app's lifespan ends.
        allowed_hosts: accepted ``Host`` headers (guards a loopback server against DNS rebinding);
            None accepts any.
    """
    starlette_apps = optional_import("starlette.applications", "the web page (medmeta serve)")
    responses = optional_import("starlette.responses", "the web page (medmeta serve)")
    routing = optional_import("starlette.routing", "the web page (medmeta serve)")
    concurrency = optional_import("starlette.concurrency", "the web page (medmeta serve)")
    work: Workspace | DetectorWorkspace
    if not isinstance(model, TrainedModel | AdaptedModel) and is_detector_checkpoint(Path(model)):
        detector, meta = load_detector(Path(model))
        work = DetectorWorkspace(detector, meta, limits or Limits())
    else:
        loaded = model if isinstance(model, TrainedModel | AdaptedModel) else load_model(model)
        work = Workspace(loaded, limits or Limits())
    store = SessionStore(temp_root, idle_seconds=idle_seconds)
    headers = {
        "Content-Security-Policy": page.CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }

    def html(body: str, status: int = 200, error: str | None = None, token: str | None = None) -> Any:
        response = responses.HTMLResponse(page.page(body, error), status_code=status, headers=headers)
        if token is not None:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    async def index(request: Any) -> Any:
        return html(work.form())

    async def predict(request: Any) -> Any:
        try:
            with store.use(request.cookies.get(COOKIE)) as session:
                try:
                    declared = int(request.headers.get("content-length") or 0)
                    if declared > work.limits.max_upload_bytes:
                        raise UploadError(
                            f"the upload is larger than {work.limits.max_upload_bytes / 1e6:g} MB "
                            "(start the page with a larger --max-upload-mb)",
                            413,
                        )
                    form = await parse_form(
                        request.headers.get("content-type", ""), request.stream(), work.limits
                    )
                    results = await concurrency.run_in_threadpool(work.run, session, form)
                except (MedmetaError, OptionalDependencyError) as exc:
                    return html(work.form(), getattr(exc, "status", 400), str(exc), session.token)
                return html(work.form() + results, token=session.token)
        except SessionsFull as exc:
            response = html(work.form(), exc.status, str(exc))
            response.headers["Retry-After"] = "60"
            return response

    async def download(request: Any) -> Any:
        session = store.get(request.cookies.get(COOKIE))
        if session is None or session.csv is None:
            return html(work.form(), 404, "no predictions in this session yet: upload images first")
        return responses.Response(
            session.csv,
            media_type="text/csv",
            headers={**headers, "Content-Disposition": f'attachment; filename="{work.download_name}"'},
        )

    async def end(request: Any) -> Any:
        store.end(request.cookies.get(COOKIE))
        response = responses.RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def sweep_idle() -> None:
        """End idle sessions even when no request comes to trigger it."""
        while True:
            await asyncio.sleep(min(max(idle_seconds / 4, 0.05), 60.0))
            store.sweep()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_idle())
        try:
            yield
        finally:
            sweeper.cancel()
            store.close()

    routes = [
        routing.Route("/", index),
        routing.Route("/predict", predict, methods=["POST"]),
        routing.Route("/download.csv", download),
        routing.Route("/end", end, methods=["POST"]),
    ]
    middleware = []
    if allowed_hosts is not None:
        mw = optional_import("starlette.middleware", "the web page (medmeta serve)")
        trusted = optional_import("starlette.middleware.trustedhost", "the web page (medmeta serve)")
        middleware.append(mw.Middleware(trusted.TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    app = starlette_apps.Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.sessions = store
    app.state.workspace = work
    return app


def run_server(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: Limits | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the page until interrupted; every session folder is deleted on the way out.

    The address is bound before the model is loaded, and announced only once it is bound.

    Args:
        announce: called with the page's address once the address is bound and the model loaded.

    Raises:
        MedmetaError: the address cannot be bound (port in use, no permission, unknown host).
    """
    uvicorn = optional_import("uvicorn", "the web page (medmeta serve)")
    sock = bind(host, port)
    try:
        hosts = LOOPBACK if host in LOOPBACK else None
        app = create_app(model, limits=limits, allowed_hosts=hosts)
        try:
            sock.listen(128)
            if announce is not None:
                announce(f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/")
            config = uvicorn.Config(app, log_level="warning", access_log=False)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            app.state.sessions.close()
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (not yet listening).

    Raises:
        MedmetaError: the port is in use or needs privileges, or `host` is not an address of this machine.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart without waiting
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MedmetaError(
                f"port {port} on {host} is already in use (another server?): stop it, or choose a free "
                "port with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise MedmetaError(
                f"no permission to bind port {port} on {host}: choose a port above 1023 with --port"
            ) from None
        raise MedmetaError(
            f"cannot bind {host} port {port} ({exc.strerror or exc}): give an address of this machine "
            "with --host (default 127.0.0.1)"
        ) from None
    sock.set_inheritable(True)
    return sock
