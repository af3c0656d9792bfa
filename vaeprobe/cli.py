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


COMMANDS = [_add_data, add_nouns, _add_weights, add_audit, add_compress, add_decompress,
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
