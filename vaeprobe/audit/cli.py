"""``vaeprobe audit``: the audit subcommand of ``vaeprobe.cli``, its defaults read from
``vp.audit``'s signature like every other subcommand's and its flags bound to the parameters
(:func:`vaeprobe._cli_args.bound_arguments`). Not a row of the noun table
(:mod:`vaeprobe._cli_nouns`): it writes a directory (--out, resumed) and prints the report's
summary instead of one Dataset and one figure; ``--settings`` (JSON) and ``--quiet`` are
forwarded by hand."""

from __future__ import annotations

SECTIONS_HELP = "a subset of the registered sections (default all): "


def _sections_help() -> str:
    from vaeprobe.audit.registry import sections

    return SECTIONS_HELP + " ".join(sections())


def _cmd_audit(args) -> int:
    import json
    from pathlib import Path

    import vaeprobe as vp
    from vaeprobe._cli_args import bound_arguments, load_probe

    try:
        settings = json.loads(args.settings) if args.settings else None
    except json.JSONDecodeError as error:
        raise ValueError(f"--settings must be JSON, e.g. '{{\"likelihood\": {{\"k\": 256}}}}'"
                         f": {error}") from None
    if args.resume and not (Path(args.out) / "audit.json").is_file():
        raise ValueError(f"--resume: {args.out} holds no audit to resume (no audit.json there);"
                         f" drop --resume to start one, or name the audit's --out")
    report = vp.audit(load_probe(args), **bound_arguments(args), progress=not args.quiet,
                      settings=settings)
    from vaeprobe import distributed

    if distributed.is_main():
        print(report.summary())
        resumed = json.loads(report.attrs.get("resumed_sections", "[]"))
        if resumed:
            print(f"resumed from {args.out}: {', '.join(resumed)}")
        print(f"wrote {args.out}/audit.nc, audit.png, audit.html (sections in "
              f"{args.out}/sections/)")
    return 0


def add_audit(sub) -> None:
    """``vaeprobe audit PATH --data NAME``: every audit section, written to --out."""
    import vaeprobe as vp
    from vaeprobe._cli_args import (
        ApiArguments,
        add_common,
        add_load_arguments,
        add_subparser,
        checkpoint_help,
    )
    from vaeprobe.fidelity.extractors import extractors

    parser = add_subparser(sub, "audit", "a full report on one VAE checkpoint: model card, where "
                        "the bits go, reconstructions, latent statistics, progressive coding, "
                        "spectra, likelihood, samples, numerical health (audit.nc, audit.png, "
                        "audit.html in --out)",
                        "vaeprobe audit runs/demo --data patches32:test --out audit")
    api = ApiArguments(parser, vp.audit, load=vp.load)
    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--data", required=True, help="evaluation images, e.g. patches32:test")
    api.bind("data")
    api.add("--n-images", type=int, help="a seeded random subset of this many images "
            "(the costly sections use fewer; see --settings)")
    api.add("--seed", type=int, help="seeds the subset and every draw")
    api.add("--sections", nargs="+", help=_sections_help())
    api.add("--feature-extractor", help="rFID / FID network; "
            f"{', '.join(extractors.names())} (TEST-ONLY: a flagged stand-in)")
    api.add("--weights", help="its weights file")
    api.add("--lpips-trunk", help="LPIPS network: alexnet, or random-TEST-ONLY (a flagged "
            "stand-in)")
    api.add("--lpips-weights", help="the LPIPS trunk's weights file")
    parser.add_argument("--settings", default=None, help="per-section options as JSON, e.g. "
                        "'{\"likelihood\": {\"k\": 256}}' (default: none)")
    add_load_arguments(parser, api)
    api.add("--batch-size", type=int, help="images per batch of the shared pass")
    parser.add_argument("--quick", action="store_true", help="a small profile: at most 32 "
                        "images, progressive coding at 4 points, IWAE K=16, one sample "
                        "temperature, precision predicted only (stated in attrs)")
    api.bind("quick")
    parser.add_argument("--out", default="audit", help="output directory, new or existing: "
                        "an audit of the same model, data and options there is resumed "
                        "(only missing sections computed) (default: ./audit)")
    api.bind("out")
    parser.add_argument("--resume", action="store_true", help="resume the audit in --out "
                        "(the default whenever --out holds one; this flag only says so)")
    parser.add_argument("--overwrite", action="store_true", help="replace an audit in --out "
                        "made for another model, data or options")
    api.bind("overwrite")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common(parser, out=False, plot=False)
    parser.set_defaults(run=_cmd_audit, out_is_directory=True)
