"""Checkpoint formats -> Probe: each format registers itself in its own module (its opener, a
``sniff(path) -> bool`` that recognises its files without reading weights, and a one-line
description of those files; :mod:`vaeprobe.adapters.format_registry` says how to add one),
and :func:`load` sniffs the format of a path. The opener is called as
``opener(path, device=..., **options)`` and resolves the path itself: the format is chosen
first. Its keyword parameters (other than ``path`` and ``device``) are the format's options;
those without a default are required.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from vaeprobe import io, validate

# each format's module registers it (import order does not matter: names are sorted)
from vaeprobe.adapters import (  # noqa: F401
    diffusers,
    disvae,
    jointvae,
    pythae,
    taesd,
    vdvae,
)
from vaeprobe.adapters.format_registry import (
    Format,
    FormatError,
    claimants,
    formats,
    known,
)
from vaeprobe.adapters.native import probe_for
from vaeprobe.checkpoint import load_model
from vaeprobe.probe import Probe


def sniff_format(path: str | os.PathLike) -> str:
    """The name of the one registered format whose files ``path`` looks like."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or model folder not found: {path}")
    found = claimants(path)
    if len(found) == 1:
        return found[0]
    if found:
        raise FormatError(f"{path} looks like several formats {found}; choose one with "
                          f"format=..., e.g. vp.load(path, format={found[0]!r})")
    missing = _missing_piece(path)
    if missing:
        raise MissingPieceError(missing)
    raise FormatError(f"cannot tell the format of {path}. Known formats: {known()}. Pass "
                      f"format='<name>' (CLI: --format NAME) if the files are one of these")


def _missing_piece(path: Path) -> str | None:
    """What a state dict that no format opens lacks (:mod:`vaeprobe.adapters.diagnose`)."""
    from vaeprobe.adapters.diagnose import missing_piece

    return missing_piece(path)


class MissingPieceError(FormatError, io.CheckpointError):
    """A model file that no format opens, with what it lacks (:mod:`.diagnose`): a format
    error and a checkpoint error (it is not a vaeprobe checkpoint either)."""


def _check_options(name: str, entry: Format, options: dict) -> None:
    valid, required = entry.options()
    unknown = sorted(set(options) - set(valid))
    missing = [option for option in required if option not in options]
    if unknown:
        raise FormatError(f"unknown option(s) {unknown} for format {name!r}; its options: "
                          f"{valid or 'none'}")
    if missing:
        raise FormatError(f"format {name!r} needs option(s) {missing}, e.g. "
                          f"vp.load(path, format={name!r}, {missing[0]}=...) or CLI "
                          f"--option {missing[0]}=...")


def _describe(value) -> str:
    """A JSON-able stand-in for an option value that is an object (e.g. a trusted module)."""
    return f"<{type(value).__module__}.{type(value).__name__}>"


def load(path: str | os.PathLike, format: str | None = None, *, device=None,
         max_memory=None, allow_nonfinite: bool = False, revision: str | None = None,
         subfolder: str | None = None, **options) -> Probe:
    """Open a checkpoint of any registered format as a Probe.

    The format is chosen first (``format``, or sniffed from the files), then its opener
    resolves the path and reads the files safely (safetensors or weights-only torch files;
    pickles of objects are refused). The format, the options and a sha256 per file read go
    into ``probe.source``, which every analysis copies into its provenance.

    Parameters
    ----------
    path : str or Path
        A file or folder of the format: a vaeprobe run directory or ``ckpt_step*.pt``; a
        diffusers AutoencoderKL folder; a pythae model folder; an openai/vdvae ``*.th`` file;
        a disentangling-vae results folder; a JointVAE model folder; a TAESD-family
        encoder/decoder pair or a diffusers AutoencoderTiny folder. Or a Hugging Face Hub
        name, ``"org/name"`` (when no local path of that name exists: a local path always
        wins), fetched into the user's Hub cache with only the VAE's files
        (:mod:`vaeprobe.hub`; needs ``huggingface_hub``, the ``hub`` extra); honours
        ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE``; a pipeline repository opens its ``vae/``.
    revision : str, optional
        The Hub revision (branch, tag or commit) of a Hub name; default ``main``.
    subfolder : str, optional
        The folder of the model inside a Hub repository (e.g. ``"vae"``) or a local folder.
    format : str, optional
        One of ``vaeprobe.adapters.formats.names()``; sniffed when None.
    device : str or torch.device, optional
        CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
    max_memory : int or str, optional
        The most memory (bytes, or text such as ``"16GB"``) the model's weights plus the
        activations of one image may need; its config is checked against it before anything is
        built (:mod:`vaeprobe.validate`). Default ``$VAEPROBE_MAX_MEMORY``, else half the
        available memory.
    allow_nonfinite : bool
        Open weights holding NaN or inf values (with a warning naming them) instead of refusing.
    **options
        The format's options, e.g. ``ema=False`` (vaeprobe), ``image_size=256`` (diffusers),
        ``pixel_range=(-1, 1)`` (pythae), ``hparams="cifar10"`` (vdvae). Unknown or missing
        required options are errors that name the valid ones.

    Raises
    ------
    vaeprobe.validate.ConfigError, vaeprobe.validate.BudgetError
        A config value of the wrong type or range; a model past ``max_memory`` (ValueErrors
        naming the file, the key and the estimate).
    vaeprobe.io.CheckpointError
        Unreadable, truncated or unsafe files; weights that do not fit the config.
    vaeprobe.validate.WeightsError
        Integer weights where the network has floats; non-finite weights (unless allowed).

    Examples
    --------
    >>> probe = load("runs/demo")  # doctest: +SKIP
    >>> probe.layers[0].name  # doctest: +SKIP
    'z00_r1'
    >>> load("sd-vae-ft-mse/", image_size=256).source["format"]  # doctest: +SKIP
    'diffusers'
    """
    from vaeprobe.distributed import resolve_device

    path, hub_source = _resolve_path(path, revision, subfolder)
    if format is None:
        format = sniff_format(path)
    elif format not in formats:
        raise FormatError(f"unknown format {format!r}; known formats: {known()}")
    entry = formats.get(format)
    others = claimants(path) if path.exists() else []
    if others and format not in others:
        if others == ["vaeprobe"] and (missing := _missing_piece(path)):
            raise MissingPieceError(missing)  # any .pt file sniffs as 'vaeprobe': say more
        raise FormatError(f"{path} looks like a {others[0]!r} checkpoint, not {format!r} "
                          f"({entry.files}); pass format={others[0]!r} or format=None")
    _check_options(format, entry, options)
    device = resolve_device(device)  # None: cuda:LOCAL_RANK (torchrun), else the CPU
    # defaults keep a policy set around the call (e.g. the CLI's around vp.spectrum of a run)
    policy = validate.load_policy(max_memory=max_memory, allow_nonfinite=allow_nonfinite) if (
        max_memory is not None or allow_nonfinite) else contextlib.nullcontext()
    with policy:
        try:
            probe = entry.open_function()(path, device=device, **options)
        except io.CheckpointError:  # a .pt file sniffs as 'vaeprobe': a bare state dict?
            missing = _missing_piece(path) if format == "vaeprobe" else None
            if missing:
                raise MissingPieceError(missing) from None
            raise
    probe.source.update(format=format, options=json.dumps(options, default=_describe,
                                                          sort_keys=True), **hub_source)
    if allow_nonfinite:
        probe.source["allow_nonfinite"] = 1
    return probe


def _resolve_path(path, revision: str | None, subfolder: str | None) -> tuple[Path, dict]:
    """(local path, Hub provenance): a Hub name ``org/name`` fetched (:mod:`vaeprobe.hub`),
    a local path as it is (plus ``subfolder``)."""
    from vaeprobe import hub

    if hub.is_hub_name(path):
        return hub.resolve(str(path), revision, subfolder)
    if revision is not None:
        raise FormatError(f"revision={revision!r} is for a Hub name ('org/name'); {path} is a "
                          f"local path")
    path = Path(path)
    return (path / subfolder if subfolder else path), {}


def as_probe(source, format: str | None = None, *, device=None, max_memory=None,
             allow_nonfinite: bool = False, **options) -> Probe:
    """Resolve any model source to a Probe: the twin of :func:`vaeprobe.data.as_dataset`.

    Every public noun (``vp.rate``, ``vp.iwae``, ``vp.sample_quality``, ``vp.samples``,
    ``vp.audit``, ...) calls this on its first argument, so each takes what :func:`load` takes.

    Parameters
    ----------
    source : Probe, str or Path
        A Probe (returned as it is); a vaeprobe run directory (its latest checkpoint); a
        checkpoint file; or a third-party file or folder of any registered format (sniffed).
    format : str, optional
        The checkpoint format, as for :func:`load`; sniffed when None.
    device : str or torch.device, optional
        Where a path is opened (CUDA when available). A Probe stays where it is.
    **options
        The format's options, as for :func:`load`.

    Raises
    ------
    TypeError
        ``source`` is neither a Probe nor a path; or it is a Probe and ``format`` / options
        were given (those open a checkpoint).
    FileNotFoundError, FormatError
        As :func:`load`.

    Examples
    --------
    >>> as_probe(42)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: a model source must be a vp.Probe, a run directory, a checkpoint file or a ...
    """
    if isinstance(source, Probe):
        if format is not None or options or max_memory is not None or allow_nonfinite:
            raise TypeError(f"format= and options {sorted(options)} open a checkpoint; the "
                            f"source is already a Probe")
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a model source must be a vp.Probe, a run directory, a checkpoint "
                        f"file or a model folder (vp.load's paths); got "
                        f"{type(source).__name__}")
    return load(source, format=format, device=device, max_memory=max_memory,
                allow_nonfinite=allow_nonfinite, **options)


__all__ = ["Format", "FormatError", "MissingPieceError", "as_probe", "formats", "load",
           "load_model", "probe_for", "sniff_format"]
