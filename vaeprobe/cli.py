"""``vaeprobe <command>``: a thin layer over the public functions."""

from __future__ import annotations

import argparse
import sys

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


COMMANDS = [_add_data]


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
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"vaeprobe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
