"""Pretrained weights for the fidelity metrics, found without a network where possible.

Search order: an explicit path, ``$VAEPROBE_WEIGHTS_DIR/<file>``, the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``). A missing file is downloaded into the hub cache unless
``VAEPROBE_OFFLINE=1``; when that fails the error names the file, its URL and where to put it.
Files are verified against the sha256 prefix in their names and opened with
``torch.load(weights_only=True)``: a file that would run code is refused.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from vaeprobe.io import atomic_path, sha256_file


@dataclass(frozen=True)
class WeightsFile:
    name: str  # what it is for
    filename: str
    url: str
    sha256_prefix: str  # the hash prefix in the file name (torch hub convention)


KNOWN = {
    "inception-v3-compat": WeightsFile(
        "Inception-v3 (FID/KID, TF-compatible, torch-fidelity)",
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth", ""),
    "vgg16": WeightsFile("VGG16 (precision/recall)", "vgg16-397923af.pth",
                         "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "alexnet": WeightsFile("AlexNet (LPIPS trunk)", "alexnet-owt-7be5be79.pth",
                           "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                           "7be5be79"),
}


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("VAEPROBE_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["VAEPROBE_WEIGHTS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def locate(key: str) -> Path | None:
    """The first existing copy of a known weights file, or None."""
    entry = KNOWN[key]
    for directory in search_dirs():
        if (directory / entry.filename).is_file():
            return directory / entry.filename
    return None


def _download(entry: WeightsFile, target: Path) -> None:
    with urllib.request.urlopen(entry.url, timeout=60) as response, \
            atomic_path(target, ".download") as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as handle:
            while block := response.read(1 << 20):
                digest.update(block)
                handle.write(block)
        if entry.sha256_prefix and not digest.hexdigest().startswith(entry.sha256_prefix):
            raise OSError(f"downloaded {entry.filename} has the wrong sha256")


class MissingWeightsError(FileNotFoundError):
    """Weights files that could not be found (all of them, not the first alone).

    ``missing`` holds ``(key, argument, reason)`` per file; ``argument`` is the keyword that
    takes an explicit path (``weights``, ``prc_weights``, ``lpips_weights``).
    :meth:`describe` words the fix for Python (``weights=PATH``) or the command line
    (``--weights PATH``).
    """

    def __init__(self, missing: list[tuple[str, str, str]]):
        self.missing = list(missing)
        super().__init__(self.describe(cli=False))

    def describe(self, cli: bool = False) -> str:
        places = " or ".join(str(d) for d in search_dirs())
        lines = [f"{len(self.missing)} pretrained weights file(s) missing:"]
        for key, argument, reason in self.missing:
            entry = KNOWN[key]
            how = f"--{argument.replace('_', '-')} PATH" if cli else f"{argument}=PATH"
            lines.append(f"  {entry.filename} ({entry.name}): {reason}; download it from "
                         f"{entry.url}, or pass {how}")
        lines.append(f"put the files in {places} (or set VAEPROBE_WEIGHTS_DIR); "
                     f"`vaeprobe weights` lists what is present")
        return "\n".join(lines)


def require(needed: list[tuple[str, str | os.PathLike | None, str]]) -> dict[str, Path]:
    """Resolve every ``(key, explicit path or None, argument name)`` before any work.

    Returns ``{key: path}``; raises :class:`MissingWeightsError` listing every missing file.
    """
    found, missing = {}, []
    for key, path, argument in needed:
        try:
            found[key] = resolve(key, path)
        except FileNotFoundError as error:
            reason = "not found" if path is None else f"{path} does not exist"
            if path is None and "download failed" in str(error):
                reason = "not found, download failed"
            elif path is None and os.environ.get("VAEPROBE_OFFLINE", "0") == "1":
                reason = "not found (VAEPROBE_OFFLINE=1: no download)"
            missing.append((key, argument, reason))
    if missing:
        raise MissingWeightsError(missing)
    return found


def resolve(key: str, path: str | os.PathLike | None = None) -> Path:
    """Path of the weights for ``key`` (see module docstring); raises with the fix."""
    if key not in KNOWN:
        raise KeyError(f"unknown weights {key!r}; known: {sorted(KNOWN)}")
    entry = KNOWN[key]
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights file not found: {path} (expected "
                                    f"{entry.filename}, {entry.name})")
        return Path(path)
    found = locate(key)
    if found is not None:
        return found
    target = search_dirs()[-1] / entry.filename
    reason = "VAEPROBE_OFFLINE=1"
    if os.environ.get("VAEPROBE_OFFLINE", "0") != "1":
        try:
            _download(entry, target)
            return target
        except OSError as error:  # URLError is an OSError
            reason = f"download failed: {error}"
    places = " or ".join(str(d) for d in search_dirs())
    raise FileNotFoundError(
        f"missing weights file {entry.filename} ({entry.name}); {reason}. Download it from "
        f"{entry.url} and put it in {places} (or set VAEPROBE_WEIGHTS_DIR), or pass weights=PATH"
    )


def load_state_dict(path: Path) -> dict:
    """A weights file's tensors, refusing anything that would execute code."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refused to load {path}: not a plain state dict "
                         f"({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def status() -> list[dict]:
    """What is present and what is missing (for ``vaeprobe weights``)."""
    rows = []
    for key, entry in KNOWN.items():
        found = locate(key)
        rows.append(dict(key=key, file=entry.filename, purpose=entry.name,
                         path=str(found) if found else None, url=entry.url,
                         sha256=sha256_file(found) if found else None))
    return rows
