"""``vaeprobe audit``: the audit subcommand of ``vaeprobe.cli``."""

from __future__ import annotations


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
