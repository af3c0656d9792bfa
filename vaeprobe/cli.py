"""``vaeprobe <command>``: a thin layer over the public functions."""

from __future__ import annotations

import argparse
import contextlib
import sys
from io import StringIO

from vaeprobe._version import __version__


def _cmd_data(args) -> int:
    from vaeprobe import data

    dataset = data.load(args.name, split=args.split, root=args.root, download=args.download,
                        size=args.size)
    first = dataset[0]
    print(f"{data.dataset_name(dataset)}: {len(dataset)} images of shape {tuple(first.shape)} "
          f"({first.dtype})")
    if args.preview:
        from vaeprobe.plot import image_grid
        from vaeprobe.plot._common import save_figure

        indices = data.select(dataset, args.n_preview, seed=0)
        images = next(data.iterate_batches(dataset, len(indices), indices))
        ax = image_grid(images.numpy(), columns=8, title=data.dataset_name(dataset))
        save_figure(ax, args.preview)
        print(f"wrote {args.preview}")
    return 0


def _add_data(sub) -> None:
    parser = sub.add_parser("data", help="describe a dataset and preview examples")
    parser.add_argument("name", help="patches16|32|64, digits8, svhn, cifar10, mnist, celeba64, "
                        "folder:PATH, npz:PATH (append :test for the test split)")
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--root", default=None, help="directory of a torchvision dataset")
    parser.add_argument("--download", action="store_true", help="let torchvision download")
    parser.add_argument("--size", type=int, default=64, help="image side for folder:")
    parser.add_argument("--preview", default=None, help="write a PNG grid of examples here")
    parser.add_argument("--n-preview", type=int, default=64)
    parser.set_defaults(run=_cmd_data)


CHECKPOINT_HELP = ("a run directory (latest checkpoint), a ckpt_step*.pt file, or a "
                   "third-party model: diffusers AutoencoderKL folder, pythae folder, VDVAE .th")


def _load_arguments(parser) -> None:
    """How a model is opened: its format (sniffed by default) and the format's options."""
    parser.add_argument("--format", default=None, help="checkpoint format (default: recognised "
                        "from the files): vaeprobe, diffusers, pythae, vdvae")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format option, repeatable, e.g. hparams=cifar10, "
                        "image_size=256, pixel_range=[-1,1] (values read as JSON when they "
                        "parse, else as text)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not EMA, weights "
                        "(formats with EMA weights)")


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


def _probe_arguments(parser, data_default: str | None = None) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--data", default=data_default, required=data_default is None,
                        help="evaluation data, e.g. patches32:test")
    parser.add_argument("--n-images", type=int, default=None, help="seeded random subset")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if present)")
    _load_arguments(parser)
    parser.add_argument("--out", default=None, help="write the Dataset here (netCDF)")
    parser.add_argument("--plot", default=None, help="write a PNG figure here")


def _finish(ds, args, draw) -> int:
    """Print a short view, save the Dataset and the figure when asked."""
    from vaeprobe import distributed, io

    if not distributed.is_main():  # under torchrun every rank has the Dataset; rank 0 writes
        return 0
    if args.out:
        io.save(ds, args.out)
        print(f"wrote {args.out}")
    if args.plot:
        from vaeprobe.plot._common import save_figure

        save_figure(draw(ds), args.plot)
        print(f"wrote {args.plot}")
    return 0


def _batch(args, default: int) -> dict:
    return {"batch_size": args.batch_size or default}


def _cmd_rate(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.rate(probe, args.data, n_images=args.n_images, seed=args.seed,
                 posterior=args.posterior, **_batch(args, 64))
    print(ds[["rate", "rate_fraction"]].to_dataframe().to_string(float_format="%.3f"))
    print(ds["rate_by_resolution"].to_series().to_string(float_format="%.3f"))
    print(f"total rate {float(ds.total_rate):.2f} ± {float(ds.total_rate_se):.2f} nats, "
          f"distortion {float(ds.distortion):.3f}, active units {int(ds.active_units)}")
    return _finish(ds, args, vp.plot.rate)


def _add_rate(sub) -> None:
    parser = sub.add_parser("rate", help="rate per latent layer and resolution")
    _probe_arguments(parser)
    parser.add_argument("--posterior", default="sample", choices=("sample", "mean"),
                        help="reconstruct from a posterior sample or its mean (distortion)")
    parser.set_defaults(run=_cmd_rate)


def _cmd_iwae(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.iwae(probe, args.data, k=args.k, n_images=args.n_images, chunk=args.chunk,
                 seed=args.seed, kind=args.kind, **_batch(args, 16))
    print(f"IWAE (K={args.k}) {float(ds.bpd_mean):.4f} ± {float(ds.bpd_se):.4f} bits/dim; "
          f"ELBO {float(ds.elbo_bpd_mean):.4f} ± {float(ds.elbo_bpd_se):.4f}; mean ESS "
          f"{float(ds.ess.mean()):.1f} ({ds.attrs['likelihood_kind']}, "
          f"{ds.attrs['n_images']} images)")
    return _finish(ds, args, vp.plot.iwae_convergence)


def _add_iwae(sub) -> None:
    parser = sub.add_parser("iwae", help="importance-weighted ELBO in bits/dim")
    _probe_arguments(parser)
    parser.add_argument("-k", type=int, default=1000, help="importance samples per image")
    parser.add_argument("--chunk", type=int, default=None, help="draws per image per pass")
    parser.add_argument("--kind", default=None, choices=("discretized", "dequantized"))
    parser.set_defaults(run=_cmd_iwae)


def _cmd_samples(args) -> int:
    import vaeprobe as vp

    probe = _load(args)
    ds = vp.sample_quality(
        probe, args.reference, n=args.n, kinds=args.kinds, temperature=args.temperature,
        metrics=args.metrics, feature_extractor=args.feature_extractor,
        prc_extractor=args.prc_extractor, lpips_trunk=args.lpips_trunk, weights=args.weights,
        prc_weights=args.prc_weights, lpips_weights=args.lpips_weights, seed=args.seed,
        posterior=args.posterior, **_batch(args, 100))
    print(ds.drop_vars("preview").to_dataframe().to_string(float_format="%.4f"))
    if ds.attrs["warning"]:
        print(f"WARNING: {ds.attrs['warning']}")

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
    from vaeprobe.fidelity import KINDS, METRICS

    parser = sub.add_parser("samples", help="FID/KID/precision-recall/LPIPS of mean vs "
                            "stochastic samples")
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--reference", required=True, help="real images, e.g. patches32:test")
    parser.add_argument("-n", type=int, default=10000, help="images per kind")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--feature-extractor", default="inception-v3-compat")
    parser.add_argument("--prc-extractor", default="vgg16-fc2")
    parser.add_argument("--lpips-trunk", default="alexnet",
                        choices=("alexnet", "random-TEST-ONLY"))
    parser.add_argument("--weights", default=None, help="Inception weights file")
    parser.add_argument("--prc-weights", default=None, help="VGG16 weights file")
    parser.add_argument("--lpips-weights", default=None, help="AlexNet weights file")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--posterior", default="sample", choices=("sample", "mean"),
                        help="reconstruction kinds decode a posterior sample or its mean")
    parser.add_argument("--device", default=None)
    _load_arguments(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    parser.set_defaults(run=_cmd_samples)


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
    parser = sub.add_parser("weights", help="which pretrained weights files are present")
    parser.set_defaults(run=_cmd_weights)


def _cmd_spectrum(args) -> int:
    import vaeprobe as vp

    source = args.source
    if args.format or args.option or args.no_ema:  # one model, opened as asked
        source = _load(args, path=args.source)
    ds = vp.spectrum(source, args.data, n_images=args.n_images, window=args.window,
                     channels=args.channels, cutoff=args.cutoff, seed=args.seed,
                     device=args.device)
    columns = [c for c in ("distortion", "rate", "high_frequency_fraction") if c in ds]
    if "step" in ds.dims:
        print(ds[columns].to_dataframe().to_string(float_format="%.4f"))
    print(f"data high-frequency fraction {float(ds.high_frequency_fraction_data):.4f}")
    return _finish(ds, args, lambda result: vp.plot.spectrum(result, relative="step" in
                                                             result.dims))


def _add_spectrum(sub) -> None:
    parser = sub.add_parser("spectrum", help="power spectra of reconstructions across "
                            "checkpoints")
    parser.add_argument("source", help="a run directory (every checkpoint), one model of any "
                        "format, or data (name)")
    parser.add_argument("--data", default=None, help="evaluation data (default: the run's "
                        "test split)")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--window", default="hann", choices=("hann", "kaiser", "none"))
    parser.add_argument("--channels", default="per_channel",
                        choices=("per_channel", "luminance"))
    parser.add_argument("--cutoff", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    _load_arguments(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    parser.set_defaults(run=_cmd_spectrum_dispatch)


def _cmd_spectrum_dispatch(args) -> int:
    from pathlib import Path

    if not Path(args.source).exists():  # a dataset name: the data spectrum alone
        from vaeprobe import data

        args.source = data.as_dataset(args.source)
    return _cmd_spectrum(args)


def _cmd_pca(args) -> int:
    import vaeprobe as vp

    ds = vp.pca_baseline(args.data, n_images=args.n_images,
                         spectrum_distortion=args.distortion, seed=args.seed)
    print(ds["components_needed"].to_pandas().to_string())
    print(f"total variance {float(ds.total_variance):.3f} (sum of squares on [0, 1])")
    return _finish(ds, args, vp.plot.pca)


def _add_pca(sub) -> None:
    parser = sub.add_parser("pca", help="PCA baseline: top-k vs bottom-k, Gaussian R(D)")
    parser.add_argument("data", help="e.g. patches32:train")
    parser.add_argument("--n-images", type=int, default=10000)
    parser.add_argument("--distortion", type=float, default=None,
                        help="also the spectrum of top-k reconstructions at this distortion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    parser.set_defaults(run=_cmd_pca)


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
    parser = argparse.ArgumentParser(prog="vaeprobe", description="Train and audit VAEs: where "
                                     "their bits go and which of them matter.")
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
    from vaeprobe import distributed

    # under torchrun (torchrun --nproc_per_node=N -m vaeprobe.cli ...) the ranks share the
    # images; all compute the same Dataset, rank 0 alone prints and writes
    quiet = contextlib.nullcontext() if distributed.is_main() else \
        contextlib.redirect_stdout(StringIO())
    try:
        with quiet:
            return args.run(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"vaeprobe {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
