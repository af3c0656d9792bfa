"""``vaeprobe <command>``: a thin layer over the public functions.

Every flag that mirrors a parameter of a public function takes its default (and its choices)
from that function's signature and constants, so the two cannot drift: each subcommand records
its function (``api``) and ``tests/test_cli.py`` checks every default against it. Before any
work, each command checks that ``--out`` / ``--plot`` can be written, chooses its CPU threads
(``--threads``, said on stderr), and turns warnings into one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
import warnings
from io import StringIO

from vaeprobe._version import __version__

# how a None default reads in --help, per parameter
NONE_MEANS = {
    "n_images": "all",
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
}


class _ApiArguments:
    """Adds flags to a subcommand with the defaults of one public function's parameters."""

    def __init__(self, parser: argparse.ArgumentParser, function, **extra_functions):
        self.parser = parser
        self.functions = {"": function, **extra_functions}
        self.renames: dict[str, tuple[str, str]] = {}  # dest -> (function key, parameter)
        parser.set_defaults(api=function, api_extra=extra_functions, api_renames=self.renames)

    def add(self, *flags: str, help: str, param: str | None = None, of: str = "",
            units: str = "", **options) -> None:
        """A flag whose default is ``param`` of the function ``of`` ("" the command's own)."""
        dest = options.get("dest") or _dest(flags)
        param = param or dest
        self.renames[dest] = (of, param)
        default = inspect.signature(self.functions[of]).parameters[param].default
        shown = NONE_MEANS.get(param, "none") if default is None else _show(default)
        unit = f" {units}" if units and default is not None else ""
        choices = options.get("choices")
        if choices and len(",".join(choices)) > 30:  # a long list reads better in the help
            options.setdefault("metavar", dest.upper())
            help = f"{help}; one of: {', '.join(choices)}"
        self.parser.add_argument(*flags, default=default,
                                 help=f"{help} (default: {shown}{unit})", **options)


def _dest(flags) -> str:
    """argparse's dest: the first long flag (else the first short), dashes as underscores."""
    long = [flag for flag in flags if flag.startswith("--")]
    return (long or list(flags))[0].lstrip("-").replace("-", "_")


def _show(default) -> str:
    if isinstance(default, (tuple, list)):
        return " ".join(str(value) for value in default)
    return str(default)


def _subparser(sub, name: str, help: str, example: str, description: str = ""):
    import textwrap

    return sub.add_parser(name, help=help, description=textwrap.fill(description or help, 79),
                          epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(parser, *, out: bool = True, plot: bool = True) -> None:
    """--threads, and --out / --plot (checked before any work)."""
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: 0 = OMP_NUM_THREADS when set, else "
                        "the usable cores; said on stderr)")
    if out:
        parser.add_argument("--out", default=None, help="write the results Dataset here "
                            "(netCDF, .nc; default: not written)")
    if plot:
        parser.add_argument("--plot", default=None, help="write a PNG figure here (default: "
                            "not drawn)")


# ---- data -----------------------------------------------------------------------------------
def _cmd_data(args) -> int:
    from vaeprobe import data

    dataset = data.load(args.name, split=args.split, root=args.root, download=args.download,
                        size=args.size)
    first = dataset[0]
    print(f"{data.dataset_name(dataset)}: {len(dataset)} images of shape {tuple(first.shape)} "
          f"({first.dtype})")
    if args.preview:
        from vaeprobe.plot import image_grid, save_figure

        indices = data.select(dataset, min(args.n_preview, len(dataset)), seed=0)
        images = next(data.iterate_batches(dataset, len(indices), indices))
        ax = image_grid(images.numpy(), columns=8, title=data.dataset_name(dataset))
        save_figure(ax, args.preview)
        print(f"wrote {args.preview}")
    return 0


def _add_data(sub) -> None:
    from vaeprobe import data

    parser = _subparser(sub, "data", "describe a dataset and preview examples",
                        "vaeprobe data patches32:test --preview patches.png")
    api = _ApiArguments(parser, data.load)
    parser.add_argument("name", help=f"a dataset: {', '.join(data.names())} (NAME:test for "
                        f"the test split)")
    api.add("--split", choices=data.SPLITS, help="the split when NAME has none")
    api.add("--root", help="directory of a torchvision dataset (svhn, cifar10, mnist, celeba64)")
    parser.add_argument("--download", action="store_true",
                        help="let torchvision download a missing dataset (needs network)")
    api.add("--size", type=int, units="px", help="side of the centre-cropped square of folder: "
            "images")
    parser.add_argument("--preview", default=None, help="write a PNG grid of examples here "
                        "(default: none)")
    parser.add_argument("--n-preview", type=int, default=64,
                        help="examples in the preview (default: 64)")
    parser.set_defaults(run=_cmd_data)


# ---- opening a model ------------------------------------------------------------------------
CHECKPOINT_HELP = ("a run directory (latest checkpoint), a ckpt_step*.pt file, or a "
                   "third-party model: diffusers AutoencoderKL folder, pythae folder, VDVAE .th")


def _load_arguments(parser, api: _ApiArguments) -> None:
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


def _options(pairs: list[str]) -> dict:
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


def _load(args, path=None):
    import vaeprobe as vp

    options = _options(args.option)
    if args.no_ema:
        options["ema"] = False
    return vp.load(path or args.checkpoint, format=args.format, device=args.device, **options)


def _model_command(sub, name: str, function, help: str, example: str) -> tuple:
    """A subcommand over one model: CHECKPOINT, --data, --n-images, --batch-size, --seed and
    the loading flags, with the defaults of ``function``."""
    import vaeprobe as vp

    parser = _subparser(sub, name, help, example)
    api = _ApiArguments(parser, function, load=vp.load)
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--data", required=True, help="evaluation images: a dataset name "
                        "(e.g. patches32:test; folder:PATH is read at the model's image size)")
    api.add("--n-images", type=int, help="evaluate a seeded random subset of this many images")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    api.add("--seed", type=int, help="seeds the subset and every draw (results do not depend "
            "on --batch-size)")
    _load_arguments(parser, api)
    _common(parser)
    return parser, api


# ---- rate, iwae -----------------------------------------------------------------------------
def _cmd_rate(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.rate(probe, args.data, n_images=args.n_images, seed=args.seed,
                 batch_size=args.batch_size, active_threshold=args.active_threshold,
                 posterior=args.posterior)
    print(ds[["rate", "rate_fraction"]].to_dataframe().to_string(float_format="%.3f"))
    print(ds["rate_by_resolution"].to_series().to_string(float_format="%.3f"))
    print(f"total rate {float(ds.total_rate):.2f} ± {float(ds.total_rate_se):.2f} nats, "
          f"distortion {float(ds.distortion):.3f}, active units {int(ds.active_units)}")
    return _finish(ds, args, vp.plot.rate)


def _add_rate(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.probe import POSTERIORS

    parser, api = _model_command(
        sub, "rate", vp.rate, "rate (KL in nats per image) per latent layer, resolution and "
        "channel; active units",
        "vaeprobe rate runs/demo --data patches32:test --out rate.nc --plot rate.png")
    api.add("--active-threshold", type=float, units="nats", help="a channel is an active unit "
            "when its mean KL exceeds this")
    api.add("--posterior", choices=POSTERIORS, help="the distortion decodes a posterior sample "
            "or the posterior mean")
    parser.set_defaults(run=_cmd_rate)


def _cmd_iwae(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.iwae(probe, args.data, k=args.k, n_images=args.n_images, chunk=args.chunk,
                 batch_size=args.batch_size, seed=args.seed, kind=args.kind)
    print(f"IWAE (K={args.k}) {float(ds.bpd_mean):.4f} ± {float(ds.bpd_se):.4f} bits/dim; "
          f"ELBO {float(ds.elbo_bpd_mean):.4f} ± {float(ds.elbo_bpd_se):.4f}; mean ESS "
          f"{float(ds.ess.mean()):.1f} of {args.k} ({ds.attrs['likelihood_kind']}, "
          f"{ds.attrs['n_images']} images)")
    return _finish(ds, args, vp.plot.iwae_convergence)


def _add_iwae(sub) -> None:
    import vaeprobe as vp

    parser, api = _model_command(
        sub, "iwae", vp.iwae, "importance-weighted bound on log p(x), in bits/dim",
        "vaeprobe iwae runs/demo -k 1000 --data patches32:test --n-images 200 --plot iwae.png")
    api.add("-k", type=int, units="draws", help="importance samples per image (K)")
    api.add("--chunk", type=int, help="draws per image per pass (memory only: results do not "
            "depend on it)")
    api.add("--kind", choices=("discretized", "dequantized"), help="how log p(x|z) is "
            "evaluated: a PMF over the 256 levels, or a density on dequantized data (+8 "
            "bits/dim)")
    parser.set_defaults(run=_cmd_iwae)


# ---- samples --------------------------------------------------------------------------------
def _cmd_samples(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.sample_quality(
        probe, args.reference, n=args.n, kinds=args.kinds, temperature=args.temperature,
        metrics=args.metrics, feature_extractor=args.feature_extractor,
        prc_extractor=args.prc_extractor, lpips_trunk=args.lpips_trunk, weights=args.weights,
        prc_weights=args.prc_weights, lpips_weights=args.lpips_weights, seed=args.seed,
        posterior=args.posterior, batch_size=args.batch_size)
    print(ds.drop_vars("preview").to_dataframe().to_string(float_format="%.4f"))

    def draw(result):
        import matplotlib.pyplot as plt

        from vaeprobe.plot._quality import quality_panels

        panels = len(quality_panels(result))
        fig = plt.figure(figsize=(max(3.4 * result.sizes["kind"], 2.7 * panels), 7.5),
                         layout="constrained")
        grids, bars = fig.subfigures(2, 1, height_ratios=[1.2, 1])
        vp.plot.sample_grid(result, axs=grids.subplots(1, result.sizes["kind"]), columns=4)
        vp.plot.sample_quality(result, axs=bars.subplots(1, panels))
        return fig
    return _finish(ds, args, draw)


def _add_samples(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.fidelity import KINDS, METRICS
    from vaeprobe.fidelity.extractors import extractors
    from vaeprobe.fidelity.perceptual import lpips_trunks
    from vaeprobe.probe import POSTERIORS

    stand_ins = [name for name in extractors.names() + lpips_trunks.names()
                 if name.endswith("TEST-ONLY")]
    parser = _subparser(
        sub, "samples", "FID/KID/precision-recall/LPIPS of mean vs stochastic samples",
        "vaeprobe samples runs/demo --reference patches32:test -n 10000 --out samples.nc "
        "--plot samples.png",
        description="FID/KID/precision-recall/LPIPS of mean vs stochastic samples and "
        "reconstructions. The real networks need pretrained weights (`vaeprobe weights` lists "
        f"them); the stand-ins {', '.join(stand_ins)} need none and are for tests only: "
        "their numbers are flagged and not comparable.")
    api = _ApiArguments(parser, vp.sample_quality, load=vp.load)
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--reference", required=True, help="real images, e.g. patches32:test "
                        "(folder:PATH is read at the model's image size)")
    api.add("-n", type=int, units="images", help="images per kind (and reference images)")
    api.add("--kinds", nargs="+", choices=KINDS, help="what to generate")
    api.add("--metrics", nargs="+", choices=METRICS, help="what to measure")
    api.add("--temperature", type=float, help="prior temperature of the samples (1: the "
            "prior)")
    api.add("--feature-extractor", choices=extractors.names(), help="FID/KID network")
    api.add("--prc-extractor", choices=extractors.names(), help="precision/recall network")
    api.add("--lpips-trunk", choices=lpips_trunks.names(), help="LPIPS backbone")
    api.add("--weights", help="Inception weights file (FID/KID)")
    api.add("--prc-weights", help="VGG16 weights file (precision/recall)")
    api.add("--lpips-weights", help="AlexNet weights file (LPIPS)")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    api.add("--seed", type=int, help="seeds the reference subset and every sample")
    api.add("--posterior", choices=POSTERIORS, help="reconstruction kinds decode a posterior "
            "sample or its mean")
    _load_arguments(parser, api)
    _common(parser)
    parser.set_defaults(run=_cmd_samples)


# ---- weights --------------------------------------------------------------------------------
def _cmd_weights(args) -> int:
    from vaeprobe import weights

    rows = weights.status()
    for row in rows:
        where = row["path"] or "MISSING"
        print(f"{row['key']:<22} {row['file']:<46} {where}")
        if not row["path"]:
            print(f"{'':<22} get it from {row['url']}")
    print("searched: " + ", ".join(str(d) for d in weights.search_dirs()))
    return 0


def _add_weights(sub) -> None:
    parser = _subparser(sub, "weights", "which pretrained weights files are present (FID, "
                        "precision/recall, LPIPS)", "vaeprobe weights")
    parser.set_defaults(run=_cmd_weights)


# ---- spectrum -------------------------------------------------------------------------------
def _cmd_spectrum(args) -> int:
    import vaeprobe as vp

    source = _spectrum_source(args)
    ds = vp.spectrum(source, args.data, n_images=args.n_images, window=args.window,
                     channels=args.channels, cutoff=args.cutoff, batch_size=args.batch_size,
                     seed=args.seed, device=args.device)
    columns = [c for c in ("distortion", "rate", "high_frequency_fraction",
                           "high_frequency_fraction_se") if c in ds]
    if "step" in ds.dims:
        print(ds[columns].to_dataframe()[columns].to_string(float_format="%.4f"))
    print(f"data high-frequency fraction {float(ds.high_frequency_fraction_data):.4f} "
          f"(power above {args.cutoff} cycles/pixel)")
    return _finish(ds, args, lambda result: vp.plot.spectrum(result, relative="step" in
                                                             result.dims))


def _spectrum_source(args):
    """The source as vp.spectrum takes it: a path (a run, or one model opened as asked), or
    the images of a dataset name; a path that does not exist says so."""
    from pathlib import Path

    if Path(args.source).exists():
        if args.format or args.option or args.no_ema:  # one model, opened as asked
            return _load(args, path=args.source)
        return args.source
    from vaeprobe import data

    try:
        return data.as_dataset(args.source)  # a dataset name: the data spectrum alone
    except ValueError as error:
        if "unknown dataset" not in str(error):
            raise
        raise FileNotFoundError(
            f"{args.source} does not exist; pass a run directory, a checkpoint or a model "
            f"folder, or a dataset name ({', '.join(data.names())})") from None


def _add_spectrum(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.spectrum import CHANNEL_MODES, WINDOWS

    parser = _subparser(sub, "spectrum", "power spectra of reconstructions across checkpoints "
                        "(or of data alone)",
                        "vaeprobe spectrum runs/demo --plot spectrum.png")
    api = _ApiArguments(parser, vp.spectrum, load=vp.load)
    parser.add_argument("source", help="a run directory (every checkpoint), one model of any "
                        "format, or a dataset name (its spectrum alone)")
    api.add("--data", help="evaluation images, e.g. patches32:test")
    api.add("--n-images", type=int, units="images", help="a seeded random subset, the same "
            "for every checkpoint")
    api.add("--window", choices=WINDOWS, help="window applied before the FFT (hann needs "
            "images wider and taller than 2 px)")
    api.add("--channels", choices=CHANNEL_MODES, help="spectra per colour channel, or of the "
            "luminance")
    api.add("--cutoff", type=float, units="cycles/pixel", help="the high-frequency fraction "
            "is the share of power above this frequency (0 < cutoff < 0.5)")
    api.add("--batch-size", type=int, units="images", help="images per model pass (memory)")
    api.add("--seed", type=int, help="seeds the subset and the posterior draws")
    api.add("--format", of="load", choices=_format_names(), help="checkpoint format of a "
            "single model")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format option of a single model, repeatable (default: none)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not EMA, weights "
                        "of a single model (default: EMA weights)")
    api.add("--device", help="cpu, cuda or cuda:N")
    _common(parser)
    parser.set_defaults(run=_cmd_spectrum)


def _format_names() -> list[str]:
    from vaeprobe.adapters import formats

    return formats.names()


# ---- pca ------------------------------------------------------------------------------------
def _cmd_pca(args) -> int:
    import vaeprobe as vp

    ds = vp.pca_baseline(args.data, n_images=args.n_images, targets=args.targets,
                         spectrum_distortion=args.distortion, cutoff=args.cutoff,
                         seed=args.seed, device=args.device)
    print(ds["components_needed"].to_pandas().to_string())
    print(f"total variance {float(ds.total_variance):.3f} (sum of squares on [0, 1])")
    if "pca_k" in ds:
        print(f"top-{int(ds.pca_k)} components reach distortion "
              f"{float(ds.pca_spectrum_distortion):.3f}; their high-frequency fraction "
              f"{float(ds.high_frequency_fraction_pca):.4f}")
    return _finish(ds, args, vp.plot.pca)


def _add_pca(sub) -> None:
    import vaeprobe as vp

    parser = _subparser(sub, "pca", "PCA baseline: distortion of top-k vs bottom-k "
                        "components, components needed, Gaussian R(D)",
                        "vaeprobe pca patches32:train --distortion 8 --plot pca.png")
    api = _ApiArguments(parser, vp.pca_baseline)
    parser.add_argument("data", help="images, e.g. patches32:train")
    api.add("--n-images", type=int, help="use a seeded random subset of this many images")
    api.add("--targets", type=float, nargs="+", units="(sums of squares on [0, 1])",
            help="distortions at which to count the components needed")
    api.add("--distortion", param="spectrum_distortion", type=float,
            help="also the spectrum of the top-k reconstruction at this distortion (sum of "
            "squared error per image on [0, 1])")
    api.add("--cutoff", type=float, units="cycles/pixel", help="high-frequency fraction of "
            "that spectrum: the share of power above this frequency")
    api.add("--seed", type=int, help="seeds the subset")
    api.add("--device", help="cpu, cuda or cuda:N")
    _common(parser)
    parser.set_defaults(run=_cmd_pca)


# ---- running a command ----------------------------------------------------------------------
def _finish(ds, args, draw) -> int:
    """After the summary: warnings, then the Dataset and the figure when asked. A failed write
    is named and the other output still written; the exit status is then 1."""
    from vaeprobe import distributed, io
    from vaeprobe.plot import save_figure

    if not distributed.is_main():  # under torchrun every rank has the Dataset; rank 0 writes
        return 0
    if ds.attrs.get("warning"):
        for sentence in str(ds.attrs["warning"]).split("; "):
            print(f"WARNING: {sentence}")
    failed = []
    for path, write in ((args.out, lambda: io.save(ds, args.out)),
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
    return 0


def _check_outputs(args) -> None:
    """Every output path of the command, checked before any work."""
    from vaeprobe import io

    for flag in ("out", "plot", "preview"):
        if getattr(args, flag, None):
            io.check_writable(getattr(args, flag), f"--{flag}")


def _say_threads(args) -> None:
    from vaeprobe._threads import apply_threads

    if hasattr(args, "threads"):
        _, said = apply_threads(args.threads)
        print(f"vaeprobe {args.command}: {said}", file=sys.stderr)


def _add_audit(sub) -> None:
    """``vaeprobe audit PATH --data NAME``: every audit section, written to --out."""
    import json

    def run(args) -> int:
        import vaeprobe as vp

        options = {}
        for pair in args.option:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
            try:
                options[key] = json.loads(value)
            except ValueError:
                options[key] = value
        report = vp.audit(args.checkpoint, args.data, n_images=args.n_images, seed=args.seed,
                          sections=args.sections, device=args.device, progress=not args.quiet,
                          out=args.out, format=args.format, options=options,
                          feature_extractor=args.feature_extractor, weights=args.weights,
                          lpips_trunk=args.lpips_trunk, lpips_weights=args.lpips_weights,
                          settings=json.loads(args.settings) if args.settings else None)
        print(report.summary())
        print(f"wrote {args.out}/audit.nc, audit.png, audit.html")
        return 0

    parser = sub.add_parser("audit", help="a full report on one VAE checkpoint (nc, png, html)")
    parser.add_argument("checkpoint", help="a run directory, a checkpoint file, or a "
                        "third-party model (see --format)")
    parser.add_argument("--data", required=True, help="evaluation data, e.g. patches32:test")
    parser.add_argument("--format", default=None, help="checkpoint format (default: vaeprobe, "
                        "or recognised from the files where the loader can)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format option, repeatable (values read as JSON when they parse)")
    parser.add_argument("--out", default="audit", help="output directory (default: ./audit)")
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", nargs="+", default=None, help="a subset of model_card "
                        "bits reconstructions latents progressive spectra likelihood samples "
                        "precision (default: all)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if present)")
    parser.add_argument("--feature-extractor", default="inception-v3-compat",
                        help="rFID / FID network (random-convnet-TEST-ONLY: a flagged stand-in)")
    parser.add_argument("--weights", default=None, help="its weights file")
    parser.add_argument("--lpips-trunk", default="alexnet",
                        help="alexnet, or random-TEST-ONLY (a flagged stand-in)")
    parser.add_argument("--lpips-weights", default=None, help="AlexNet weights file")
    parser.add_argument("--settings", default=None, help='per-section options as JSON, e.g. '
                        '\'{"likelihood": {"k": 256}}\'')
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


COMMANDS = [_add_data, _add_rate, _add_iwae, _add_samples, _add_spectrum, _add_pca,
            _add_weights, _add_audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaeprobe", description="Train and audit VAEs: where their bits go and which of "
        "them matter. `vaeprobe COMMAND --help` describes each command.",
        epilog="example:\n  vaeprobe rate runs/demo --data patches32:test --plot rate.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vaeprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for add in COMMANDS:
        add(sub)
    return parser


def _error_text(error: BaseException) -> str:
    from vaeprobe.weights import MissingWeightsError

    if isinstance(error, MissingWeightsError):
        return error.describe(cli=True)  # the flags, not the Python keywords
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # str(KeyError) adds quotes
    return str(error)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"vaeprobe {args.command}: warning: {message}", file=sys.stderr)

    from vaeprobe import distributed

    # under torchrun (torchrun --nproc_per_node=N -m vaeprobe.cli ...) the ranks share the
    # images; all compute the same Dataset, rank 0 alone prints and writes
    quiet = contextlib.nullcontext() if distributed.is_main() else \
        contextlib.redirect_stdout(StringIO())
    try:
        with warnings.catch_warnings(), quiet:
            warnings.showwarning = one_line
            _check_outputs(args)
            _say_threads(args)
            return args.run(args)
    except KeyboardInterrupt:
        print(f"\nvaeprobe {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, TypeError) as error:
        print(f"vaeprobe {args.command}: error: {_error_text(error)}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
