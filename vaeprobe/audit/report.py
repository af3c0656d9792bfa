"""The audit's files: ``audit.nc`` (one netCDF group per section), ``audit.png`` (one page),
``audit.html`` (one self-contained file, figures embedded as base64 PNG), and the printed
summary. Every file is written to a temporary name and renamed."""

from __future__ import annotations

import base64
import html
import io as _io
import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from vaeprobe.audit._common import fmt
from vaeprobe.io import PNG_SOFTWARE, atomic_path, clean_attrs


class AuditReport(dict):
    """Section name -> Dataset, in report order; ``attrs`` holds the audit's own provenance."""

    def __init__(self, sections=(), attrs: dict | None = None):
        super().__init__(sections)
        self.attrs = dict(attrs or {})

    def summary(self) -> str:
        return summary(self)

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        return write_report(self, out)

    def panels(self) -> dict[str, str | tuple[str, ...]]:
        """Section name -> the vaeprobe.plot function(s) drawing its panels (the registry's
        ``Section.figure``), for :func:`vaeprobe.plot.audit_page` and ``audit_section``."""
        return _panels()


# ---------------------------------------------------------------------------------------------
# netCDF


def _attrs(attrs: dict) -> dict:
    """:func:`vaeprobe.io.clean_attrs`, with str subclasses (numpy strings, torch versions) as
    plain str: h5py refuses them."""
    return {key: str(value) if isinstance(value, str) else value
            for key, value in clean_attrs(attrs).items()}


def netcdf_ready(ds: xr.Dataset) -> tuple[xr.Dataset, dict]:
    """A copy netCDF can hold (attrs cleaned, booleans as uint8) and its gzip encoding."""
    ds = ds.copy()
    ds.attrs = _attrs(ds.attrs)
    encoding = {}
    for name, variable in ds.variables.items():
        variable.attrs = _attrs(variable.attrs)
        if variable.dtype == bool:
            ds[name] = variable.astype(np.uint8)
        if variable.dtype.kind in "fiub" and variable.ndim > 0:
            encoding[name] = {"compression": "gzip", "compression_opts": 4}
    return ds, encoding


def save_netcdf(report: AuditReport, path: str | os.PathLike) -> Path:
    """Write every section as a netCDF group (root attrs: the audit's provenance), atomically."""
    with atomic_path(path, ".nc.tmp") as tmp:
        root = xr.Dataset()
        root.attrs = _attrs({**report.attrs, "sections": json.dumps(list(report))})
        root.to_netcdf(tmp, engine="h5netcdf", mode="w")
        for name, ds in report.items():
            ds, encoding = netcdf_ready(ds)
            ds.to_netcdf(tmp, engine="h5netcdf", mode="a", group=name, encoding=encoding)
    return Path(path)


def open_audit(path: str | os.PathLike) -> AuditReport:
    """Read an ``audit.nc`` back: section name -> Dataset (loaded, file closed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audit file not found: {path}")
    with xr.open_dataset(path, engine="h5netcdf") as root:
        attrs = dict(root.attrs)
    report = AuditReport(attrs=attrs)
    for name in json.loads(attrs.get("sections", "[]")):
        with xr.open_dataset(path, engine="h5netcdf", group=name) as ds:
            report[name] = ds.load()
    return report


# ---------------------------------------------------------------------------------------------
# summary


def _line(name: str, ds: xr.Dataset) -> str:
    from vaeprobe.audit.registry import sections

    a = ds.attrs
    if a.get("status") == "skipped":
        return f"skipped: {a.get('skipped')}"
    if a.get("status") == "failed":
        return f"FAILED: {a.get('error')}"
    section = sections().get(name)
    return section.summary(ds) if section is not None else a.get("status", "")


def _titles() -> dict[str, str]:
    from vaeprobe.audit.registry import titles

    return titles()


def _panels() -> dict[str, str | tuple[str, ...]]:
    """Section name -> the vaeprobe.plot function(s) that draw its panels."""
    from vaeprobe.audit.registry import sections

    return {name: section.figure for name, section in sections().items() if section.figure}


def summary(report: AuditReport) -> str:
    """A short text summary: one line per section (its headline numbers or why it is absent)."""
    lines = []
    for name, ds in report.items():
        try:
            line = _line(name, ds)
        except (KeyError, ValueError, IndexError, TypeError) as error:
            line = f"(no summary: {error})"
        lines.append(f"{_titles().get(name, name)}: {line}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# figures and HTML


def _png(figure) -> bytes:
    """PNG bytes of a laid-out figure (no bbox_inches="tight": it draws the figure twice)."""
    buffer = _io.BytesIO()  # tagged as vaeprobe's: a later audit into the folder may replace it
    figure.savefig(buffer, dpi=100, format="png", metadata={"Software": PNG_SOFTWARE})
    return buffer.getvalue()


def _section_pngs(name: str, ds: xr.Dataset) -> list[bytes]:
    """One PNG per panel of the section (as on the one-page figure), main panel first."""
    if name == "model_card":  # the card is its tables
        return []
    return [png for panel in range(len(_audit_panels(name, ds)))
            if (png := _panel_png(name, ds, panel, tight=True)) is not None]


def _audit_panels(name: str, ds: xr.Dataset) -> list:
    from vaeprobe.plot import audit_panels

    return audit_panels(name, ds, _panels())


def _panel_png(name: str, ds: xr.Dataset, panel: int, tight: bool) -> bytes | None:
    """Panel ``panel`` of a section as PNG bytes (its status text where it has no panel);
    None where the Dataset cannot be drawn."""
    from vaeprobe.plot import audit_section

    try:
        return _drawing_png(lambda ax: audit_section(name, ds, ax=ax, panels=_panels(),
                                                     panel=panel), (6.5, 4.2), tight)
    except (KeyError, ValueError, IndexError):
        return None


def _drawing_png(draw, figsize: tuple[float, float], tight: bool = False) -> bytes:
    """PNG bytes of a new figure of ``figsize`` inches that ``draw(ax)`` fills; the figure is
    closed whatever happens."""
    from vaeprobe.plot import axes

    ax = axes(None, figsize=figsize)  # a new figure (Agg without a display)
    try:
        draw(ax)
        if tight:
            ax.figure.tight_layout()
        return _png(ax.figure)
    finally:
        _close(ax.figure)


COLUMNS = 3  # panels per row of audit.png


def page_png(report: AuditReport, pngs: dict[str, list[bytes]], title: str = "") -> bytes:
    """``audit.png``: every section's panels (``pngs``, as drawn for the HTML; the model card,
    a skipped or a failed section as its text) on one page, :data:`COLUMNS` to a row, in
    report order, under ``title``. The panels are drawn once, for both files."""
    from PIL import Image

    cells = []
    for name, ds in report.items():
        cells += pngs.get(name) or [_panel_png(name, ds, 0, tight=False) or b""]
    images = [Image.open(_io.BytesIO(cell)).convert("RGB") for cell in cells if cell]
    width = max((image.width for image in images), default=650)
    height = max((image.height for image in images), default=420)
    header = Image.open(_io.BytesIO(_title_png(title, width * COLUMNS))).convert("RGB") \
        if title else None
    top = header.height if header else 0
    rows = max(1, -(-len(images) // COLUMNS))
    page = Image.new("RGB", (width * COLUMNS, top + height * rows), "white")
    if header:
        page.paste(header, (0, 0))
    for position, image in enumerate(images):
        row, column = divmod(position, COLUMNS)
        page.paste(image, (column * width, top + row * height))
    buffer = _io.BytesIO()
    page.save(buffer, format="png", pnginfo=_png_info())
    return buffer.getvalue()


def _title_png(title: str, width_px: int) -> bytes:
    def draw(ax):
        ax.set_axis_off()
        ax.figure.text(0.5, 0.5, title, ha="center", va="center", fontsize=11)

    return _drawing_png(draw, (width_px / 100, 0.45))


def _png_info():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    return info


def _previews_png(name: str, ds: xr.Dataset) -> bytes | None:
    """Progressive coding's images: the decoder mean for every k, per image."""
    from vaeprobe.plot import audit_progressive_previews

    if name != "progressive" or ds.attrs.get("status") != "ok":
        return None
    return _drawing_png(lambda ax: audit_progressive_previews(ds, ax=ax),
                        (1.5 + 0.7 * ds.sizes["k"], 3.2), tight=True)


def _close(figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _value(value) -> str:
    if isinstance(value, (float, np.floating)):
        return fmt(value, 5)
    return str(value)


def _tables(ds: xr.Dataset) -> str:
    """Scalars in one table; variables over one small dim (<= 64) grouped by that dim."""
    scalars = [(n, v) for n, v in ds.data_vars.items() if v.ndim == 0]
    out = []
    if scalars:
        rows = "".join(f"<tr><th>{html.escape(str(n))}</th><td>{html.escape(_value(v.item()))}"
                       f"</td><td class=u>{html.escape(str(v.attrs.get('units', '')))}</td></tr>"
                       for n, v in scalars)
        out.append(f"<table>{rows}</table>")
    groups: dict[str, list[str]] = {}
    for name, variable in ds.data_vars.items():
        if variable.ndim == 1 and variable.sizes[variable.dims[0]] <= 64 \
                and variable.dims[0] not in ("frequency", "latent_frequency", "image"):
            groups.setdefault(variable.dims[0], []).append(name)
        elif variable.ndim == 2 and set(variable.dims) <= {"kind", "dtype", "stage", "k",
                                                           "temperature", "layer", "channel"} \
                and variable.size <= 64:
            groups.setdefault(" x ".join(variable.dims), []).append(name)
    for dims, names in groups.items():
        frame = ds[names].to_dataframe()  # coordinates (layer names ...) come as columns
        out.append(f"<p class=dim>by {html.escape(dims)}</p><div class=wide>"
                   + frame.to_html(float_format=lambda v: fmt(v, 5), border=0) + "</div>")
    return "\n".join(out)


def _attrs_table(attrs: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in attrs.items())
    return f"<details><summary>protocol and provenance</summary><table>{rows}</table></details>"


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
td.u{color:#777}.skipped{color:#666;background:#f4f4f4;padding:.5em}
.failed{color:#a00;background:#fee;padding:.5em;white-space:pre-wrap}
.protocol{font-size:.85em;color:#444}.dim{font-size:.8em;color:#777;margin:.6em 0 0}
img{max-width:100%}.wide{overflow-x:auto}pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}"""


def render_html(report: AuditReport, page_png: bytes | None = None,
                pngs: dict[str, list[bytes]] | None = None) -> str:
    """The whole report as one HTML document (no external resources); ``pngs``: section ->
    its panels' PNGs where already drawn."""
    title = f"vaeprobe audit: {report.attrs.get('checkpoint', 'model')}"
    from vaeprobe.outputs import HTML_MARK

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>{HTML_MARK}<title>"
             f"{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(summary(report))}</pre>"]
    if page_png:
        parts.append("<details><summary>all sections on one page</summary><img alt='audit page' "
                     f"src='data:image/png;base64,{base64.b64encode(page_png).decode()}'>"
                     "</details>")
    for name, ds in report.items():
        status = ds.attrs.get("status", "?")
        heading = html.escape(_titles().get(name, name))
        parts.append(f"<section id='{html.escape(name)}'><h2>{heading}"
                     f" <small>({html.escape(status)})</small></h2>")
        if status == "skipped":
            parts.append(f"<p class=skipped>skipped: {html.escape(str(ds.attrs.get('skipped')))}"
                         "</p>")
        elif status == "failed":
            parts.append(f"<p class=failed>failed: {html.escape(str(ds.attrs.get('error')))}\n"
                         f"{html.escape(str(ds.attrs.get('traceback', '')))}</p>")
        else:
            if ds.attrs.get("protocol"):
                parts.append(f"<p class=protocol><b>protocol:</b> "
                             f"{html.escape(str(ds.attrs['protocol']))}</p>")
            for key in ("warning", "lpips_skipped", "rfid_skipped", "msssim_skipped",
                        "fid_skipped", "kinds_skipped", "dtype_skipped"):
                value = ds.attrs.get(key)
                if value and value not in ("{}", "[]"):
                    parts.append(f"<p class=skipped>{html.escape(key)}: {html.escape(str(value))}"
                                 "</p>")
            drawn = pngs[name] if pngs is not None and name in pngs else _section_pngs(name, ds)
            for png in (*drawn, _previews_png(name, ds)):
                if png:
                    parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,"
                                 f"{base64.b64encode(png).decode()}'>")
            parts.append(_tables(ds))
        parts.append(_attrs_table(ds.attrs) + "</section>")
    parts.append(f"<footer><p class=dim>{html.escape(json.dumps(report.attrs, default=str))}"
                 "</p></footer></body></html>")
    return "\n".join(parts)


def write_report(report: AuditReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``out/audit.nc``, ``out/audit.png`` and ``out/audit.html`` (each atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"nc": save_netcdf(report, out / "audit.nc")}
    pngs = {name: _section_pngs(name, ds) for name, ds in report.items()}
    page = page_png(report, pngs, title=f"vaeprobe audit: {report.attrs.get('checkpoint', '')}")
    for suffix, content in (("png", page), ("html", render_html(report, page, pngs).encode())):
        path = out / f"audit.{suffix}"
        with atomic_path(path, f".{suffix}.tmp") as tmp:
            tmp.write_bytes(content)
        paths[suffix] = path
    umask = os.umask(0)
    os.umask(umask)
    for path in paths.values():  # temporary files are private (0600); reports are to be shared
        path.chmod(0o666 & ~umask)
    return paths
