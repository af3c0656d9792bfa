"""Checkpoint formats -> Probe: one registry entry per format, sniffed by :func:`load`.

Each :class:`Format` names its opener as ``"module:function"`` (imported only when that format
is opened, so optional dependencies stay optional), a ``sniff(path) -> bool`` that recognises
its files without reading weights, and a one-line description of those files. The opener is
called as ``opener(path, device=..., **options)`` and resolves the path itself: the format is
chosen first. Its keyword parameters (other than ``path`` and ``device``) are the format's
options; those without a default are required.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaeprobe import io, validate
from vaeprobe.adapters.native import probe_for
from vaeprobe.checkpoint import load_model
from vaeprobe.probe import Probe
from vaeprobe.registry import Registry
from vaeprobe.run import CONFIG_NAME, checkpoint_step, checkpoints


@dataclass(frozen=True)
class Format:
    """One checkpoint format: its opener, how to recognise its files, and what they are."""

    opener: str  # "package.module:function", imported when the format is opened
    sniff: Callable[[Path], bool]  # does this path look like the format? (reads no weights)
    files: str  # what the format's files look like, for error messages

    def open_function(self) -> Callable[..., Probe]:
        module, _, function = self.opener.partition(":")
        return getattr(importlib.import_module(module), function)

    def __call__(self, path, **options) -> Probe:
        """Open ``path`` with this format's opener directly (no sniffing, no provenance of the
        options: :func:`load` adds those)."""
        return self.open_function()(path, **options)

    def options(self) -> tuple[list[str], list[str]]:
        """(all option names, required option names) from the opener's signature."""
        parameters = list(inspect.signature(self.open_function()).parameters.values())[1:]
        names = [p.name for p in parameters if p.name != "device"
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        required = [p.name for p in parameters if p.name in names and p.default is p.empty]
        return names, required


def _check_format(name: str, entry) -> None:
    if not isinstance(entry, Format):
        raise TypeError(f"checkpoint format {name!r} must be registered as a Format(opener, "
                        f"sniff, files), got {type(entry).__name__}")
    if not re.fullmatch(r"[\w.]+:\w+", entry.opener):
        raise ValueError(f"checkpoint format {name!r}: opener must be 'package.module:function', "
                         f"got {entry.opener!r}")
    if not callable(entry.sniff):
        raise TypeError(f"checkpoint format {name!r}: sniff must be callable(path) -> bool")


formats = Registry("checkpoint format", check=_check_format)


def _is_native(path: Path) -> bool:
    if path.is_dir():  # a run directory: checkpoints, or the config a run writes first
        return bool(checkpoints(path)) or _json_has(path / CONFIG_NAME, "train")
    return (checkpoint_step(path) is not None
            or (path.suffix in (".pt", ".safetensors") and not _is_pythae(path)
                and not _is_diffusers(path) and not _is_disvae(path)
                and not _is_jointvae(path) and not _is_taesd(path)))


def _is_pythae(path: Path) -> bool:
    folder = path.parent if path.is_file() else path
    return (folder / "model_config.json").is_file() and (folder / "model.pt").is_file()


def _is_vdvae(path: Path) -> bool:
    names = ("-model-ema.th", "-model.th")
    if path.is_dir():  # a VDVAE save folder
        return any(p.name.endswith(names) for p in path.iterdir())
    return path.name.endswith(names)


def _is_diffusers(path: Path) -> bool:
    from vaeprobe.adapters.diffusers import sniff  # the model code, not diffusers itself

    return sniff(path)


def _is_disvae(path: Path) -> bool:
    from vaeprobe.adapters.disvae import sniff

    return sniff(path)


def _is_jointvae(path: Path) -> bool:
    from vaeprobe.adapters.jointvae import sniff

    return sniff(path)


def _is_taesd(path: Path) -> bool:
    from vaeprobe.adapters.taesd import sniff

    return sniff(path)


def _json_has(path: Path, key: str) -> bool:
    try:
        return key in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


formats.register("vaeprobe", Format(
    "vaeprobe.adapters.native:open_native", _is_native,
    "a vaeprobe run directory or ckpt_step*.pt / .safetensors file"))
formats.register("diffusers", Format(
    "vaeprobe.adapters.diffusers:open_diffusers", _is_diffusers,
    "a folder with config.json (_class_name AutoencoderKL) and a .safetensors file"))
formats.register("pythae", Format(
    "vaeprobe.adapters.pythae:open_pythae", _is_pythae,
    "a pythae model.save folder: model_config.json + model.pt"))
formats.register("disvae", Format(
    "vaeprobe.adapters.disvae:open_disvae", _is_disvae,
    "a disentangling-vae results folder: specs.json (model_type, rec_dist) + model.pt"))
formats.register("jointvae", Format(
    "vaeprobe.adapters.jointvae:open_jointvae", _is_jointvae,
    "a JointVAE trained_models folder: specs.json (latent_spec) + model.pt"))
formats.register("taesd", Format(
    "vaeprobe.adapters.taesd:open_taesd", _is_taesd,
    "a tiny autoencoder: <taesd|taesdxl|taesd3|taef1|taef2>_encoder.pth + _decoder.pth, or a "
    "diffusers AutoencoderTiny folder (config.json + .safetensors)"))
formats.register("vdvae", Format(
    "vaeprobe.adapters.vdvae:open_vdvae", _is_vdvae,
    "an openai/vdvae *-model-ema.th or *-model.th file, or a folder with one"))


class FormatError(ValueError):
    """A path whose format is unknown, ambiguous or not the one asked for, or bad options."""


def _known() -> str:
    return "; ".join(f"{name!r}: {formats.get(name).files}" for name in formats.names())


def sniff_format(path: str | os.PathLike) -> str:
    """The name of the one registered format whose files ``path`` looks like."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or model folder not found: {path}")
    found = [name for name in formats.names() if formats.get(name).sniff(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise FormatError(f"{path} looks like several formats {found}; choose one with "
                          f"format=..., e.g. vp.load(path, format={found[0]!r})")
    raise FormatError(_missing_piece(path) or
                      f"cannot tell the format of {path}. Known formats: {_known()}. Pass "
                      f"format='<name>' (CLI: --format NAME) if the files are one of these")


def _missing_piece(path: Path) -> str | None:
    """What a state dict that no format opens lacks (:mod:`vaeprobe.adapters.diagnose`)."""
    from vaeprobe.adapters.diagnose import missing_piece

    return missing_piece(path)


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
         max_memory=None, allow_nonfinite: bool = False, **options) -> Probe:
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
        encoder/decoder pair or a diffusers AutoencoderTiny folder.
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
    from vaeprobe.distributed import default_device

    path = Path(path)
    if format is None:
        format = sniff_format(path)
    elif format not in formats:
        raise FormatError(f"unknown format {format!r}; known formats: {_known()}")
    entry = formats.get(format)
    if path.exists() and not entry.sniff(path):
        others = [name for name in formats.names() if formats.get(name).sniff(path)]
        if others:
            if others == ["vaeprobe"] and (missing := _missing_piece(path)):
                raise FormatError(missing)  # any .pt file sniffs as 'vaeprobe': say more
            raise FormatError(f"{path} looks like a {others[0]!r} checkpoint, not {format!r} "
                              f"({entry.files}); pass format={others[0]!r} or format=None")
    _check_options(format, entry, options)
    device = device if device is not None else default_device()  # cuda:LOCAL_RANK (torchrun)
    # defaults keep a policy set around the call (e.g. the CLI's around vp.spectrum of a run)
    policy = validate.load_policy(max_memory=max_memory, allow_nonfinite=allow_nonfinite) if (
        max_memory is not None or allow_nonfinite) else contextlib.nullcontext()
    with policy:
        try:
            probe = entry.open_function()(path, device=device, **options)
        except io.CheckpointError:  # a .pt file sniffs as 'vaeprobe': a bare state dict?
            missing = _missing_piece(path) if format == "vaeprobe" else None
            if missing:
                raise FormatError(missing) from None
            raise
    probe.source.update(format=format, options=json.dumps(options, default=_describe,
                                                          sort_keys=True))
    if allow_nonfinite:
        probe.source["allow_nonfinite"] = 1
    return probe


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


__all__ = ["Format", "FormatError", "as_probe", "formats", "load", "load_model", "probe_for",
           "sniff_format"]
