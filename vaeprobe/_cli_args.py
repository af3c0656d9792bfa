"""The argument machinery of ``vaeprobe.cli``: flags whose defaults come from the public
functions' signatures, the shared flags (--threads, --out, --plot), how a model is opened
(--format, --option, --no-ema, --device), and what runs around every command (outputs checked
before any work, threads said, results written after, errors in one line)."""

from __future__ import annotations

import argparse
import inspect
import sys

from vaeprobe.adapters.format_registry import checkpoint_help

# how a None default reads in --help, per parameter
NONE_MEANS = {
    "n_images": "all",
    "sections": "all",
    "data": "the test split of the data the run was trained on",
    "chunk": "the model's rows per pass / --batch-size",
    "kind": "the model's own likelihood kind",
    "device": "cuda when available, else cpu",
    "format": "recognised from the files",
    "weights": "found in $VAEPROBE_WEIGHTS_DIR or the torch hub cache",
    "prc_weights": "found in $VAEPROBE_WEIGHTS_DIR or the torch hub cache",
    "lpips_weights": "found in $VAEPROBE_WEIGHTS_DIR or the torch hub cache",
    "spectrum_distortion": "none: no PCA spectrum",
    "root": "none",
    "max_memory": "$VAEPROBE_MAX_MEMORY, else half the available memory",
    "source": "the checkpoint path the compressed file names",
}


class ApiArguments:
    """Adds flags to a subcommand with the defaults of one public function's parameters."""

    def __init__(self, parser: argparse.ArgumentParser, function, **extra_functions):
        self.parser = parser
        self.functions = {"": function, **extra_functions}
        self.renames: dict[str, tuple[str, str]] = {}  # dest -> (function key, parameter)
        parser.set_defaults(api=function, api_extra=extra_functions, api_renames=self.renames)

    def add(self, *flags: str, help: str, param: str | None = None, of: str = "",
            units: str = "", **options) -> None:
        """A flag whose default is ``param`` of the function ``of`` ("" the command's own)."""
        dest = options.get("dest") or dest_of(flags)
        param = param or dest
        self.renames[dest] = (of, param)
        default = inspect.signature(self.functions[of]).parameters[param].default
        shown = NONE_MEANS.get(param, "none") if default is None else show_default(default)
        unit = f" {units}" if units and default is not None else ""
        choices = options.get("choices")
        if choices and len(",".join(choices)) > 30:  # a long list reads better in the help
            options.setdefault("metavar", dest.upper())
            help = f"{help}; one of: {', '.join(choices)}"
        self.parser.add_argument(*flags, default=default,
                                 help=f"{help} (default: {shown}{unit})", **options)

    def bind(self, dest: str, param: str | None = None, of: str = "") -> None:
        """Pass the parsed ``dest`` (a flag or positional added with ``parser.add_argument``,
        whose help and default are its own) as ``param`` of the function ``of``."""
        parameters = inspect.signature(self.functions[of]).parameters
        if (param or dest) not in parameters:
            raise KeyError(f"cannot bind {dest!r}: {self.functions[of].__name__} has no "
                           f"parameter {param or dest!r}; name one of {list(parameters)}")
        self.renames[dest] = (of, param or dest)


def bound_arguments(args, of: str = "") -> dict:
    """The keyword arguments of a command's function ``of`` ("" its own) from the parsed
    flags: every flag :class:`ApiArguments` added (or bound) for a parameter of it (the
    loading flags, of :func:`vaeprobe.load`, are :func:`load_probe`'s)."""
    return {param: getattr(args, dest) for dest, (function, param) in args.api_renames.items()
            if function == of}


def dest_of(flags) -> str:
    """argparse's dest: the first long flag (else the first short), dashes as underscores."""
    long = [flag for flag in flags if flag.startswith("--")]
    return (long or list(flags))[0].lstrip("-").replace("-", "_")


def show_default(default) -> str:
    if isinstance(default, (tuple, list)):
        return " ".join(str(value) for value in default)
    return str(default)


def add_subparser(sub, name: str, help: str, example: str, description: str = ""):
    import textwrap

    return sub.add_parser(name, help=help, description=textwrap.fill(description or help, 79),
                          epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common(parser, *, out: bool = True, plot: bool = True) -> None:
    """--threads, and --out / --plot (checked before any work)."""
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: 0 = OMP_NUM_THREADS when set, else "
                        "the usable cores; said on stderr)")
    parser.add_argument("--strict-data", action="store_true", help="refuse data changed to "
                        "fit the model (channels converted, resized, levels 0/1) instead of "
                        "warning (default: warn)")
    if out:
        parser.add_argument("--out", default=None, help="write the results Dataset here "
                            "(netCDF, .nc; default: not written)")
    if plot:
        parser.add_argument("--plot", default=None, help="write a PNG figure here (default: "
                            "not drawn)")
    if out or plot:
        parser.add_argument("--overwrite", action="store_true", help="replace an existing "
                            "--out / --plot file that is not a vaeprobe result (default: "
                            "refuse; vaeprobe's own results are replaced)")


# ---- opening a model ------------------------------------------------------------------------
def __getattr__(name: str):
    """``CHECKPOINT_HELP``: the help of a CHECKPOINT argument, generated from the format
    registry when asked for (:func:`vaeprobe.adapters.format_registry.checkpoint_help`)."""
    if name == "CHECKPOINT_HELP":
        return checkpoint_help()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_load_arguments(parser, api: ApiArguments) -> None:
    """How a model is opened: its format (sniffed by default), its options, the device."""
    from vaeprobe.adapters import formats

    api.add("--format", of="load", choices=formats.names(),
            help="checkpoint format")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format option, repeatable, e.g. hparams=cifar10, "
                        "image_size=256, pixel_range=[-1,1] (values read as JSON when they "
                        "parse, else as text; default: none)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not EMA, weights "
                        "(formats with EMA weights; default: EMA weights)")
    api.add("--device", of="load", help="cpu, cuda or cuda:N")
    add_safety_arguments(parser, api)


def add_safety_arguments(parser, api: ApiArguments) -> None:
    """--max-memory and --allow-nonfinite: what an untrusted model may ask for."""
    api.add("--max-memory", of="load", help="refuse a model whose weights plus one image's "
            "activations would need more memory than this (e.g. 16GB), checked before building")
    parser.add_argument("--allow-nonfinite", action="store_true", help="open weights that "
                        "hold NaN or inf values, with a warning (default: refuse them)")


def parse_options(pairs: list[str]) -> dict:
    """``["key=value", ...]`` -> options; a value is JSON when it parses (256, [-1,1], false),
    else text (cifar10)."""
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def load_probe(args, path=None):
    """The model of a command through the one resolver, ``vp.as_probe`` (what the API does)."""
    import vaeprobe as vp

    options = parse_options(args.option)
    if args.no_ema:
        options["ema"] = False
    return vp.as_probe(path or args.checkpoint, args.format, device=args.device,
                       max_memory=getattr(args, "max_memory", None),
                       allow_nonfinite=getattr(args, "allow_nonfinite", False), **options)


def model_command(sub, name: str, function, help: str, example: str) -> tuple:
    """A subcommand over one model: CHECKPOINT, --data, --n-images, --batch-size, --seed and
    the loading flags, with the defaults of ``function``."""
    import vaeprobe as vp

    parser = add_subparser(sub, name, help, example)
    api = ApiArguments(parser, function, load=vp.load)
    model_arguments(parser, api)
    return parser, api


def model_arguments(parser, api: ApiArguments) -> None:
    """The arguments of a command over one model (:func:`model_command`): CHECKPOINT, --data
    (bound to the function's ``data``), --n-images, --batch-size, --seed, the loading flags,
    --threads, --strict-data, --out, --plot, --overwrite."""
    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--data", required=True, help="evaluation images: a dataset name "
                        "(e.g. patches32:test; folder:PATH is read at the model's image size)")
    api.bind("data")
    api.add("--n-images", type=int, help="evaluate a seeded random subset of this many images")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    api.add("--seed", type=int, help="seeds the subset and every draw (results do not depend "
            "on --batch-size)")
    add_load_arguments(parser, api)
    add_common(parser)


# ---- running a command ----------------------------------------------------------------------
def finish(ds, args, draw) -> int:
    """After the summary: warnings, then the Dataset and the figure when asked. A failed write
    is named and the other output still written; the exit status is then 1."""
    from vaeprobe import distributed, io
    from vaeprobe._analysis import flag_nonfinite
    from vaeprobe.plot import save_figure

    if not distributed.is_main():  # under torchrun every rank has the Dataset; rank 0 writes
        return 0
    flag_nonfinite(ds)
    if ds.attrs.get("warning"):
        for sentence in str(ds.attrs["warning"]).split("; "):
            print(f"WARNING: {sentence}")
    failed = []
    overwrite = {"overwrite": True} if getattr(args, "overwrite", False) else {}
    for path, write in ((args.out, lambda: io.save(ds, args.out, **overwrite)),
                        (args.plot, lambda: save_figure(draw(ds), args.plot))):
        if not path:
            continue
        try:
            write()
            print(f"wrote {path}")
        except OSError as error:
            failed.append(str(path))
            print(f"vaeprobe {args.command}: error: {error}", file=sys.stderr)
    if failed:
        print(f"vaeprobe {args.command}: could not write {', '.join(failed)}; the results "
              f"above were computed but not saved there", file=sys.stderr)
        return 1
    return _headline_status(ds, args.command)


# the numbers each command reports first; NaN or inf there makes the exit status NAN_EXIT
HEADLINES = {"rate": ("total_rate",), "iwae": ("bpd_mean",), "samples": ("fid",),
             "quality": ("fid",), "spectrum": ("high_frequency_fraction",),
             "pca": ("total_variance",),
             "information": ("total_rate", "rate_sampled", "total_mutual_information",
                             "total_marginal_kl"),
             "compress": ("coded_bpd", "elbo_bpd", "coded_bits")}
NAN_EXIT = 3


def _headline_status(ds, command: str) -> int:
    """0, or :data:`NAN_EXIT` (said on stderr) when a headline number of the command is NaN or
    infinite."""
    import numpy as np

    bad = [name for name in HEADLINES.get(command, ()) if name in ds
           and ds[name].dtype.kind in "fc" and not np.isfinite(ds[name].values).all()]
    return nonfinite_status(command, bad, "the result ", ", ",
                            "; see the WARNING lines above")


def nonfinite_status(command: str, bad: list[str], lead: str = "", sep: str = ", ",
                     hint: str = "") -> int:
    """The one policy for non-finite headline numbers: 0 when ``bad`` is empty, else the
    names said on stderr and :data:`NAN_EXIT`."""
    if not bad:
        return 0
    print(f"vaeprobe {command}: error: {lead}{sep.join(bad)} is not a number (NaN or inf)"
          f"{hint} (exit status {NAN_EXIT})", file=sys.stderr)
    return NAN_EXIT


def check_outputs(args) -> None:
    """Every output path of the command, checked before any work: never one of its inputs (the
    model's files, its run directory's checkpoints and config, a data file), an existing file
    replaced only when it is a vaeprobe result (or --overwrite), and writable."""
    from vaeprobe import outputs  # the one output policy

    inputs = _input_paths(args)
    for flag in ("out", "plot", "preview"):
        if flag == "out" and getattr(args, "out_is_directory", False):
            _check_directory(args.out, inputs)
        elif getattr(args, flag, None):
            outputs.check_output(getattr(args, flag), f"--{flag}", inputs=inputs,
                            overwrite=getattr(args, "overwrite", False))


def _input_paths(args) -> list:
    """The paths a command reads: its model (file and folder) and data given as paths."""
    from pathlib import Path

    found = []
    for name in ("checkpoint", "source", "data", "reference", "name", "primary"):
        value = getattr(args, name, None)
        if not isinstance(value, str) or not value:
            continue
        scheme, sep, rest = value.partition(":")
        path = Path(rest if sep and scheme in ("npz", "folder") else value)
        if path.exists():
            found.append(path)
        if path.is_file() and path.suffix in (".pt", ".safetensors", ".th"):
            found.append(path.parent)  # the run directory or model folder of a checkpoint
    return found


def _check_directory(path, inputs=()) -> None:
    """An output directory: new or existing, not a file, not one of the command's inputs."""
    from pathlib import Path

    path = Path(path)
    if any(path.resolve() == Path(item).resolve() for item in inputs):
        raise ValueError(f"--out {path} is one of the command's inputs (the model or data); "
                         f"name another directory")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; the command writes a directory (name a new "
                         f"or an existing directory)")


def say_threads(args) -> None:
    from vaeprobe._threads import apply_threads

    if hasattr(args, "threads"):
        _, said = apply_threads(args.threads)
        print(f"vaeprobe {args.command}: {said}", file=sys.stderr)


def error_text(error: BaseException) -> str:
    from vaeprobe.weights import MissingWeightsError

    if isinstance(error, MissingWeightsError):
        return error.describe(cli=True)  # the flags, not the Python keywords
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # str(KeyError) adds quotes
    return str(error)
