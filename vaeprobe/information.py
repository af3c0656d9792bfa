"""Where the rate goes: information about the image vs the aggregate posterior's mismatch.

The rate splits exactly (Hoffman & Johnson 2016, "ELBO surgery")::

    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)),   q(z) = (1/N) sum_n q(z | x_n)

with x uniform over the N evaluated images (the empirical data distribution). For one-layer
models the second term splits again (beta-TCVAE, Chen et al. 2018) into the total correlation
KL(q(z) || prod_d q(z_d)) and the dimension-wise KL sum_d KL(q(z_d) || p(z_d)).

Estimator: one posterior draw z_i per image; log q(z_i) = logsumexp_n log q(z_i | x_n) - log N
over all N images, streamed in blocks of (draws x images) so that memory grows with the block,
not with N^2. Under the empirical distribution I(x; z) <= log N, and the estimate never
exceeds it: near the ceiling it says "at least this much".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from vaeprobe import data as vdata
from vaeprobe._analysis import Evaluation, batches, resolve, result_attrs, with_warnings
from vaeprobe.probe import Probe, UndefinedAnalysisError, encode, gaussian_log_density

NEAR_CEILING = 0.9  # an I(x; z) above this share of log N is reported as near the ceiling
BLOCK_ELEMENTS = 2 ** 22  # float64 elements of one (draws, images, dims) block: 32 MiB


def information(source, data, *, n_images: int | None = 1000, batch_size: int = 64,
                seed: int = 0, progress: bool = True) -> xr.Dataset:
    """Rate = mutual information I(x; z) + marginal KL(q(z) || p(z)), per layer.

    Parameters
    ----------
    source : Probe, run directory, checkpoint file or model folder
        Anything :func:`vaeprobe.load` opens (resolved by :func:`vaeprobe.as_probe`). Its
        posteriors must be Gaussian (analytic KL) so that q(z | x_n) can be evaluated anywhere.
    data : str, Dataset or uint8 tensor
        The images that define the empirical data distribution, e.g. ``"patches32:test"``.
    n_images : int or None
        A seeded random subset of this many images (None: all). N sets the ceiling
        I(x; z) <= log N. Cost: one-layer models, N^2 x latent-dimension density terms;
        hierarchical models, N^2 posterior passes (``probe.encode_given``) -- minutes for
        N = 1,000 on the demo model on CPU; memory grows with ``batch_size`` only.
    batch_size : int
        Images per pass of the first (sampling) pass.
    seed : int
        Seeds the subset and the one posterior draw per image (per image: batch-size free).

    Returns
    -------
    xarray.Dataset
        Dim ``layer`` (coords ``name``, ``stage``): ``rate`` (E_x KL(q(z_l | z_<l, x) ||
        p(z_l | z_<l)), analytic, nats, as :func:`vaeprobe.rate`), ``mutual_information``,
        ``marginal_kl``, ``rate_sampled`` (E_x log q/p of the draws), each with ``_se``; the
        totals ``total_rate``, ``total_mutual_information``, ``total_marginal_kl`` (nats).

        **What a layer's terms mean (hierarchical models).** They are the chain-rule terms of
        the joint split, conditioned on the layers above (top first)::

            mutual_information[l] = I(x; z_l | z_<l) = I(x; z_<=l) - I(x; z_<l)
            marginal_kl[l] = E_q(z_<l) KL(q(z_l | z_<l) || p(z_l | z_<l))
                           = KL(q(z_<=l) || p(z_<=l)) - KL(q(z_<l) || p(z_<l))

        with q(z_<=l) = (1/N) sum_n q(z_<=l | x_n) the aggregate posterior of the top l+1
        layers, so each layer's rate (its conditional KL averaged over the images and the
        layers above) is the sum of its two terms, and the layers' terms sum to the joint
        I(x; z) and KL(q(z) || p(z)) over all layers (the ``total_`` variables). The
        cumulative joint terms are ``mutual_information_cumulative`` and
        ``marginal_kl_cumulative`` (I(x; z_<=l), KL(q(z_<=l) || p(z_<=l))). Monte Carlo
        noise can make a conditional term slightly negative.

        One-layer models also have dim ``dimension`` (coords ``dimension_channel``,
        ``dimension_y``, ``dimension_x``): ``rate_per_dimension``,
        ``mutual_information_per_dimension`` (I(x; z_d)) and ``marginal_kl_per_dimension``
        (KL(q(z_d) || p(z_d))); and ``total_correlation`` and ``dimension_wise_kl`` (their sum
        is ``marginal_kl``, the beta-TCVAE split; the prior must factorise, as N(0, I) does).

        attrs: ``log_n_ceiling`` (log N), ``identity_residual`` (rate - I - marginal KL,
        the analytic rate against the sampled split, nats), ``identity_residual_se``,
        ``identity_holds`` (1 when every layer's residual is within 5 se + 1e-6 nats: checked
        on every result), ``warning`` (when I(x; z) is above 90% of log N, where the
        estimate is a lower bound).

    Examples
    --------
    >>> ds = information("runs/demo", "patches32:test", n_images=500)  # doctest: +SKIP
    >>> ds[["rate", "mutual_information", "marginal_kl"]].to_dataframe()  # doctest: +SKIP
    """
    evaluation = resolve(source, data, n_images=n_images, seed=seed, check=_check_probe)
    return compute_information(evaluation, batch_size=batch_size, progress=progress)


def compute_information(evaluation: Evaluation, *, batch_size: int = 64,
                        progress: bool = True) -> xr.Dataset:
    """The core of :func:`information` on an already resolved model and subset of images.

    Parameters
    ----------
    evaluation : vaeprobe._analysis.Evaluation
        The fitted Probe, the dataset and the seeded subset (the empirical data
        distribution; :func:`vaeprobe._analysis.resolve` makes one from what
        :func:`information` takes); its ``seed`` keys the posterior draws.
    batch_size, progress
        As in :func:`information`.

    Returns
    -------
    xarray.Dataset
        What :func:`information` returns for the same request (the same Dataset).
    """
    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    _check_probe(probe)
    if len(indices) < 2:
        raise ValueError(f"vp.information needs at least 2 images (the aggregate posterior is "
                         f"a mixture over them), got {len(indices)}")
    draws = _draw(probe, dataset, indices, batch_size, seed, progress)
    if len(probe.layers) == 1:
        pairs = _pairs_one_layer(draws, progress)
    else:
        images = torch.cat(list(vdata.iterate_batches(dataset, batch_size, indices)))
        pairs = _pairs_hierarchical(probe, images, draws, progress)
    ds = _dataset(probe, draws, pairs, len(indices))
    parameters = dict(n_images=n_images, batch_size=batch_size, seed=seed)
    ds.attrs = result_attrs("information", parameters, probe, dataset, len(indices), seed,
                            **ds.attrs)
    ds.attrs = with_warnings(ds.attrs, _warnings(ds))
    return ds


def _check_probe(probe: Probe) -> None:
    probe.require("vp.information", posterior=True)
    if not probe.layers:
        raise UndefinedAnalysisError(f"vp.information is undefined for {probe.name}: it has no "
                                     f"latent layers (a point posterior has no rate)")


# ---- pass 1: one posterior draw per image ----------------------------------------------------
def _draw(probe: Probe, dataset, indices, batch_size: int, seed: int, progress: bool) -> dict:
    """Per image: the draw z (per layer), its KL (analytic), log q(z|x) and log p(z) per layer;
    for one-layer models also the posterior parameters (flattened)."""
    parts: dict[str, list] = {"zs": [], "kl": [], "log_q": [], "log_p": [], "q_mean": [],
                              "q_logstd": []}
    for x, generators in batches(dataset, indices, batch_size, seed, probe.device, progress,
                                 "information: draws"):
        latents = encode(probe, x, 1, generators)
        if not all(latents.kl_analytic) or any(d.distribution != "gaussian" or d.q_mean is None
                                               for d in latents.draws):
            raise UndefinedAnalysisError(
                f"vp.information is undefined for {probe.name}: it needs Gaussian posteriors "
                f"(q(z|x_n) evaluated at any z); this model has layers of "
                f"{sorted({d.distribution for d in latents.draws})} or a sampled KL")
        parts["zs"].append([d.z.cpu() for d in latents.draws])
        parts["kl"].append(latents.kl_per_layer().double().cpu())
        parts["log_q"].append(_layer_log_density(latents.draws, "q"))
        parts["log_p"].append(_layer_log_density(latents.draws, "p"))
        if len(probe.layers) == 1:
            draw = latents.draws[0]
            parts["q_mean"].append(draw.q_mean.flatten(1).double().cpu())
            parts["q_logstd"].append(draw.q_logstd.flatten(1).double().cpu())
            parts.setdefault("p", (draw.p_mean[:1].flatten(1).double().cpu(),
                                   draw.p_logstd[:1].flatten(1).double().cpu()))
    draws = {key: torch.cat(value) for key, value in parts.items()
             if key not in ("zs", "p") and value}
    draws["zs"] = [torch.cat(layer) for layer in zip(*parts["zs"], strict=True)]
    if "p" in parts:
        draws["p_mean"], draws["p_logstd"] = parts["p"]
    return draws


def _layer_log_density(draws, which: str) -> torch.Tensor:
    """log q(z|x) (``"q"``) or log p(z) (``"p"``) of each layer's draw: (rows, layers)."""
    columns = []
    for d in draws:
        mean, logstd = (d.q_mean, d.q_logstd) if which == "q" else (d.p_mean, d.p_logstd)
        columns.append(gaussian_log_density(d.z.double(), mean.double(), logstd.double())
                       .flatten(1).sum(1))
    return torch.stack(columns, 1).cpu()


# ---- pass 2: log q(z_i | x_n) for every pair, streamed ---------------------------------------
class _RunningLogSumExp:
    """logsumexp over images n, accumulated block by block (float64)."""

    def __init__(self, shape):
        self.value = torch.full(shape, -math.inf, dtype=torch.float64)

    def update(self, rows: slice, block: torch.Tensor, dim: int = 1) -> None:
        self.value[rows] = torch.logaddexp(self.value[rows], torch.logsumexp(block, dim=dim))


class _DimensionMoments:
    """Running sum and sum of squares over draws of per-dimension terms (float64)."""

    def __init__(self, dims: int):
        self.n, self.total, self.total_sq = 0, torch.zeros(dims, dtype=torch.float64), \
            torch.zeros(dims, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:  # (draws, D)
        self.n += values.shape[0]
        self.total += values.sum(0)
        self.total_sq += (values ** 2).sum(0)

    def mean_se(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        variance = (self.total_sq / self.n - mean ** 2).clamp(min=0) * self.n / max(self.n - 1, 1)
        return mean.numpy(), (variance / self.n).sqrt().numpy()


def _pairs_one_layer(draws: dict, progress: bool) -> dict:
    """log q(z_i) (joint) and log q(z_id) (per dimension) by logsumexp over all images, and
    log q(z_i | x_i) from the same arithmetic. Draws go block by block, each against every
    image: a block's per-dimension terms are finished and folded into running moments, so
    memory holds the N posteriors and one block, never an (N, D) array of results."""
    z = draws["zs"][0].flatten(1).double()  # (N, D)
    mean, logstd = draws["q_mean"], draws["q_logstd"]
    p_mean, p_logstd = draws["p_mean"], draws["p_logstd"]
    n, dims = z.shape
    block = max(1, int(math.sqrt(BLOCK_ELEMENTS / dims)))
    log_n = math.log(n)
    out = {name: torch.empty(n, dtype=torch.float64) for name in
           ("log_qz", "log_qzx", "log_qz_dims", "dimension_wise")}
    moments = dict(info=_DimensionMoments(dims), mkl=_DimensionMoments(dims),
                   rate=_DimensionMoments(dims))
    from vaeprobe._analysis import progress_bar
    from vaeprobe.probe import gaussian_kl

    bar = progress_bar(n, "information: pairs", progress, unit="draw")
    for i in range(0, n, block):
        rows = slice(i, min(n, i + block))
        joint = _RunningLogSumExp((rows.stop - rows.start,))
        per_dim = _RunningLogSumExp((rows.stop - rows.start, dims))
        own = torch.empty(rows.stop - rows.start, dims, dtype=torch.float64)
        for j in range(0, n, block):
            columns = slice(j, min(n, j + block))
            terms = gaussian_log_density(z[rows, None], mean[None, columns],
                                         logstd[None, columns])  # (bi, bn, D)
            every = slice(None)
            per_dim.update(every, terms)
            joint.update(every, terms.sum(2))
            _take_diagonal(own, terms, slice(0, rows.stop - rows.start),
                           slice(columns.start - rows.start, columns.stop - rows.start))
        log_qz_dim = per_dim.value - log_n
        mkl_dim = log_qz_dim - gaussian_log_density(z[rows], p_mean, p_logstd)
        moments["info"].update(own - log_qz_dim)
        moments["mkl"].update(mkl_dim)
        moments["rate"].update(gaussian_kl(mean[rows], logstd[rows], p_mean, p_logstd))
        out["log_qz"][rows] = joint.value - log_n
        out["log_qzx"][rows] = own.sum(1)
        out["log_qz_dims"][rows] = log_qz_dim.sum(1)
        out["dimension_wise"][rows] = mkl_dim.sum(1)
        bar.update(rows.stop - rows.start)
    bar.close()
    return dict(log_qz=out["log_qz"][:, None], log_qzx=out["log_qzx"][:, None],
                log_qz_dims=out["log_qz_dims"], dimension_wise=out["dimension_wise"],
                moments=moments)


def _take_diagonal(own: torch.Tensor, terms: torch.Tensor, rows: slice, columns: slice) -> None:
    """Copy the pairs (i, i) of a block into ``own`` (so log q(z_i | x_i) is the very term the
    logsumexp saw: the estimate of I never exceeds log N)."""
    start, stop = max(rows.start, columns.start), min(rows.stop, columns.stop)
    for index in range(start, stop):
        own[index] = terms[index - rows.start, index - columns.start]


def _pairs_hierarchical(probe: Probe, images: torch.Tensor, draws: dict, progress: bool) -> dict:
    """Cumulative log q(z_<=l) per draw by logsumexp over all images of log q(z_<=l^(i) | x_n),
    each pair one teacher-forced posterior pass (``probe.encode_given``)."""
    n, layers = images.shape[0], len(probe.layers)
    rows_per_pass = max(1, probe.rows_per_pass())
    block = max(1, int(math.sqrt(rows_per_pass)))
    cumulative = _RunningLogSumExp((n, layers))
    own = torch.empty(n, layers, dtype=torch.float64)
    from vaeprobe._analysis import progress_bar

    bar = progress_bar(n, "information: pairs", progress, unit="draw")
    for i in range(0, n, block):
        rows = slice(i, min(n, i + block))
        for j in range(0, n, block):
            columns = slice(j, min(n, j + block))
            terms = _pair_log_q(probe, images[columns], [z[rows] for z in draws["zs"]])
            cumulative.update(rows, terms.cumsum(2))
            _take_diagonal(own, terms, rows, columns)
        bar.update(rows.stop - rows.start)
    bar.close()
    return dict(log_qz=cumulative.value - math.log(n), log_qzx=own.cumsum(1))


@torch.no_grad()
def _pair_log_q(probe: Probe, x: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
    """log q(z_l^(i) | z_<l^(i), x_n) per layer for every draw i and image n: (bi, bn, L)."""
    bi, bn = zs[0].shape[0], x.shape[0]
    # image-major rows: row n * bi + i is draw i under image n (the encoder work once per image)
    z_rows = [z.repeat(bn, *([1] * (z.ndim - 1))).to(probe.device) for z in zs]
    latents = probe.encode_given(x.to(probe.device), z_rows, n_samples=bi)
    columns = [gaussian_log_density(z.double(), d.q_mean.double(), d.q_logstd.double())
               .flatten(1).sum(1) for z, d in zip(z_rows, latents.draws, strict=True)]
    return torch.stack(columns, 1).reshape(bn, bi, -1).transpose(0, 1).cpu()


# ---- the Dataset ------------------------------------------------------------------------------
def _mean_se(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean over draws (dim 0) and its standard error."""
    values = values.double()
    n = values.shape[0]
    se = values.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(values[0],
                                                                                   math.nan)
    return values.mean(0).numpy(), se.numpy()


def _dataset(probe: Probe, draws: dict, pairs: dict, n: int) -> xr.Dataset:
    log_p_cumulative = draws["log_p"].cumsum(1)
    info_cumulative = pairs["log_qzx"] - pairs["log_qz"]  # (N, L) per draw
    mkl_cumulative = pairs["log_qz"] - log_p_cumulative
    info = torch.diff(info_cumulative, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64))
    mkl = torch.diff(mkl_cumulative, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64))
    nats = {"units": "nats"}
    variables = {}
    for name, values, text in (
            ("rate", draws["kl"], "E_x KL(q(z_l | z_<l, x) || p(z_l | z_<l)), analytic"),
            ("rate_sampled", info + mkl, "E_x [log q(z_l | z_<l, x) - log p(z_l | z_<l)] "
             "of the draws"),
            ("mutual_information", info, "I(x; z_l | z_<l) under the empirical data"),
            ("marginal_kl", mkl, "E KL(q(z_l | z_<l) || p(z_l | z_<l)), q the aggregate"),
            ("mutual_information_cumulative", info_cumulative, "I(x; z_<=l)"),
            ("marginal_kl_cumulative", mkl_cumulative, "KL(q(z_<=l) || p(z_<=l))")):
        mean, se = _mean_se(values)
        variables[name] = ("layer", mean, {**nats, "long_name": text})
        variables[f"{name}_se"] = ("layer", se, nats)
    for name, values in (("total_rate", draws["kl"].sum(1)),
                         ("total_mutual_information", info_cumulative[:, -1]),
                         ("total_marginal_kl", mkl_cumulative[:, -1])):
        mean, se = _mean_se(values)
        variables[name] = ((), float(mean), nats)
        variables[f"{name}_se"] = ((), float(se), nats)
    ds = xr.Dataset(variables, coords={
        "layer": np.arange(len(probe.layers)),
        "name": ("layer", [info.name for info in probe.layers]),
        "stage": ("layer", [info.stage for info in probe.layers])})
    if len(probe.layers) == 1:
        ds = ds.merge(_per_dimension(probe, draws, pairs))
    ds.attrs = _identity(draws["kl"] - info - mkl, n)
    return ds


def _per_dimension(probe: Probe, draws: dict, pairs: dict) -> xr.Dataset:
    """One-layer models: the split per latent dimension, total correlation, dimension-wise KL."""
    total_correlation = pairs["log_qz"][:, 0] - pairs["log_qz_dims"]
    channels, height, width = probe.latent_shapes()[0]
    grid = np.indices((channels, height, width)).reshape(3, -1)
    nats = {"units": "nats"}
    variables = {}
    for name, key, text in (("rate_per_dimension", "rate", "E_x KL(q(z_d|x) || p(z_d))"),
                            ("mutual_information_per_dimension", "info", "I(x; z_d)"),
                            ("marginal_kl_per_dimension", "mkl", "KL(q(z_d) || p(z_d))")):
        mean, se = pairs["moments"][key].mean_se()
        variables[name] = ("dimension", mean, {**nats, "long_name": text})
        variables[f"{name}_se"] = ("dimension", se, nats)
    for name, values, text in (
            ("total_correlation", total_correlation, "KL(q(z) || prod_d q(z_d))"),
            ("dimension_wise_kl", pairs["dimension_wise"], "sum_d KL(q(z_d) || p(z_d))")):
        mean, se = _mean_se(values)
        variables[name] = ((), float(mean), {**nats, "long_name": text})
        variables[f"{name}_se"] = ((), float(se), nats)
    return xr.Dataset(variables, coords={
        "dimension": np.arange(grid.shape[1]), "dimension_channel": ("dimension", grid[0]),
        "dimension_y": ("dimension", grid[1]), "dimension_x": ("dimension", grid[2])})


def _identity(residual: torch.Tensor, n: int) -> dict:
    """rate - (I + marginal KL) per layer: the analytic KL against the sampled split."""
    mean, se = _mean_se(residual)
    holds = bool(np.all(np.abs(mean) <= 5 * np.nan_to_num(se, nan=0.0) + 1e-6))
    return dict(identity_residual=mean.astype(float), identity_residual_se=se.astype(float),
                identity_holds=int(holds), log_n_ceiling=math.log(n))


def _warnings(ds: xr.Dataset) -> list[str]:
    said = []
    ceiling = float(ds.attrs["log_n_ceiling"])
    total = float(ds["total_mutual_information"])
    if total > NEAR_CEILING * ceiling:
        said.append(f"the mutual information {total:.3f} nats is near its ceiling log N = "
                    f"{ceiling:.3f} (N = {round(math.exp(ceiling))} images): the encoder tells "
                    f"the images apart, so the estimate is a lower bound (more images raise "
                    f"the ceiling)")
    if not int(ds.attrs["identity_holds"]):
        said.append(f"rate != information + marginal KL beyond 5 standard errors (residual "
                    f"{np.round(ds.attrs['identity_residual'], 4).tolist()} nats): the "
                    f"model's analytic KL disagrees with its own sampled densities")
    return said
