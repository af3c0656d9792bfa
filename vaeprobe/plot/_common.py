from __future__ import annotations

import numpy as np


def axes(ax=None, figsize=(5, 4)):
    """The given Axes, or a new one (Agg backend when no display is set)."""
    if ax is not None:
        return ax
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        import os

        if not os.environ.get("DISPLAY"):
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def save_figure(ax_or_fig, path) -> None:
    """Save the figure holding ``ax_or_fig`` atomically (PNG)."""
    from vaeprobe.io import PNG_SOFTWARE, atomic_path

    figure = getattr(ax_or_fig, "figure", ax_or_fig)
    with atomic_path(path, ".png.tmp") as tmp:  # a full disk: OutputError, nothing half-written
        # the Software tag marks the file as vaeprobe's: the CLI replaces only its own results
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png",
                       metadata={"Software": PNG_SOFTWARE})


MAX_LABELS = 40  # categorical axes label at most this many categories (every k-th beyond)


def needs(*variables: str):
    """Mark a panel function as drawn only for Datasets holding ``variables``."""

    def mark(function):
        function.needs = variables
        return function

    return mark


def categorical(ax, labels: list[str], axis: str = "x", rotation: float = 0,
                fontsize: float = 7) -> None:
    """Ticks at 0 .. n-1 labelled by ``labels`` (every k-th beyond :data:`MAX_LABELS`, the
    others blank), so that the axis reads as categories, not as a number line."""
    step = max(1, -(-len(labels) // MAX_LABELS))
    shown = [label if index % step == 0 else "" for index, label in enumerate(labels)]
    positions = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(positions, shown, rotation=rotation, fontsize=fontsize,
                      ha="right" if rotation else "center")
        ax.set_xlim(-0.6, len(labels) - 0.4)
    else:
        ax.set_yticks(positions, shown, fontsize=fontsize)


def layer_labels(ds) -> list[str]:
    """"name (HxW)" per latent layer."""
    return [f"{name} ({resolution})" for name, resolution in
            zip(ds["name"].values, ds["layer_resolution"].values, strict=True)]


def channel_labels(count: int) -> list[str]:
    return [f"ch {index}" for index in range(count)]
