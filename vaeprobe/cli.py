"""``vaeprobe <command>``: a thin layer over the public functions.

Every flag that mirrors a parameter of a public function takes its default (and its choices)
from that function's signature and constants, so the two cannot drift: each subcommand records
its function (``api``); ``tests/test_cli.py`` parses ``--help`` and compares each default with
the documented value written out. Before any
work, each command checks that ``--out`` / ``--plot`` can be written, chooses its CPU threads
(``--threads``, said on stderr), and turns warnings into one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from io import StringIO

# the argument machinery lives in vaeprobe._cli_args (imported back here: tests and callers
# use vaeprobe.cli._options and friends)
from vaeprobe._cli_args import (  # noqa: F401
    CHECKPOINT_HELP,
    NONE_MEANS,
    ApiArguments,
    add_common,
    add_load_arguments,
    add_safety_arguments,
    add_subparser,
    check_outputs,
    checkpoint_help,
    dest_of,
    error_text,
    finish,
    load_probe,
    model_command,
    parse_options,
    say_threads,
    show_default,
)
from vaeprobe._cli_bits import add_compare, add_compress, add_decompress
from vaeprobe._cli_nouns import add_nouns
from vaeprobe._version import __version__
from vaeprobe.audit.cli import add_audit


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

    parser = add_subparser(sub, "data", "describe a dataset and preview examples",
                        "vaeprobe data patches32:test --preview patches.png")
    api = ApiArguments(parser, data.load)
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


# ---- quality --------------------------------------------------------------------------------
def _cmd_quality(args) -> int:
    import vaeprobe as vp

    probe = load_probe(args)
    ds = vp.sample_quality(
        probe, args.reference, n_images=args.n_images, kinds=args.kinds,
        temperature=args.temperature, metrics=args.metrics,
        feature_extractor=args.feature_extractor, prc_extractor=args.prc_extractor,
        lpips_trunk=args.lpips_trunk, weights=args.weights, prc_weights=args.prc_weights,
        lpips_weights=args.lpips_weights, seed=args.seed, posterior=args.posterior,
        batch_size=args.batch_size)
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
    return finish(ds, args, draw)


def _add_quality(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.fidelity import KINDS, METRICS
    from vaeprobe.fidelity.extractors import extractors
    from vaeprobe.fidelity.perceptual import lpips_trunks
    from vaeprobe.probe import POSTERIORS

    stand_ins = [name for name in extractors.names() + lpips_trunks.names()
                 if name.endswith("TEST-ONLY")]
    parser = add_subparser(
        sub, "quality", "FID/KID/precision-recall/LPIPS of mean vs stochastic samples "
        "(vp.sample_quality)",
        "vaeprobe quality runs/demo --reference patches32:test --n-images 10000 --out "
        "quality.nc --plot quality.png",
        description="FID/KID/precision-recall/LPIPS of mean vs stochastic samples and "
        "reconstructions. The real networks need pretrained weights (`vaeprobe weights` lists "
        f"them); the stand-ins {', '.join(stand_ins)} need none and are for tests only: "
        "their numbers are flagged and not comparable.")
    api = ApiArguments(parser, vp.sample_quality, load=vp.load)
    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--reference", required=True, help="real images, e.g. patches32:test "
                        "(folder:PATH is read at the model's image size)")
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
    parser.set_defaults(run=_cmd_quality)


# ---- samples --------------------------------------------------------------------------------
# the metric flags of the command before `quality` took them over (it was `samples`)
MOVED_TO_QUALITY = ("--reference", "--kinds", "--metrics", "--feature-extractor",
                    "--prc-extractor", "--lpips-trunk", "--weights", "--prc-weights",
                    "--lpips-weights")


def _cmd_samples(args) -> int:
    import vaeprobe as vp

    moved = [flag for flag in MOVED_TO_QUALITY
             if getattr(args, "old_" + flag[2:].replace("-", "_")) is not None]
    if moved:
        raise ValueError(f"{', '.join(moved)}: the sample metrics moved to `vaeprobe quality` "
                         f"(e.g. vaeprobe quality CHECKPOINT --reference patches32:test); "
                         f"`vaeprobe samples` draws vp.samples")
    if args.out and str(args.out).lower().endswith(".png") and not args.plot:
        args.out, args.plot = None, args.out  # a .png --out is the grid
    probe = load_probe(args)
    ds = vp.samples(probe, args.n_images, kind=args.kind, temperature=args.temperature,
                    seed=args.seed, data=args.data, batch_size=args.batch_size)
    print(f"{ds.sizes['image']} {args.kind} samples of shape "
          f"{tuple(ds['images'].shape[1:])} (uint8)")
    return finish(ds, args, lambda result: vp.plot.image_grid(
        result["images"].values, columns=8, title=f"{args.kind} samples"))


def _add_samples(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.sampling import KINDS

    parser = add_subparser(
        sub, "samples", "draw samples (vp.samples): a PNG grid (--plot) or a .nc (--out)",
        "vaeprobe samples runs/demo --n-images 64 --kind mean --temperature 0.8 --plot "
        "samples.png",
        description="Draw samples with vp.samples: prior samples (mean or stochastic) or "
        "reconstructions of --data, as a PNG grid (--plot) and/or a Dataset (--out .nc). The "
        "FID/KID/precision-recall/LPIPS metrics are `vaeprobe quality`.")
    api = ApiArguments(parser, vp.samples, load=vp.load)
    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--n-images", "-n", type=int, default=64,
                        help="number of images (default: 64)")
    api.add("--kind", choices=KINDS, help="prior samples (mean, stochastic) or reconstructions "
            "of --data")
    api.add("--temperature", type=float, help="prior temperature (1: the prior)")
    parser.add_argument("--data", default=None, help="input images of the reconstruction "
                        "kinds, e.g. patches32:test (default: none)")
    api.add("--seed", type=int, help="seeds every draw (results do not depend on "
            "--batch-size)")
    api.add("--batch-size", type=int, units="images", help="images per pass (memory)")
    for flag in MOVED_TO_QUALITY:  # refused with a pointer to `quality`
        parser.add_argument(flag, dest="old_" + flag[2:].replace("-", "_"), nargs="+",
                            default=None, help=argparse.SUPPRESS)
    add_load_arguments(parser, api)
    add_common(parser)
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
    parser = add_subparser(sub, "weights", "which pretrained weights files are present (FID, "
                        "precision/recall, LPIPS)", "vaeprobe weights")
    parser.set_defaults(run=_cmd_weights)


# ---- spectrum -------------------------------------------------------------------------------
def _cmd_spectrum(args) -> int:
    import vaeprobe as vp
    from vaeprobe.validate import load_policy

    with load_policy(max_memory=args.max_memory, allow_nonfinite=args.allow_nonfinite):
        source = _spectrum_source(args)  # every checkpoint of a run opened under the limits
        ds = vp.spectrum(source, args.data, n_images=args.n_images, window=args.window,
                         channels=args.channels, cutoff=args.cutoff,
                         batch_size=args.batch_size, seed=args.seed, device=args.device)
    columns = [c for c in ("distortion", "rate", "high_frequency_fraction",
                           "high_frequency_fraction_se") if c in ds]
    if "step" in ds.dims:
        print(ds[columns].to_dataframe()[columns].to_string(float_format="%.4f"))
    print(f"data high-frequency fraction {float(ds.high_frequency_fraction_data):.4f} "
          f"(power above {args.cutoff} cycles/pixel)")
    return finish(ds, args, lambda result: vp.plot.spectrum(result, relative="step" in
                                                             result.dims))


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


def _add_spectrum(sub) -> None:
    import vaeprobe as vp
    from vaeprobe.spectrum import CHANNEL_MODES, WINDOWS

    parser = add_subparser(sub, "spectrum", "power spectra of reconstructions across checkpoints "
                        "(or of data alone)",
                        "vaeprobe spectrum runs/demo --plot spectrum.png")
    api = ApiArguments(parser, vp.spectrum, load=vp.load)
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
    add_safety_arguments(parser, api)
    api.add("--device", help="cpu, cuda or cuda:N")
    add_common(parser)
    parser.set_defaults(run=_cmd_spectrum)


def _format_names() -> list[str]:
    from vaeprobe.adapters import formats

    return formats.names()


# ---- pca ------------------------------------------------------------------------------------
def _cmd_pca(args) -> int:
    import vaeprobe as vp

    ds = vp.pca_baseline(args.data, n_images=args.n_images, targets=args.targets,
                         spectrum_distortion=args.distortion, cutoff=args.cutoff,
                         batch_size=args.batch_size, seed=args.seed, device=args.device)
    print(ds["components_needed"].to_pandas().to_string())
    print(f"total variance {float(ds.total_variance):.3f} (sum of squares on [0, 1])")
    if "pca_k" in ds:
        print(f"top-{int(ds.pca_k)} components reach distortion "
              f"{float(ds.pca_spectrum_distortion):.3f}; their high-frequency fraction "
              f"{float(ds.high_frequency_fraction_pca):.4f}")
    return finish(ds, args, vp.plot.pca)


def _add_pca(sub) -> None:
    import vaeprobe as vp

    parser = add_subparser(sub, "pca", "PCA baseline: distortion of top-k vs bottom-k "
                        "components, components needed, Gaussian R(D)",
                        "vaeprobe pca patches32:train --distortion 8 --plot pca.png")
    api = ApiArguments(parser, vp.pca_baseline)
    parser.add_argument("data", help="images, e.g. patches32:train")
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
    parser.set_defaults(run=_cmd_pca)


COMMANDS = [_add_data, add_nouns, _add_samples, _add_quality, _add_spectrum,
            _add_pca, _add_weights, add_audit, add_compress, add_decompress,
            add_compare]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"vaeprobe {args.command}: warning: {message}", file=sys.stderr)

    from vaeprobe import data_checks, distributed

    # under torchrun (torchrun --nproc_per_node=N -m vaeprobe.cli ...) the ranks share the
    # images; all compute the same Dataset, rank 0 alone prints and writes
    quiet = contextlib.nullcontext() if distributed.is_main() else \
        contextlib.redirect_stdout(StringIO())
    try:
        with warnings.catch_warnings(), quiet, \
                data_checks.strict_data(getattr(args, "strict_data", False)):
            warnings.showwarning = one_line
            check_outputs(args)
            say_threads(args)
            return args.run(args)
    except KeyboardInterrupt:
        print(f"\nvaeprobe {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, TypeError) as error:
        print(f"vaeprobe {args.command}: error: {error_text(error)}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
