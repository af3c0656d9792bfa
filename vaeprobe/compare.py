"""Several models side by side: one table (a Dataset along ``model``) and one page.

Each model is read from its audit (:func:`vaeprobe.audit`): an audit already on disk for the same
checkpoint and data is reused (a saved audit may also be given instead of a model), otherwise the
sections the table needs are run (and written under ``out`` for next time). The information split
(:func:`vaeprobe.information`) is added where the model is at hand and its latents are Gaussian.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import xarray as xr

from vaeprobe import io
from vaeprobe.data import as_dataset, dataset_name
from vaeprobe.probe import Probe, UndefinedAnalysisError

AUDIT_SECTIONS = ("bits", "reconstructions", "latents", "likelihood")
KIND = "posterior_sample"  # reconstructions from a posterior draw: the trainer's distortion
# the table: variable -> (units, long name)
COLUMNS = {
    "rate": ("nats", "total rate KL(q || p) per image"),
    "rate_bpd": ("bits/dim", "total rate"),
    "distortion": ("sum of squares on [0, 1]", "per-image squared error, posterior sample"),
    "mse": ("mean square on [0, 1]", "posterior sample"),
    "psnr": ("dB", "posterior sample, per-image mean"),
    "ssim": ("1", "posterior sample, per-image mean"),
    "lpips": ("1", "posterior sample, per-image mean"),
    "bpd": ("bits/dim", "IWAE bound (the audit's likelihood section)"),
    "elbo_bpd": ("bits/dim", "-ELBO, one posterior draw per image"),
    "mutual_information": ("nats", "I(x; z) over all layers (vp.information)"),
    "marginal_kl": ("nats", "KL(q(z) || p(z)) over all layers (vp.information)"),
    "latent_scaling_factor": ("1 / latent unit", "1 / std of posterior samples, mean over "
                              "layers (the audit's latent statistics)"),
    "gamma": ("sum of squares on [0, 1]", "the run's distortion target (vaeprobe runs)"),
}


def compare(sources, data, *, n_images: int = 256, seed: int = 0, information: bool = True,
            information_images: int = 256, out=None, feature_extractor: str =
            "inception-v3-compat", lpips_trunk: str = "alexnet", progress: bool = True,
            overwrite: bool = False) -> xr.Dataset:
    """Compare models (checkpoints, run directories, model folders or saved audits).

    Parameters
    ----------
    sources : sequence
        Each a Probe, a path :func:`vaeprobe.load` opens, or a saved audit (a folder holding
        ``audit.nc`` or the file itself). A model's own audit is reused when one is found for
        the same checkpoint sha256 and dataset: in ``RUN/audit/``, beside a checkpoint in
        ``audit/``, or in ``out/models/<label>/`` (where this function writes the audits it
        runs).
    data : str, Dataset or uint8 tensor
        The evaluation images (every model on the same ones).
    n_images, seed : int
        The audit's subset (reused audits keep theirs: see ``audit_n_images``).
    information : bool
        Also run :func:`vaeprobe.information` (on ``information_images`` images) for the
        models at hand with Gaussian latents.
    out : path, optional
        A folder: ``compare.nc``, ``compare.png`` (rate-distortion figure and the table's
        panels), ``compare.html`` (the table and the figure), and ``models/<label>/`` audits.
    feature_extractor, lpips_trunk : str
        The networks of rFID / LPIPS when an audit runs (missing weights: NaN, said in attrs).
    progress : bool
        Progress bars on stderr.
    overwrite : bool
        Replace ``compare.nc`` / ``.png`` / ``.html`` in ``out`` that vaeprobe did not write.

    Every model is opened (once) and checked against the data's image size before any audit
    runs, and stays open until the table is done; an error names the model. An audit on disk
    is reused only when its protocol (images, seed, section settings, networks, not
    ``--quick``) is this call's; ``attrs["reused_audits"]`` names the files reused and
    ``attrs["audits_not_reused"]`` says why others were not.

    Returns
    -------
    xarray.Dataset
        Dim ``model`` (coords ``source``, ``checkpoint_sha256``, ``format``, ``objective``,
        ``audit_reused`` 0/1, ``audit_n_images``): ``rate``, ``rate_bpd``, ``distortion``,
        ``mse``, ``psnr``, ``ssim``, ``lpips``, ``bpd``, ``elbo_bpd``,
        ``mutual_information``, ``marginal_kl``, ``latent_scaling_factor``, ``gamma`` (NaN
        where undefined for a model, with the reason in ``attrs["undefined"]``); where every
        model has one latent layer of the same channels and resolution, ``rate_per_channel``
        and ``rate_per_channel_se`` (model, channel), drawn side by side on the page;
        ``attrs["warning"]``: a model's information near its log N ceiling, and the like.

    Examples
    --------
    >>> ds = compare(["runs/gamma1", "runs/gamma2", "runs/gamma4"], "digits8:test")
    ... # doctest: +SKIP
    >>> ds[["rate", "distortion", "gamma"]].to_dataframe()  # doctest: +SKIP
    """
    if isinstance(sources, (str, os.PathLike, Probe)) or len(sources) < 1:
        raise TypeError("sources must be a list of models or saved audits, e.g. "
                        "vp.compare(['runs/a', 'runs/b'], data)")
    dataset = as_dataset(data)
    labels = _labels(sources)
    if out is not None:
        _check_out(Path(out), sources, data, overwrite)
    probes = _open_all(labels, sources, dataset)  # every model opened and sized before any audit
    protocol = _protocol(dataset, n_images, seed, feature_extractor, lpips_trunk)
    rows, undefined, reused, not_reused = [], {}, {}, {}
    for label, source, probe in zip(labels, sources, probes, strict=True):
        try:
            row, said = _row(label, source, probe, dataset, out, dict(
                n_images=n_images, seed=seed, information=information,
                information_images=information_images, feature_extractor=feature_extractor,
                lpips_trunk=lpips_trunk, progress=progress), protocol)
        except (ValueError, OSError, KeyError, TypeError) as error:
            raise CompareError(f"model {label} ({source}): {_text(error)}") from None
        rows.append(row)
        if said:
            undefined[label] = said
        if row.get("audit_path"):
            reused[label] = row["audit_path"]
        if row.get("not_reused"):
            not_reused[label] = row["not_reused"]
    ds = _table(labels, rows)
    warnings = [f"{label}: {row['warning']}" for label, row in zip(labels, rows, strict=True)
                if row.get("warning")] + _mixed_protocols(labels, rows)
    ds.attrs = io.provenance("compare", dict(n_images=n_images, seed=seed,
                                             information=information,
                                             information_images=information_images),
                             dataset=dataset_name(dataset), n_images=n_images, seed=seed,
                             reconstruction_kind=KIND, undefined=json.dumps(undefined),
                             reused_audits=json.dumps(reused),
                             audits_not_reused=json.dumps(not_reused),
                             warning="; ".join(warnings))
    if out is not None:
        write_page(ds, Path(out))
    return ds


class CompareError(ValueError):
    """A model of :func:`compare` that cannot be opened, sized or audited (named)."""


def _text(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _check_out(out: Path, sources, data, overwrite: bool) -> None:
    """``out`` is not an input, and its page files are new or vaeprobe's (or ``overwrite``)."""
    from vaeprobe.outputs import check_directory_files, source_paths

    for path in source_paths(sources, data):
        if out.resolve() == path.resolve():
            raise io.OutputError(f"refusing to write compare's out={out}: it is one of the "
                                 f"inputs ({path}); name another folder")
    if out.exists() and not out.is_dir():
        raise io.OutputError(f"out={out} is a file; compare writes a folder (name a new or an "
                             f"existing folder)")
    check_directory_files(out, ("compare.nc", "compare.png", "compare.html"), "out",
                          overwrite=overwrite)


def _open_all(labels, sources, dataset) -> list[Probe | None]:
    """Open every model (or saved audit) and check it takes the data's images, naming the
    model in any error: nothing is audited before all are known to open. Returns each
    source's Probe (None for a saved audit), opened once and used for its row (so every
    model stays open until the table is done)."""
    from vaeprobe._analysis import fit_probe, resolve_source
    from vaeprobe.audit import open_audit

    probes = []
    for label, source in zip(labels, sources, strict=True):
        try:
            saved = _is_audit(source)
            if saved is not None:
                open_audit(saved)
                probes.append(None)
            else:
                probes.append(resolve_source(source))
                fit_probe(probes[-1], dataset)
        except (ValueError, OSError, KeyError, TypeError) as error:
            raise CompareError(f"model {label} ({source}): {_text(error)}; nothing was "
                               f"audited (every model is checked first)") from None
    return probes


def _protocol(dataset, n_images, seed, feature_extractor, lpips_trunk) -> dict:
    """What an audit must have been run with to be reused here."""
    from vaeprobe.audit.registry import sections
    from vaeprobe.audit.run import resolve_settings

    settings = resolve_settings(sections(), list(AUDIT_SECTIONS), None, False)
    return dict(n_images=min(n_images, len(dataset)), seed=seed, quick=0,
                feature_extractor=feature_extractor, lpips_trunk=lpips_trunk,
                settings=json.loads(json.dumps(settings, sort_keys=True)))


def _audit_protocol(attrs: dict) -> dict:
    """The protocol an audit on disk was run with (its attrs)."""
    try:
        parameters = json.loads(attrs.get("parameters", "{}"))
    except ValueError:
        parameters = {}
    settings = parameters.get("settings", {}) if isinstance(parameters, dict) else {}
    return dict(n_images=int(attrs.get("n_images", -1)), seed=int(attrs.get("seed", -1)),
                quick=int(attrs.get("quick", 0)),
                feature_extractor=parameters.get("feature_extractor"),
                lpips_trunk=parameters.get("lpips_trunk"),
                settings={name: settings.get(name) for name in AUDIT_SECTIONS})


def _protocol_differences(theirs: dict, ours: dict) -> list[str]:
    return [f"{key} {theirs.get(key)!r} (here {ours[key]!r})" if key != "settings" else
            "section settings" for key in ours if theirs.get(key) != ours[key]]


def _mixed_protocols(labels, rows) -> list[str]:
    """A warning when the models' audits were run on other images or settings."""
    seen = {label: row["protocol"] for label, row in zip(labels, rows, strict=True)
            if row.get("protocol")}
    kinds = {json.dumps(p, sort_keys=True) for p in seen.values()}
    if len(kinds) <= 1:
        return []
    said = ", ".join(f"{label}: {p['n_images']} images, seed {p['seed']}"
                     f"{', quick' if p['quick'] else ''}" for label, p in seen.items())
    return [f"the models were audited under different protocols ({said}): their numbers are "
            f"not on the same images or settings"]


def _labels(sources) -> list[str]:
    """Short unique names: the path's last part (its parent's too when they clash)."""
    names = []
    for index, source in enumerate(sources):
        if isinstance(source, Probe):
            names.append(f"model{index}")
            continue
        path = Path(source)
        name = path.name if path.name not in ("audit", "audit.nc") else path.parent.name
        names.append(name if path.suffix != ".pt" else f"{path.parent.name}/{path.stem}")
    return [name if names.count(name) == 1 else f"{name}#{index}"
            for index, name in enumerate(names)]


def _is_audit(source) -> Path | None:
    if isinstance(source, Probe):
        return None
    path = Path(source)
    if path.is_dir() and (path / "audit.nc").is_file() and not any(path.glob("ckpt_step*")):
        return path / "audit.nc"
    return path if path.is_file() and path.name.endswith(".nc") else None


def _row(label: str, source, probe: Probe | None, dataset, out, options: dict,
         protocol: dict) -> tuple[dict, list[str]]:
    """One model's facts and numbers, and what was undefined for it (why); ``probe`` is the
    source opened by :func:`_open_all` (None: ``source`` is a saved audit)."""
    from vaeprobe.audit import audit, open_audit

    said, not_reused = [], ""
    if probe is None:
        report, found = open_audit(_is_audit(source)), _is_audit(source)
        facts = dict(report.attrs)
    else:
        facts = dict(probe.source)
        found, not_reused = _find_audit(source, probe, dataset, out, label, protocol)
        if found is not None:
            report = open_audit(found)
        else:
            folder = None if out is None else Path(out) / "models" / label
            report = audit(probe, dataset, n_images=options["n_images"], seed=options["seed"],
                           sections=list(AUDIT_SECTIONS), progress=options["progress"],
                           out=folder, feature_extractor=options["feature_extractor"],
                           lpips_trunk=options["lpips_trunk"],
                           overwrite=True)  # compare's own folder: another protocol's is replaced
    row = dict(source=str(source) if probe is None or not isinstance(source, Probe)
               else probe.name, checkpoint_sha256=str(facts.get("checkpoint_sha256", "")),
               format=str(facts.get("format", "")), audit_reused=int(found is not None),
               audit_n_images=int(report.attrs.get("n_images", -1)),
               audit_path=str(found) if found is not None else "", not_reused=not_reused,
               protocol=_audit_protocol(report.attrs))
    row.update(_from_audit(report, said))
    row.update(_run_facts(facts.get("checkpoint", "")))
    if probe is not None and options["information"]:
        row.update(_information(probe, dataset, options, said))
    return row, said


def _find_audit(source, probe: Probe, dataset, out, label: str,
                protocol: dict) -> tuple[Path | None, str]:
    """(an audit on disk of this very checkpoint on these images under this protocol, or
    None; why an audit found was not reused)."""
    candidates = []
    if not isinstance(source, Probe):
        path = Path(source)
        candidates += [path / "audit" / "audit.nc", path.parent / "audit" / "audit.nc"]
    if out is not None:
        candidates.append(Path(out) / "models" / label / "audit.nc")
    sha = probe.source.get("checkpoint_sha256")
    why = ""
    for candidate in candidates:
        if not sha or not candidate.is_file():
            continue
        try:
            with xr.open_dataset(candidate, engine="h5netcdf") as root:
                attrs = dict(root.attrs)
            sections = set(json.loads(attrs.get("sections", "[]")))
        except (OSError, ValueError) as error:
            why = f"{candidate}: unreadable ({error})"
            continue
        if attrs.get("checkpoint_sha256") != sha or attrs.get("dataset") != \
                dataset_name(dataset) or not set(AUDIT_SECTIONS) <= sections:
            continue
        differ = _protocol_differences(_audit_protocol(attrs), protocol)
        if differ:
            why = f"{candidate}: another protocol ({', '.join(differ)})"
            continue
        return candidate, ""
    return None, why


def _section(report, name: str, said: list[str]):
    ds = report.get(name)
    if ds is None:
        said.append(f"{name}: not in the audit")
        return None
    if ds.attrs.get("status", "ok") != "ok":
        said.append(f"{name}: {ds.attrs.get('skipped') or ds.attrs.get('error') or 'skipped'}")
        return None
    return ds


def _from_audit(report, said: list[str]) -> dict:
    row = {}
    bits = _section(report, "bits", said)
    if bits is not None:
        row.update(rate=float(bits["total_rate"]), rate_bpd=float(bits["rate_bpd"].sum()))
        if "elbo_bpd" in bits:
            row["elbo_bpd"] = float(bits["elbo_bpd"])
        if bits.sizes.get("layer") == 1:  # one latent layer: its channels side by side
            channels = int(bits["channels"].values[0])
            layout = (channels, str(bits["layer_resolution"].values[0]))
            se = bits["rate_per_channel_se"].values[0, :channels] \
                if "rate_per_channel_se" in bits else np.full(channels, math.nan)
            row["channel_rate"] = (layout, bits["rate_per_channel"].values[0, :channels], se)
    recon = _section(report, "reconstructions", said)
    if recon is not None:
        pick = recon.sel(kind=KIND)
        row.update(distortion=float(pick["distortion_mean"]), mse=float(pick["mse_mean"]),
                   psnr=float(pick["psnr_mean"]), ssim=float(pick["ssim_mean"]),
                   lpips=float(pick["lpips_mean"]))
    latents = _section(report, "latents", said)
    if latents is not None:
        row["latent_scaling_factor"] = float(latents["recommended_scaling_factor"].mean())
    likelihood = _section(report, "likelihood", said)
    if likelihood is not None:
        row["bpd"] = float(likelihood["bpd_mean"])
    return row


def _run_facts(checkpoint: str) -> dict:
    """gamma and objective of a vaeprobe run (its config.json beside the checkpoint)."""
    from vaeprobe.run import Run

    if not checkpoint:
        return {}
    try:
        run = Run(Path(checkpoint).parent)
        gamma, objective = run.gamma, run.objective
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return dict(gamma=float(gamma) if gamma is not None else math.nan,
                objective=str(objective or ""))


def _information(probe: Probe, dataset, options: dict, said: list[str]) -> dict:
    from vaeprobe.information import information

    try:
        ds = information(probe, dataset, n_images=options["information_images"],
                         seed=options["seed"], progress=options["progress"])
    except UndefinedAnalysisError as error:
        said.append(f"information: {error}")
        return {}
    row = dict(mutual_information=float(ds["total_mutual_information"]),
               marginal_kl=float(ds["total_marginal_kl"]))
    if ds.attrs.get("warning"):
        row["warning"] = f"information: {ds.attrs['warning']}"
    return row


def _table(labels: list[str], rows: list[dict]) -> xr.Dataset:
    variables = {name: ("model", np.array([row.get(name, math.nan) for row in rows],
                                          dtype=np.float64),
                        {"units": units, "long_name": text})
                 for name, (units, text) in COLUMNS.items()}
    coords = {"model": labels}
    for name in ("source", "checkpoint_sha256", "format", "objective"):
        coords[name] = ("model", [str(row.get(name, "")) for row in rows])
    for name in ("audit_reused", "audit_n_images"):
        coords[name] = ("model", np.array([row.get(name, -1) for row in rows], dtype=np.int64))
    layouts = {row["channel_rate"][0] if "channel_rate" in row else None for row in rows}
    if len(layouts) == 1 and None not in layouts:  # one latent layout: channels compare
        nats = {"units": "nats"}
        pair = ("model", "channel")
        variables["rate_per_channel"] = (pair, np.stack([row["channel_rate"][1] for row in rows]),
                                         {**nats, "long_name": "mean KL per latent channel"})
        variables["rate_per_channel_se"] = (pair, np.stack([row["channel_rate"][2]
                                                            for row in rows]), nats)
        coords["channel"] = np.arange(next(iter(layouts))[0])
    return xr.Dataset(variables, coords=coords)


def write_page(ds: xr.Dataset, out: Path) -> dict[str, Path]:
    """``compare.nc``, ``compare.png`` and a self-contained ``compare.html`` in ``out``."""
    import base64

    from vaeprobe.plot import save_figure
    from vaeprobe.plot._bits import compare_page

    out.mkdir(parents=True, exist_ok=True)
    paths = dict(nc=io.save(ds, out / "compare.nc"))
    save_figure(compare_page(ds), out / "compare.png")
    paths["png"] = out / "compare.png"
    table = ds[list(COLUMNS)].to_dataframe()[list(COLUMNS)].to_html(
        float_format=lambda value: f"{value:.4g}", na_rep="—")
    image = base64.b64encode(Path(paths["png"]).read_bytes()).decode()
    from vaeprobe.outputs import HTML_MARK

    html = (f"<!doctype html><html><head><meta charset='utf-8'>{HTML_MARK}"
            f"<title>vaeprobe compare</title>"
            f"</head><body><h1>vaeprobe compare</h1><p>data {ds.attrs.get('dataset')}, "
            f"reconstructions from a posterior sample; created {ds.attrs.get('created_at')}</p>"
            f"{table}<p><img src='data:image/png;base64,{image}'></p>"
            f"<pre>{json.dumps(json.loads(ds.attrs.get('undefined', '{}')), indent=1)}</pre>"
            f"</body></html>")
    with io.atomic_path(out / "compare.html") as tmp:
        Path(tmp).write_text(html)
    paths["html"] = out / "compare.html"
    return paths
