from __future__ import annotations


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
    from vaeprobe._version import __version__
    from vaeprobe.io import atomic_path

    figure = getattr(ax_or_fig, "figure", ax_or_fig)
    with atomic_path(path, ".png.tmp") as tmp:  # a full disk: OutputError, nothing half-written
        # the Software tag marks the file as vaeprobe's: the CLI replaces only its own results
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png",
                       metadata={"Software": f"vaeprobe {__version__}"})
