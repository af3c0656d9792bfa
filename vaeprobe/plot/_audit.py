"""Figures of ``vp.audit``: one panel per section (each takes that section's Dataset and an
optional Axes) and the one-page summary of every section (:func:`audit_page`)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import xarray as xr

from vaeprobe.plot._common import axes
from vaeprobe.plot._images import tile
from vaeprobe.plot._latent_panels import audit_bits, audit_latents  # noqa: F401  (panels)


def _mosaic(ax, rows: list[np.ndarray], labels: list[str], columns: int = 8):
    """Rows of uint8 images (N, C, H, W), one mosaic, a label left of each row."""
    rows = [np.asarray(r)[:columns] for r in rows]
    columns = max(1, max(len(r) for r in rows))  # fewer images than columns: no white margin
    tiles = [tile(r.astype(np.uint8), columns) for r in rows]
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255)
             for t in tiles]
    mosaic = np.concatenate(tiles, 0)
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0,
              vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(i + 0.5) * tiles[0].shape[0] for i in range(len(tiles))])
    ax.set_yticklabels(labels, fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def audit_status(ds: xr.Dataset, ax=None, title: str = ""):
    """A text panel: why a section was skipped or how it failed."""
    ax = axes(ax)
    status = ds.attrs.get("status", "?")
    reason = ds.attrs.get("skipped") or ds.attrs.get("error") or ""
    ax.text(0.02, 0.95, f"{status}: " + "\n".join(textwrap.wrap(str(reason), 60)),
            va="top", ha="left", fontsize=8, transform=ax.transAxes, family="monospace",
            color="firebrick" if status == "failed" else "dimgray")
    ax.set_axis_off()
    ax.set_title(title)
    return ax


def audit_card(ds: xr.Dataset, ax=None):
    """The model card as text: source, layers, likelihood and prior."""
    ax = axes(ax)
    a = ds.attrs
    layers = [f"{name}: {res} x {int(c)}" for name, res, c in zip(
        ds["name"].values, ds["layer_resolution"].values, ds["channels"].values, strict=True)]
    if len(layers) > 8:
        layers = layers[:4] + [f"... ({len(layers) - 8} more)"] + layers[-4:]
    lines = [f"format: {a.get('format', '?')}", f"checkpoint: {a.get('checkpoint', '?')}",
             f"sha256: {str(a.get('checkpoint_sha256', '-'))[:16]}",
             f"parameters: {int(ds['n_parameters']):,}",
             f"image: {a.get('image_shape')}, likelihood: {a.get('likelihood_kind')} "
             f"({a.get('n_bits')} bits)",
             f"prior generative: {'yes' if int(a.get('prior_is_generative', 0)) else 'no'}",
             f"latent layers ({int(ds['n_layers'])}, {int(ds['latent_dims_total'])} dims):",
             *[f"  {line}" for line in layers]]
    text = "\n".join(textwrap.shorten(line, 64) if len(line) > 64 else line for line in lines)
    ax.text(0.02, 0.98, text, va="top", ha="left", fontsize=7, family="monospace",
            transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title("model card")
    return ax


def audit_reconstructions(ds: xr.Dataset, ax=None, columns: int = 8):
    """Inputs above their reconstructions from the posterior mean and a posterior sample."""
    ax = axes(ax)
    kinds = [str(k) for k in ds["kind"].values]
    _mosaic(ax, [ds["preview_input"].values] + [ds["preview"].sel(kind=k).values for k in kinds],
            ["input"] + [k.replace("posterior_", "") for k in kinds], columns)
    mean = ds.sel(kind=kinds[0])
    ax.set_title(f"PSNR {float(mean['psnr_mean']):.1f} dB, SSIM {float(mean['ssim_mean']):.3f}"
                 f" (posterior mean)", fontsize=9)
    return ax


def audit_progressive(ds: xr.Dataset, ax=None):
    """Distortion against the cumulative rate of the first k layers (mean and sample)."""
    ax = axes(ax)
    rate = ds["cumulative_rate"].values
    for kind, style in zip(ds["kind"].values, ("o-", "s--"), strict=False):
        ax.plot(rate, ds["distortion"].sel(kind=kind).values, style, ms=3, label=str(kind))
    for k, r in zip(ds["k"].values, rate, strict=True):
        ax.annotate(str(int(k)), (r, float(ds["distortion"].sel(kind="mean", k=k))),
                    fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("cumulative rate of layers 1..k [nats]")
    ax.set_ylabel("distortion [sum of squares on [0, 1]]")
    ax.set_title("distortion with layers 1..k from the posterior, the rest from the prior\n"
                 "(labels: k)", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def audit_progressive_previews(ds: xr.Dataset, ax=None, kind: str = "mean",
                               n_images: int = 4):
    """Per image (rows): the input, then the decoder mean for k = 0 .. L layers from the
    posterior (columns)."""
    ax = axes(ax, figsize=(1 + 0.6 * ds.sizes["k"], 0.7 * n_images))
    previews = ds["preview"].sel(kind=kind).values  # (k, image, C, H, W)
    n_images = min(n_images, previews.shape[1])
    rows = [np.concatenate([ds["preview_input"].values[i:i + 1], previews[:, i]])
            for i in range(n_images)]
    _mosaic(ax, rows, [f"image {i}" for i in range(n_images)], columns=len(rows[0]))
    ax.set_title(f"input, then k = 0 .. {ds.sizes['k'] - 1} layers from the posterior "
                 f"({kind})", fontsize=9)
    return ax


def audit_spectra(ds: xr.Dataset, ax=None):
    """Reconstruction power relative to the data against frequency; latent spectra inset."""
    ax = axes(ax)
    relative = ds["relative_power"]
    values = relative.values[0] if "step" in relative.dims else relative.values
    ax.plot(ds["frequency"].values, values, "k-", label="reconstruction / data")
    ax.axhline(1.0, color="grey", lw=0.7, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("frequency [cycles / pixel]")
    ax.set_ylabel("power ratio [reconstruction / data]")
    hff = ds["high_frequency_fraction"].values.ravel()[0]
    ax.set_title(f"radial power spectrum of reconstructions over the data's\nhigh-frequency "
                 f"fraction {hff:.3f} (data {float(ds['high_frequency_fraction_data']):.3f})",
                 fontsize=9)
    if "latent_power_normalised" in ds and int(ds["spatial"].sum()):
        inset = ax.inset_axes([0.55, 0.55, 0.42, 0.4])
        for layer in ds["layer"].values[ds["spatial"].values == 1]:
            curve = ds["latent_power_normalised"].sel(layer=layer)
            keep = np.isfinite(curve.values)
            inset.plot(ds["latent_frequency"].values[keep], curve.values[keep], lw=0.8)
        inset.set_yscale("log")
        inset.set_title("latent spectra [normalised power vs cycles / latent position]",
                        fontsize=5)
        inset.tick_params(labelsize=5)
    return ax


def audit_samples(ds: xr.Dataset, ax=None, columns: int = 8):
    """Prior samples, one row per temperature and kind."""
    ax = axes(ax)
    rows, labels = [], []
    for temperature in ds["temperature"].values:
        for kind in ds["kind"].values:
            rows.append(ds["images"].sel(temperature=temperature, kind=kind).values)
            fid = float(ds["fid"].sel(temperature=temperature, kind=kind))
            labels.append(f"T={temperature:g} {kind}" + (f"\nFID {fid:.1f}"
                                                         if np.isfinite(fid) else ""))
    _mosaic(ax, rows, labels, columns)
    ax.set_title("prior samples", fontsize=9)
    return ax


def audit_precision(ds: xr.Dataset, ax=None):
    """Largest deviation from float32 per dtype and stage, NaN/inf counts above the bars."""
    ax = axes(ax)
    dtypes = [str(d) for d in ds["dtype"].values if str(d) != "float32"]
    stages = [str(s) for s in ds["stage"].values]
    width = 0.8 / max(len(dtypes), 1)
    for index, dtype in enumerate(dtypes):
        cell = ds.sel(dtype=dtype)
        deviation = np.nan_to_num(cell["max_abs_deviation"].values, nan=0.0)
        positions = np.arange(len(stages)) + index * width
        ax.bar(positions, np.maximum(deviation, 1e-12), width, label=dtype)
        for x, nan, inf in zip(positions, cell["nan_count"].values, cell["inf_count"].values,
                               strict=True):
            if nan or inf:
                label = "skipped" if nan < 0 else f"NaN {int(nan)}\ninf {int(inf)}"
                ax.text(x, 1e-12, label, fontsize=6, color="firebrick", ha="center",
                        va="bottom", rotation=90)
    ax.set_xticks(np.arange(len(stages)) + width * (len(dtypes) - 1) / 2, stages)
    ax.set_xlabel("stage")
    ax.set_yscale("log")
    ax.set_ylabel("max |deviation| from float32\n[latents: latent units; images: 0-1]",
                  fontsize=8)
    exceeding = json.loads(ds.attrs.get("modules_exceeding_float16", "[]"))
    ax.set_title(f"low-precision deviation per stage; {len(exceeding)} module(s) beyond "
                 f"float16 range", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def _plot_function(name: str):
    """The public plot function called ``name`` (it lives in one of the plot modules)."""
    import sys

    # the package's public names (vaeprobe.plot is loaded before any of its modules)
    for module in (sys.modules[__name__], sys.modules[__package__]):
        if not name.startswith("_") and callable(getattr(module, name, None)):
            return getattr(module, name)
    return None


def audit_panels(name: str, ds: xr.Dataset, panels: dict | None) -> list:
    """The plot functions that draw section ``name``'s panels for ``ds``, main panel first.

    ``panels`` maps section names to one vaeprobe.plot function name or a tuple of them (the
    audit's registry: ``report.panels()`` of the report :func:`vaeprobe.audit` returns or
    :func:`vaeprobe.audit.open_audit` reads); a function with a ``needs`` attribute (variable
    names) is left out when ``ds`` lacks them (the rate map of a hierarchical model). Empty
    for a skipped or failed section."""
    if panels is None:
        raise ValueError(f"say which plot functions draw the section {name!r}: pass "
                         f"panels=report.panels() (the report of vp.audit or open_audit)")
    if ds.attrs.get("status") != "ok":
        return []
    spec = panels.get(name) or ()
    functions = [_plot_function(function) for function in
                 ((spec,) if isinstance(spec, str) else tuple(spec))]
    return [function for function in functions if function is not None
            and all(variable in ds for variable in getattr(function, "needs", ()))]


def _draw_section(name: str, ds: xr.Dataset, ax, panels: dict | None, panel: int = 0):
    functions = audit_panels(name, ds, panels)
    if panel >= len(functions):
        return audit_status(ds, ax, title=name)
    functions[panel](ds, ax=ax)
    return ax


def audit_section(name: str, ds: xr.Dataset, ax=None, panels: dict | None = None,
                  panel: int = 0):
    """Panel number ``panel`` of one audit section (by its name; ``panels`` as in
    :func:`audit_panels`), or its skip / failure text."""
    ax = axes(ax, figsize=(6.5, 4.2))
    return _draw_section(name, ds, ax, panels, panel)


def audit_page(sections: dict, title: str = "", panels: dict | None = None):
    """One multi-panel page: every panel of every section of an audit (name -> Dataset), in
    order; ``panels`` as in :func:`audit_panels` (default: the report's own,
    ``sections.panels()``).

    Returns the matplotlib Figure.
    """
    plt = _pyplot()
    if panels is None and callable(getattr(sections, "panels", None)):
        panels = sections.panels()  # an AuditReport knows its sections' panels
    cells = [(name, index) for name, ds in sections.items()
             for index in range(max(1, len(audit_panels(name, ds, panels))))]
    columns = 3
    rows = -(-len(cells) // columns)
    figure = plt.figure(figsize=(6 * columns, 4.4 * rows))
    for position, (name, panel) in enumerate(cells):
        ax = figure.add_subplot(rows, columns, position + 1)
        try:
            _draw_section(name, sections[name], ax, panels, panel)
        except (KeyError, ValueError, IndexError) as error:  # a Dataset the panel cannot read
            ax.clear()
            ax.text(0.02, 0.9, f"cannot draw: {error}", fontsize=8, transform=ax.transAxes)
            ax.set_axis_off()
        heading = ax.get_title()
        ax.set_title("")
        ax.set_title(f"{name}: {heading}", fontsize=9, loc="left")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    return figure


def _pyplot():
    """matplotlib.pyplot, on the Agg backend when there is no display (as ``axes`` does)."""
    import os

    import matplotlib

    inline = ("agg", "module://matplotlib_inline.backend_inline")
    if not os.environ.get("DISPLAY") and matplotlib.get_backend().lower() not in inline:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
