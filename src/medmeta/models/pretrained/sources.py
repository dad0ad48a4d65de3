"""Where weights come from: a local file or folder checked before any library opens it, or the Hugging Face
hub (through ``huggingface_hub``, which timm, open_clip and transformers all download with).

Only safetensors are read: a pickle file (``.bin``, ``.pth``, ``.pt``) is refused with the line that converts
it. Offline is detected in a second (``HF_HUB_OFFLINE``, or no connection to the hub), not after the hub
client's retries, and cached downloads are still used then.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medmeta._optional import optional_import
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained.hashing import sha256_file
from medmeta.models.pretrained.spec import BackboneSpec

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".tar")
HUB_URL = "https://huggingface.co"
PROBE_SECONDS = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def convert_command(source: Path | str, target: str) -> str:
    """The one-line shell command that rewrites a pickle checkpoint as safetensors (run it only on a file you trust)."""
    return (
        'python -c "import torch, safetensors.torch as st; '
        f"sd = torch.load('{source}', map_location='cpu', weights_only=True); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}}, '{target}')\""
    )


def refuse_pickle(spec: BackboneSpec, path: Path, target: str) -> None:
    """Raise if `path` is a pickle checkpoint (unpickling runs code from the file).

    Raises:
        CheckpointError: the suffix is a pickle format; the message gives the conversion command.
    """
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{spec}: {path} is a pickle file, which medmeta never loads; convert it to {target}: "
            f"{convert_command(path, target)}"
        )


def local_weights(
    spec: BackboneSpec,
    weights: str | Path,
    *,
    configs: Sequence[str],
    weights_names: Sequence[str],
    file_ok: bool = True,
) -> Path:
    """Check a local ``.safetensors`` file or a folder in the library's hub layout before loading it.

    Args:
        spec: the backbone, named in errors.
        weights: the path the user gave.
        configs: files the folder must hold (``config.json`` ...).
        weights_names: accepted weight file names in the folder, the first one preferred.
        file_ok: whether a lone ``.safetensors`` file is accepted.

    Returns:
        The resolved path (file or folder).

    Raises:
        ConfigError: missing path, wrong kind of path, or a folder without the layout's files.
        CheckpointError: a pickle file, or a folder holding only pickle weights.
    """
    path = Path(weights).expanduser()
    layout = " + ".join([*configs, weights_names[0]])
    if not path.exists():
        kinds = f"a .safetensors file or a folder with {layout}" if file_ok else f"a folder with {layout}"
        raise ConfigError(f"{spec}: weights {path} not found; pass {kinds}")
    if path.is_file():
        refuse_pickle(spec, path, weights_names[0])
        if not file_ok:
            raise ConfigError(f"{spec}: weights {path} is a file; pass the folder holding {layout}")
        if path.suffix != ".safetensors":
            raise ConfigError(f"{spec}: weights {path} is not a .safetensors file; pass a .safetensors file")
        return path
    if not any((path / name).is_file() for name in weights_names):
        pickles = sorted(p for p in path.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            refuse_pickle(spec, pickles[0], str(path / weights_names[0]))
        raise ConfigError(f"{spec}: folder {path} has no {weights_names[0]}; it needs {layout}")
    missing = [name for name in configs if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{spec}: folder {path} has no {', '.join(missing)}; it needs {layout}")
    return path


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now, or the hub cannot be reached."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    return not hub_reachable()


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within `timeout` seconds.

    Behind a proxy (``HTTPS_PROXY``/``ALL_PROXY``) the hub client is trusted to connect, so this returns True.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or HUB_URL)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_download(
    spec: BackboneSpec,
    repo_id: str,
    filenames: Sequence[str],
    *,
    advertised: Sequence[str],
    revision: str | None = None,
) -> list[Path]:
    """Download `filenames` of hub repository `repo_id` into the Hugging Face cache (or find them there).

    Args:
        spec: the backbone, named in errors.
        repo_id: ``ORG/REPO``.
        filenames: files to fetch, all at the repository's root.
        advertised: files the offline message tells the user to download into a folder for ``weights``.
        revision: branch, tag or commit (None: the default branch).

    Returns:
        Local paths of `filenames`, in order (in one snapshot folder of the cache).

    Raises:
        ConfigError: offline and not cached (the message names the URL and files to download by hand), or the
            repository or a file does not exist on the hub.
    """
    hub = optional_import("huggingface_hub", "downloading pretrained weights")
    errors = hub.errors
    offline = hub_offline()
    paths = []
    for name in filenames:
        try:
            paths.append(
                Path(hub.hf_hub_download(repo_id, name, revision=revision, local_files_only=offline))
            )
        except errors.RepositoryNotFoundError as exc:
            raise ConfigError(
                f"{spec}: the hub has no public repository {repo_id}; check the name (or log in for a gated one)"
            ) from exc
        except errors.RemoteEntryNotFoundError as exc:
            raise ConfigError(
                f"{spec}: {HUB_URL}/{repo_id} has no {name}; medmeta loads only safetensors weights "
                "(convert them and pass the folder as weights)"
            ) from exc
        except (errors.LocalEntryNotFoundError, ConnectionError, TimeoutError) as exc:
            raise ConfigError(
                f"{spec}: no network to download its weights: download {HUB_URL}/{repo_id} "
                f"({', '.join(advertised)}) into a folder and pass --weights FOLDER"
            ) from exc
        except errors.HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", "an error")
            raise ConfigError(
                f"{spec}: the hub answered {status} for {HUB_URL}/{repo_id}/{name}; try again later, or download "
                f"({', '.join(advertised)}) into a folder and pass --weights FOLDER"
            ) from exc
    return paths


def describe(
    spec: BackboneSpec,
    *,
    version: str,
    path: Path | None,
    files: Sequence[Path],
    pretrained: bool,
    repo: str | None = None,
) -> dict[str, Any]:
    """The JSON-safe ``source`` record of a loaded backbone: what was read, and its SHA-256."""
    return {
        "library": spec.library,
        "name": spec.name,
        "version": version,
        "pretrained": pretrained,
        "path": str(path) if path is not None else None,
        "repo": repo,
        "sha256": {p.name: sha256_file(p) for p in files},
    }
