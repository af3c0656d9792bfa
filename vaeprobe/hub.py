"""Models named on the Hugging Face Hub: ``vp.load("org/name")`` -> a local snapshot folder.

A source that is not an existing local path and reads ``org/name`` is a Hub repository. It is
fetched with ``huggingface_hub.snapshot_download`` into the user's cache (``HF_HUB_CACHE``,
else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), only the VAE's files: the JSON
configs, ``.safetensors`` weights and TAESD ``*_encoder.pth`` / ``*_decoder.pth`` of the
chosen folder (never a pipeline's UNet or text encoder, never pickled ``.bin`` files). A
pipeline repository (``model_index.json``) resolves to its ``vae/`` subfolder. With
``HF_HUB_OFFLINE=1`` nothing is downloaded: a cached snapshot is used, and a repository not in
the cache is one :class:`HubError` naming the repository and the cache. The snapshot folder
then opens exactly as a local folder would (formats sniffed from its files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
VAE_FILES = ("*.json", "*.safetensors", "*_encoder.pth", "*_decoder.pth")
PIPELINE_INDEX, PIPELINE_VAE = "model_index.json", "vae"
TRUE = ("1", "on", "yes", "true")


class HubError(FileNotFoundError):
    """A Hub name that cannot be had: not cached while offline, unknown, or unreachable."""


def is_hub_name(source) -> bool:
    """``org/name`` that is not a local path (a local file or folder always wins)."""
    return (isinstance(source, (str, os.PathLike)) and HUB_NAME.fullmatch(str(source)) is not None
            and not Path(source).exists())


def cache_dir() -> Path:
    """The Hub cache huggingface_hub uses, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                             "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def resolve(name: str, revision: str | None = None, subfolder: str | None = None
            ) -> tuple[Path, dict]:
    """(local folder of the VAE's files, provenance) for the Hub repository ``name``.

    ``subfolder`` None: the repository's root, or ``vae/`` when it is a pipeline
    (``model_index.json``). ``revision``: a branch, tag or commit (default ``main``).
    """
    download = _snapshot_download()
    subfolder = subfolder.strip("/") if subfolder else None
    # first the small files that say where the VAE is (a pipeline's model_index.json)
    root = _fetch(download, name, revision, [PIPELINE_INDEX, "config.json"] + (
        [f"{subfolder}/config.json"] if subfolder else []), ignore=None)
    if subfolder is None and (root / PIPELINE_INDEX).is_file():
        subfolder = PIPELINE_VAE
    prefix = f"{subfolder}/" if subfolder else ""
    root = _fetch(download, name, revision, [prefix + pattern for pattern in VAE_FILES],
                  ignore=None if subfolder else ["*/*"])  # the root's files, no subfolders
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise HubError(f"Hub repository {name!r} (revision {revision or 'main'}) has no "
                       f"folder {subfolder!r}; pass subfolder= one of its folders")
    source = dict(hub_repo=name, hub_revision=root.name, hub_subfolder=subfolder or "")
    return folder, source


def _snapshot_download():
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("opening a model by its Hub name ('org/name') needs huggingface_hub: "
                          "pip install 'vaeprobe[hub]' (or pip install huggingface_hub); or "
                          "pass a local folder") from None
    return snapshot_download


def _fetch(download, name: str, revision: str | None, allow: list[str], ignore) -> Path:
    """One snapshot_download of ``allow`` (local files only when offline), errors as
    HubError."""
    from huggingface_hub import errors

    cache = cache_dir()
    try:
        return Path(download(name, revision=revision, cache_dir=str(cache),
                             allow_patterns=allow, ignore_patterns=ignore,
                             local_files_only=offline()))
    except errors.LocalEntryNotFoundError:
        raise HubError(
            f"{name!r} is neither a local path nor a Hub repository in the cache at {cache} "
            f"(revision {revision or 'main'}), and HF_HUB_OFFLINE=1 forbids downloading it: "
            f"run once with network access (unset HF_HUB_OFFLINE), set HF_HUB_CACHE to the "
            f"cache that holds it, or pass a local folder") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError,
            errors.GatedRepoError) as error:
        raise HubError(f"{name!r} is not a local path, and the Hub says: "
                       f"{str(error).splitlines()[0]}") from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise HubError(f"{name!r} is not a local path, and downloading it from the Hub failed "
                       f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); with "
                       f"HF_HUB_OFFLINE=1 a cached copy in {cache} is used") from None


__all__ = ["HubError", "cache_dir", "is_hub_name", "offline", "resolve"]
