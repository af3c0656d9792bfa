"""``vaeprobe compress``, ``decompress`` and ``compare``: the subcommands of :mod:`vaeprobe.cli`
over :mod:`vaeprobe.compress` and :mod:`vaeprobe.compare`, their defaults read from the
functions' signatures and their flags bound to the parameters
(:func:`~vaeprobe._cli_args.bound_arguments`).

Why they are not rows of the noun table (:mod:`vaeprobe._cli_nouns`): ``compress`` checks its
``--file`` before the model opens and turns a model with non-finite PMFs into an exit status
(not a Dataset), and prints what it wrote; ``decompress`` returns images, not a Dataset, and
writes an .npz; ``compare`` takes several models and writes a folder (its --out), not one
Dataset and one figure. Only the negated flags (``--no-verify``, ``--no-information``) are
forwarded by hand."""

from __future__ import annotations

import sys


def _cmd_compress(args) -> int:
    import vaeprobe as vp
    from vaeprobe._cli_args import finish, load_probe

    args.device = args.device or "cpu"  # the coder runs on the CPU (bit-identical PMFs)
    from vaeprobe import outputs

    if args.file:  # before the model is opened: never an input, never a file not ours
        outputs.check_output(args.file, "--file", inputs=outputs.source_paths(
            args.checkpoint, args.data), overwrite=args.overwrite)
    from vaeprobe._bits_back import NonFiniteModelError
    from vaeprobe._cli_args import NAN_EXIT, bound_arguments

    try:
        ds = vp.compress(load_probe(args), **bound_arguments(args), verify=not args.no_verify)
    except NonFiniteModelError as error:
        print(f"WARNING: {error}")
        print(f"vaeprobe compress: error: {error} (exit status {NAN_EXIT})", file=sys.stderr)
        return NAN_EXIT
    n = int(ds.attrs["n_images"])
    print(f"{n} images: coded {float(ds.coded_bpd):.4f} ± {float(ds.coded_bpd_se):.4f} bits/dim "
          f"vs -ELBO {float(ds.elbo_bpd):.4f} ± {float(ds.elbo_bpd_se):.4f} at the same "
          f"discretization ({args.latent_bits} bits per latent element); overhead "
          f"{100 * float(ds.overhead_fraction):+.2f}% (coder alone "
          f"{100 * float(ds.coder_overhead_fraction):+.2f}%); initial bits "
          f"{int(ds.initial_bits)} (not counted above)")
    verdict = ("exact" if int(ds.attrs["round_trip"]) else
               "not checked (--no-verify)" if args.no_verify else "FAILED")
    print(f"encode {float(ds.encode_images_per_second):.1f} images/s, decode "
          f"{float(ds.decode_images_per_second):.1f} images/s (one CPU thread); round trip: "
          f"{verdict}")
    if args.file:
        print(f"wrote {args.file} ({int(ds.file_bits) // 8} bytes of stack + header)")
    return finish(ds, args, vp.plot.compress)


def add_compress(sub) -> None:
    import vaeprobe as vp
    from vaeprobe._cli_args import (
        ApiArguments,
        add_common,
        add_load_arguments,
        add_subparser,
        checkpoint_help,
    )

    parser = add_subparser(
        sub, "compress", "lossless bits-back ANS coding of images with the model: real coded "
        "bits/dim beside the -ELBO, a .vpbb file",
        "vaeprobe compress runs/demo --data patches32:test --n-images 100 --file test.vpbb")
    api = ApiArguments(parser, vp.compress, load=vp.load)
    parser.add_argument("checkpoint", help=checkpoint_help())
    parser.add_argument("--data", required=True, help="the images to code, e.g. "
                        "patches32:test")
    api.bind("data")
    api.add("--n-images", type=int, help="code a seeded random subset of this many images")
    api.add("--latent-bits", type=int, units="bits", help="bins per latent element: "
            "2^latent_bits of equal prior mass")
    api.add("--seed", type=int, help="seeds the subset and the initial random bits")
    parser.add_argument("--file", default=None, help="write the compressed images here (.vpbb;"
                        " `vaeprobe decompress` reads it; default: not written)")
    api.bind("file", "out")
    parser.add_argument("--no-verify", action="store_true", help="skip decoding the chain "
                        "again (no round-trip check, no decode speed)")
    add_load_arguments(parser, api)
    add_common(parser)
    api.bind("overwrite")
    parser.set_defaults(run=_cmd_compress)


def _cmd_decompress(args) -> int:
    import vaeprobe as vp
    from vaeprobe import outputs

    if args.images:
        header_model = _file_model(args.file)
        outputs.check_output(args.images, "--images", inputs=outputs.source_paths(
            args.file, args.model, header_model), overwrite=args.overwrite)
    from vaeprobe._cli_args import bound_arguments

    images = vp.decompress(**bound_arguments(args))
    print(f"decoded {images.shape[0]} images of shape {tuple(images.shape[1:])} from "
          f"{args.file} (their sha256 matches the file's)")
    if args.images:
        outputs.save_images_npz(args.images, images.numpy())
        print(f"wrote {args.images} (read it back as data npz:{args.images})")
    return 0


def _file_model(path) -> str | None:
    """The checkpoint a .vpbb names (an input of decompress), or None when unreadable."""
    from vaeprobe.compressed_file import CompressedFileError, read_compressed

    try:
        return read_compressed(path)[0].get("checkpoint") or None
    except (OSError, CompressedFileError):
        return None  # decompress itself says what is wrong with the file


def add_decompress(sub) -> None:
    import vaeprobe as vp
    from vaeprobe._cli_args import ApiArguments, add_subparser

    parser = add_subparser(sub, "decompress", "decode a .vpbb file written by `vaeprobe "
                        "compress` (bit-exact images)",
                        "vaeprobe decompress test.vpbb --model runs/demo --images test.npz")
    parser.add_argument("file", help="a .vpbb file")
    api = ApiArguments(parser, vp.decompress)
    api.bind("file", "path")
    api.add("--model", param="source", help="the model it was coded with (a run directory or "
            "checkpoint); another model is refused")
    parser.add_argument("--images", default=None, help="write the images here as .npz "
                        "(array 'images', uint8 N x C x H x W; default: not written)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing "
                        "--images file that vaeprobe did not write (default: refuse; never "
                        "the .vpbb or the model)")
    parser.set_defaults(run=_cmd_decompress)


def _cmd_compare(args) -> int:
    import vaeprobe as vp
    from vaeprobe._cli_args import bound_arguments

    ds = vp.compare(**bound_arguments(args), information=not args.no_information)
    from vaeprobe.compare import COLUMNS

    table = ds[list(COLUMNS)].to_dataframe()[list(COLUMNS)]
    print(table.dropna(axis=1, how="all").to_string(float_format="%.4g"))
    for sentence in filter(None, str(ds.attrs.get("warning", "")).split("; ")):
        print(f"WARNING: {sentence}")
    import json

    reused = json.loads(ds.attrs.get("reused_audits", "{}"))
    print(f"audits reused: {', '.join(f'{m} ({p})' for m, p in reused.items()) or 'none'}")
    for model, why in json.loads(ds.attrs.get("audits_not_reused", "{}")).items():
        print(f"audit not reused for {model}: {why}")
    if args.out_dir:
        print(f"wrote {args.out_dir}/compare.nc, compare.png, compare.html")
    return _compare_status(ds)


# compare's columns -> the section (or analysis) that defines them: NaN there is a failure
# unless that section was undefined for the model (attrs["undefined"] says so)
_DEFINED_BY = {"rate": "bits", "distortion": "reconstructions", "bpd": "likelihood"}


def _compare_status(ds) -> int:
    """0, or 3 (said) when a model's number is NaN or inf where its section was defined."""
    import json

    import numpy as np

    from vaeprobe._cli_args import nonfinite_status

    undefined = json.loads(ds.attrs.get("undefined", "{}"))
    bad = [f"{model}: {name}" for name, section in _DEFINED_BY.items()
           for model, value in zip(ds["model"].values, ds[name].values, strict=True)
           if not np.isfinite(value) and not any(
               said.startswith(f"{section}:") for said in undefined.get(str(model), []))]
    return nonfinite_status("compare", bad, sep="; ")


def add_compare(sub) -> None:
    import vaeprobe as vp
    from vaeprobe._cli_args import ApiArguments, add_subparser

    parser = add_subparser(
        sub, "compare", "several models (or saved audits) side by side: one table and one "
        "page (rate, distortion, PSNR/SSIM/LPIPS, bits/dim, information split, latent scale, "
        "rate-distortion figure with gamma)",
        "vaeprobe compare runs/gamma1 runs/gamma2 runs/gamma4 --data digits8:test --out cmp")
    api = ApiArguments(parser, vp.compare)
    parser.add_argument("sources", nargs="+", help="run directories, checkpoints, model "
                        "folders or saved audits (a folder with audit.nc)")
    parser.add_argument("--data", required=True, help="evaluation images, e.g. patches32:test")
    api.bind("sources")
    api.bind("data")
    api.add("--n-images", type=int, units="images", help="a seeded subset for the audits run")
    api.add("--seed", type=int, help="seeds the subset and every draw")
    api.add("--information-images", type=int, units="images", help="images of the "
            "information split (its cost grows as their square)")
    parser.add_argument("--no-information", action="store_true", help="skip the information "
                        "split (default: computed where the model's latents are Gaussian)")
    api.add("--feature-extractor", help="rFID network of the audits run")
    api.add("--lpips-trunk", help="LPIPS network of the audits run (alexnet, or "
            "random-TEST-ONLY: a flagged stand-in)")
    parser.add_argument("--out", dest="out_dir", default=None, help="a folder for compare.nc, "
                        "compare.png, compare.html and the audits run (default: not written)")
    api.bind("out_dir", "out")
    parser.add_argument("--overwrite", action="store_true", help="replace compare.nc / .png "
                        "/ .html in --out that vaeprobe did not write (default: refuse)")
    api.bind("overwrite")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 "
                        "= OMP_NUM_THREADS when set, else the usable cores; said on stderr)")
    parser.set_defaults(run=_cmd_compare)
