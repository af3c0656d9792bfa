"""The CLI's analysis commands, generated from a table: one :class:`Noun` row per command (the
public function, its summary printer, its plot), added to the parser by :func:`add_nouns`.

A row's command takes, by default, the arguments of a command over one model
(:func:`~vaeprobe._cli_args.model_arguments`: CHECKPOINT, ``--data``, ``--n-images``,
``--batch-size``, ``--seed``, the loading flags, ``--out`` / ``--plot``) and then the flags its
``flags`` adds; a command with other arguments declares the whole list in ``arguments``.
Every flag either takes its default from the function's signature
(:meth:`~vaeprobe._cli_args.ApiArguments.add`) or is bound to a parameter by name
(:meth:`~vaeprobe._cli_args.ApiArguments.bind`), and the runner (:func:`run_noun`) calls the
function with the bound flags (:func:`~vaeprobe._cli_args.bound_arguments`) after the model
opened from CHECKPOINT (``model=False``: no model; a ``call`` hook: what the row makes of its
arguments), so that a flag cannot be forgotten on the way. A new noun is its function (one
file) plus one row registered here (``nouns.register("name", Noun(...))``), plus its test.

Not rows, and why: ``data`` and ``weights`` (no model, no Dataset, no --out), ``audit``
(:mod:`vaeprobe.audit.cli`: writes a directory and prints the report's summary),
``compress`` / ``decompress`` (write and read a .vpbb file, checked before the model opens;
a model with non-finite PMFs is an exit status, not a Dataset) and ``compare`` (several
models, an --out folder): :mod:`vaeprobe._cli_bits`. They bind their flags with
:func:`~vaeprobe._cli_args.bound_arguments` too, and forward by hand only what is not a
parameter as it stands (a .vpbb path, --no-verify, JSON settings).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from vaeprobe._cli_args import (
    ApiArguments,
    add_common,
    add_load_arguments,
    add_safety_arguments,
    add_subparser,
    bound_arguments,
    checkpoint_help,
    finish,
    load_probe,
    model_arguments,
)
from vaeprobe.fidelity import sample_quality
from vaeprobe.information import information
from vaeprobe.io import parameters
from vaeprobe.likelihood import iwae
from vaeprobe.pca import pca_baseline
from vaeprobe.probe import POSTERIORS
from vaeprobe.rate import rate
from vaeprobe.registry import Registry
from vaeprobe.sampling import samples
from vaeprobe.spectrum import spectrum

__all__ = ["Noun", "add_nouns", "bound_arguments", "nouns", "run_noun"]


@dataclass(frozen=True)
class Noun:
    """One analysis command: ``function(model, **flags) -> Dataset``, the text printed from
    its Dataset, and what ``--plot`` draws."""

    function: Callable
    help: str  # one line, in `vaeprobe --help`
    example: str  # a full command line
    printer: Callable  # Dataset -> the summary printed on stdout
    plot: str | Callable = ""  # a vaeprobe.plot function's name, or Dataset -> figure; "": none
    flags: Callable[[ApiArguments], None] = lambda api: None  # its own flags (api.add(...))
    # the command's whole argument list in place of the model command's (parser, api) -> None
    arguments: Callable | None = None
    description: str | Callable[[], str] = ""  # --help's text above the flags ("": help)
    model: bool = True  # the function's first argument is the model opened from CHECKPOINT
    # how the function is called, in place of the default: (function, args, bound) -> Dataset
    call: Callable | None = None


def _check_noun(name: str, noun) -> None:
    if not isinstance(noun, Noun):
        raise TypeError(f"CLI command {name!r} must be registered as a Noun(function, help, "
                        f"example, printer, plot, flags), got {type(noun).__name__}")


nouns = Registry("CLI command", check=_check_noun)


def run_noun(args) -> int:
    """Call the noun with its bound flags (after the model opened from CHECKPOINT), print its
    summary, then write ``--out`` / ``--plot``."""
    import vaeprobe.plot

    noun = nouns.get(args.command)
    bound = bound_arguments(args)
    if noun.call is not None:
        ds = noun.call(noun.function, args, bound)
    elif noun.model:
        ds = noun.function(load_probe(args), **bound)
    else:
        ds = noun.function(**bound)
    print(noun.printer(ds))
    draw = getattr(vaeprobe.plot, noun.plot) if isinstance(noun.plot, str) and noun.plot \
        else noun.plot or None
    return finish(ds, args, draw)


def add_nouns(sub) -> None:
    """A subcommand per registered noun, in the order they were registered."""
    import vaeprobe as vp

    for name in nouns:
        noun = nouns.get(name)
        description = noun.description() if callable(noun.description) else noun.description
        parser = add_subparser(sub, name, noun.help, noun.example, description)
        api = ApiArguments(parser, noun.function, **({"load": vp.load} if noun.model else {}))
        (noun.arguments or model_arguments)(parser, api)
        noun.flags(api)
        parser.set_defaults(run=run_noun)


# ---- the table ------------------------------------------------------------------------------
def _rate_flags(api: ApiArguments) -> None:
    api.add("--active-threshold", type=float, units="nats", help="a channel is an active unit "
            "when its mean KL exceeds this")
    api.add("--posterior", choices=POSTERIORS, help="the distortion decodes a posterior sample "
            "or the posterior mean")


def _rate_summary(ds) -> str:
    return "\n".join([
        ds[["rate", "rate_fraction"]].to_dataframe().to_string(float_format="%.3f"),
        ds["rate_by_resolution"].to_series().to_string(float_format="%.3f"),
        f"total rate {float(ds.total_rate):.2f} ± {float(ds.total_rate_se):.2f} nats, "
        f"distortion {float(ds.distortion):.3f}, active units {int(ds.active_units)}"])


def _iwae_flags(api: ApiArguments) -> None:
    api.add("-k", type=int, units="draws", help="importance samples per image (K)")
    api.add("--chunk", type=int, help="draws per image per pass (memory only: results do not "
            "depend on it)")
    api.add("--kind", choices=("discretized", "dequantized"), help="how log p(x|z) is "
            "evaluated: a PMF over the 256 levels, or a density on dequantized data (+8 "
            "bits/dim)")


def _iwae_summary(ds) -> str:
    k = parameters(ds)["k"]
    return (f"IWAE (K={k}) {float(ds.bpd_mean):.4f} ± {float(ds.bpd_se):.4f} bits/dim; "
            f"ELBO {float(ds.elbo_bpd_mean):.4f} ± {float(ds.elbo_bpd_se):.4f}; mean ESS "
            f"{float(ds.ess.mean()):.1f} of {k} ({ds.attrs['likelihood_kind']}, "
            f"{ds.attrs['n_images']} images)")


nouns.register("rate", Noun(
    rate, "rate (KL in nats per image) per latent layer, resolution and channel; active units",
    "vaeprobe rate runs/demo --data patches32:test --out rate.nc --plot rate.png",
    _rate_summary, "rate", _rate_flags))
nouns.register("iwae", Noun(
    iwae, "importance-weighted bound on log p(x), in bits/dim",
    "vaeprobe iwae runs/demo -k 1000 --data patches32:test --n-images 200 --plot iwae.png",
    _iwae_summary, "iwae_convergence", _iwae_flags))


def _information_summary(ds) -> str:
    lines = [f"{'layer':<24} {'rate':>10} {'I(x;z_l|z<l)':>13} {'marginal KL':>12}  [nats]"]
    for index in range(ds.sizes["layer"]):
        row = ds.isel(layer=index)
        lines.append(f"{str(row['name'].values):<24} {float(row.rate):>10.3f} "
                     f"{float(row.mutual_information):>13.3f} {float(row.marginal_kl):>12.3f}")
    lines.append(
        f"rate {float(ds.total_rate):.3f} (analytic; of the draws "
        f"{float(ds.rate_sampled.sum()):.3f}) = I(x; z) "
        f"{float(ds.total_mutual_information):.3f} ± {float(ds.total_mutual_information_se):.3f}"
        f" + marginal KL {float(ds.total_marginal_kl):.3f} ± "
        f"{float(ds.total_marginal_kl_se):.3f} nats (log N ceiling "
        f"{float(ds.attrs['log_n_ceiling']):.3f}; identity holds: "
        f"{'yes' if int(ds.attrs['identity_holds']) else 'NO'})")
    if "total_correlation" in ds:
        lines.append(f"total correlation {float(ds.total_correlation):.3f}, dimension-wise KL "
                     f"{float(ds.dimension_wise_kl):.3f} nats")
    return "\n".join(lines)


nouns.register("information", Noun(
    information, "rate split into I(x; z) and the marginal KL KL(q(z) || p(z)) per layer "
    "(one-layer models: total correlation, dimension-wise KL)",
    "vaeprobe information runs/demo --data patches32:test --n-images 500 --plot info.png",
    _information_summary, "information"))


# ---- samples: the model and how many images; --data only for reconstructions ---------------
# the metric flags of the command before `quality` took them over (it was `samples`)
MOVED_TO_QUALITY = ("--reference", "--kinds", "--metrics", "--feature-extractor",
                    "--prc-extractor", "--lpips-trunk", "--weights", "--prc-weights",
                    "--lpips-weights")


def _samples_arguments(parser, api: ApiArguments) -> None:
    from vaeprobe.sampling import KINDS

    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--n-images", "-n", type=int, default=64,
                        help="number of images (default: 64)")
    api.bind("n_images")
    api.add("--kind", choices=KINDS, help="prior samples (mean, stochastic) or reconstructions "
            "of --data")
    api.add("--temperature", type=float, help="prior temperature (1: the prior)")
    parser.add_argument("--data", default=None, help="input images of the reconstruction "
                        "kinds, e.g. patches32:test (default: none)")
    api.bind("data")
    api.add("--seed", type=int, help="seeds every draw (results do not depend on "
            "--batch-size)")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    for flag in MOVED_TO_QUALITY:  # refused with a pointer to `quality`
        parser.add_argument(flag, dest="old_" + flag[2:].replace("-", "_"), nargs="+",
                            default=None, help=argparse.SUPPRESS)
    add_load_arguments(parser, api)
    add_common(parser)


def _samples_call(function, args, bound):
    """The moved metric flags refused, a .png --out taken as the grid, then the samples."""
    moved = [flag for flag in MOVED_TO_QUALITY
             if getattr(args, "old_" + flag[2:].replace("-", "_")) is not None]
    if moved:
        raise ValueError(f"{', '.join(moved)}: the sample metrics moved to `vaeprobe quality` "
                         f"(e.g. vaeprobe quality CHECKPOINT --reference patches32:test); "
                         f"`vaeprobe samples` draws vp.samples")
    if args.out and str(args.out).lower().endswith(".png") and not args.plot:
        args.out, args.plot = None, args.out  # a .png --out is the grid
    return function(load_probe(args), **bound)


def _samples_grid(ds):
    import vaeprobe.plot

    return vaeprobe.plot.image_grid(ds["images"].values, columns=8,
                                    title=f"{ds.attrs['kind']} samples")


nouns.register("samples", Noun(
    samples, "draw samples (vp.samples): a PNG grid (--plot) or a .nc (--out)",
    "vaeprobe samples runs/demo --n-images 64 --kind mean --temperature 0.8 --plot "
    "samples.png",
    lambda ds: f"{ds.sizes['image']} {ds.attrs['kind']} samples of shape "
               f"{tuple(ds['images'].shape[1:])} (uint8)",
    _samples_grid, arguments=_samples_arguments, call=_samples_call,
    description="Draw samples with vp.samples: prior samples (mean or stochastic) or "
    "reconstructions of --data, as a PNG grid (--plot) and/or a Dataset (--out .nc). The "
    "FID/KID/precision-recall/LPIPS metrics are `vaeprobe quality`."))


# ---- quality: the model against --reference images ------------------------------------------
def _quality_description() -> str:
    from vaeprobe.fidelity.extractors import extractors
    from vaeprobe.fidelity.perceptual import lpips_trunks

    stand_ins = [name for name in extractors.names() + lpips_trunks.names()
                 if name.endswith("TEST-ONLY")]
    return ("FID/KID/precision-recall/LPIPS of mean vs stochastic samples and "
            "reconstructions. The real networks need pretrained weights (`vaeprobe weights` "
            f"lists them); the stand-ins {', '.join(stand_ins)} need none and are for tests "
            "only: their numbers are flagged and not comparable.")


def _quality_arguments(parser, api: ApiArguments) -> None:
    from vaeprobe.fidelity import KINDS, METRICS
    from vaeprobe.fidelity.extractors import extractors
    from vaeprobe.fidelity.perceptual import lpips_trunks

    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--reference", required=True, help="real images, e.g. patches32:test "
                        "(folder:PATH is read at the model's image size)")
    api.bind("reference")
    api.add("--n-images", "-n", type=int, units="images", help="images per kind (and "
            "reference images)")
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
    add_load_arguments(parser, api)
    add_common(parser)


def _quality_figure(result):
    """The samples of every kind above the metrics' panels."""
    import matplotlib.pyplot as plt

    import vaeprobe.plot
    from vaeprobe.plot._quality import quality_panels

    panels = len(quality_panels(result))
    fig = plt.figure(figsize=(max(3.4 * result.sizes["kind"], 2.7 * panels), 7.5),
                     layout="constrained")
    grids, bars = fig.subfigures(2, 1, height_ratios=[1.2, 1])
    vaeprobe.plot.sample_grid(result, axs=grids.subplots(1, result.sizes["kind"]), columns=4)
    vaeprobe.plot.sample_quality(result, axs=bars.subplots(1, panels))
    return fig


nouns.register("quality", Noun(
    sample_quality, "FID/KID/precision-recall/LPIPS of mean vs stochastic samples "
    "(vp.sample_quality)",
    "vaeprobe quality runs/demo --reference patches32:test --n-images 10000 --out "
    "quality.nc --plot quality.png",
    lambda ds: ds.drop_vars("preview").to_dataframe().to_string(float_format="%.4f"),
    _quality_figure, arguments=_quality_arguments, description=_quality_description))


# ---- spectrum: a run, one model, or a dataset name ------------------------------------------
def _spectrum_arguments(parser, api: ApiArguments) -> None:
    from vaeprobe.adapters import formats
    from vaeprobe.spectrum import CHANNEL_MODES, WINDOWS

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
    api.add("--format", of="load", choices=formats.names(), help="checkpoint format of a "
            "single model")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format option of a single model, repeatable (default: none)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not EMA, weights "
                        "of a single model (default: EMA weights)")
    add_safety_arguments(parser, api)
    api.add("--device", help="cpu, cuda or cuda:N")
    add_common(parser)


def _spectrum_call(function, args, bound):
    """Every checkpoint of a run, or one model, opened under the memory and finiteness
    limits."""
    from vaeprobe.validate import load_policy

    with load_policy(max_memory=args.max_memory, allow_nonfinite=args.allow_nonfinite):
        return function(_spectrum_source(args), **bound)


def _spectrum_source(args):
    """The source as vp.spectrum takes it: a path (a run, or one model opened as asked), or
    the images of a dataset name; a path that does not exist says so."""
    from pathlib import Path

    if Path(args.source).exists():
        if args.format or args.option or args.no_ema:  # one model, opened as asked
            return load_probe(args, path=args.source)
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


def _spectrum_figure(result):
    import vaeprobe.plot

    return vaeprobe.plot.spectrum(result, relative="step" in result.dims)


def _spectrum_summary(ds) -> str:
    columns = [c for c in ("distortion", "rate", "high_frequency_fraction",
                           "high_frequency_fraction_se") if c in ds]
    lines = []
    if "step" in ds.dims:
        lines.append(ds[columns].to_dataframe()[columns].to_string(float_format="%.4f"))
    lines.append(f"data high-frequency fraction {float(ds.high_frequency_fraction_data):.4f} "
                 f"(power above {ds.attrs['cutoff']} cycles/pixel)")
    return "\n".join(lines)


nouns.register("spectrum", Noun(
    spectrum, "power spectra of reconstructions across checkpoints (or of data alone)",
    "vaeprobe spectrum runs/demo --plot spectrum.png", _spectrum_summary,
    _spectrum_figure, arguments=_spectrum_arguments, call=_spectrum_call))


# ---- pca: images alone -----------------------------------------------------------------------
def _pca_arguments(parser, api: ApiArguments) -> None:
    parser.add_argument("data", help="images, e.g. patches32:train")
    api.bind("data")
    api.add("--n-images", type=int, help="use a seeded random subset of this many images")
    api.add("--targets", type=float, nargs="+", units="(sums of squares on [0, 1])",
            help="distortions at which to count the components needed")
    api.add("--distortion", param="spectrum_distortion", type=float,
            help="also the spectrum of the top-k reconstruction at this distortion (sum of "
            "squared error per image on [0, 1])")
    api.add("--cutoff", type=float, units="cycles/pixel", help="high-frequency fraction of "
            "that spectrum: the share of power above this frequency")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    api.add("--seed", type=int, help="seeds the subset")
    api.add("--device", help="cpu, cuda or cuda:N")
    add_common(parser)


def _pca_summary(ds) -> str:
    lines = [ds["components_needed"].to_pandas().to_string(),
             f"total variance {float(ds.total_variance):.3f} (sum of squares on [0, 1])"]
    if "pca_k" in ds:
        lines.append(f"top-{int(ds.pca_k)} components reach distortion "
                     f"{float(ds.pca_spectrum_distortion):.3f}; their high-frequency fraction "
                     f"{float(ds.high_frequency_fraction_pca):.4f}")
    return "\n".join(lines)


nouns.register("pca", Noun(
    pca_baseline, "PCA baseline: distortion of top-k vs bottom-k components, components "
    "needed, Gaussian R(D)", "vaeprobe pca patches32:train --distortion 8 --plot pca.png",
    _pca_summary, "pca", arguments=_pca_arguments, model=False))
