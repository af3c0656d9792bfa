"""Lossless bits-back coding with a VAE: the bits the ELBO promises, spent on a real bitstream.

Each image x is coded with the bits-back chain (Townsend et al. 2019; hierarchical latents as in
Bit-Swap, Kingma et al. 2019, and HiLLoC, Townsend et al. 2020) on an ANS stack (the
``constriction`` library's ``AnsCoder``):

1. for each latent layer l, top to bottom: *decode* (pop) the bin of z_l from the stack with the
   posterior q(z_l | z_<l, x) -- this takes bits that earlier images left on the stack;
2. *encode* (push) the pixels with the decoder's PMF p(x | z), channel by channel;
3. for each layer, bottom to top: encode the bin of z_l with the prior p(z_l | z_<l).

The decoder runs the steps backwards and, pushing the posterior bins back, returns the stack to
its state before the image (the bits it got back). The net cost of an image is
-log2 p(x | z) - log2 p(z) + log2 q(z | x) bits: its -ELBO, at the discretization below.

**Discretization** (HiLLoC's, after Bit-Swap): every latent element is cut into K = 2^latent_bits
bins of equal mass under its prior p(z_l | z_<l), so the prior codes each bin with exactly
latent_bits bits; z takes the bin's centre (the prior's quantile (k + 1/2) / K); the posterior
PMF over the bins is its mass in each. Both sides compute the bins from the layers above.

**Determinism.** The decoder must compute bit-identical PMFs. Coding runs on the CPU, on one
thread, one image at a time (the same batch composition on both sides); every PMF is quantised
to integer counts (float64 probabilities times 2^24, floored, at least 1) before it reaches the
coder. The file records torch's version and CPU kernel set; decoding elsewhere is warned about
(other kernels may round differently). The first image's posterior pops need bits on the
stack: the chain starts from ``initial_bits`` seeded random bits (reported separately; they come
back at the end).

File format (``.vpbb``): the magic line, a little-endian uint32 header length, a JSON header
(format version, the model's sha256, image shape, number of images, latent bits, initial words)
and the ANS stack's little-endian uint32 words.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from vaeprobe import io
from vaeprobe._analysis import (
    evaluation_set,
    fit_probe,
    image_dims,
    progress_bar,
    result_attrs,
)
from vaeprobe.data import iterate_batches
from vaeprobe.models.likelihoods import (
    HALF_BIN,
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    log_normal_interval,
)
from vaeprobe.probe import LatentPass, LayerDraw, Probe, UndefinedAnalysisError, encode

MAGIC = b"VAEPROBE-BITS-BACK\n"
FORMAT_VERSION = 1
PRECISION = 24  # the coder's probability precision: PMFs are integer counts summing to ~2^24
LEVELS = 256  # 8-bit pixels


class CompressedFileError(ValueError):
    """A compressed file that is not ours, of another version, or for another model."""


# ---- PMFs: latent bins and pixel levels -------------------------------------------------------
def _standard_quantiles(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin edges (K + 1, with -inf and +inf) and centres (K) of N(0, 1) in equal-mass bins."""
    k = 2 ** latent_bits
    inner = torch.special.ndtri(torch.arange(1, k, dtype=torch.float64) / k)
    inf = torch.tensor([math.inf], dtype=torch.float64)
    centres = torch.special.ndtri((torch.arange(k, dtype=torch.float64) + 0.5) / k)
    return torch.cat([-inf, inner, inf]), centres


def _posterior_masses(draw: LayerDraw, edges: torch.Tensor) -> torch.Tensor:
    """q's mass in each prior bin of every element of one layer (image 0): (elements, K)."""
    p_mean, p_std = draw.p_mean[0].flatten().double(), draw.p_logstd[0].flatten().double().exp()
    q_mean, q_std = draw.q_mean[0].flatten().double(), draw.q_logstd[0].flatten().double().exp()
    u = (p_mean[:, None] + p_std[:, None] * edges[None] - q_mean[:, None]) / q_std[:, None]
    u = torch.where(torch.isnan(u), torch.sign(edges)[None].expand_as(u) * math.inf, u)
    left, right = u[:, :-1], u[:, 1:]
    # differences of the upper tail taken on the survival function (accurate there)
    mass = torch.where(left > 0, torch.special.ndtr(-left) - torch.special.ndtr(-right),
                       torch.special.ndtr(right) - torch.special.ndtr(left))
    return mass.clamp(min=0.0)


def _centres(draw: LayerDraw, bins: np.ndarray, centres: torch.Tensor) -> torch.Tensor:
    """z at the bins' centres under the prior, in the model's dtype and shape (1, c, h, w)."""
    p_mean, p_std = draw.p_mean[0].flatten().double(), draw.p_logstd[0].flatten().double().exp()
    z = p_mean + p_std * centres[torch.from_numpy(bins.astype(np.int64))]
    return z.to(draw.p_mean.dtype).reshape(draw.p_mean[:1].shape)


def _discrete_kl_bits(masses: torch.Tensor, latent_bits: int) -> float:
    """KL(Q || uniform) over the bins, summed over elements: sum_k Q log2(K Q), bits."""
    terms = masses * (torch.log2(masses.clamp(min=1e-300)) + latent_bits)
    return float(terms.sum())


def _information(counts: np.ndarray, symbols: np.ndarray) -> float:
    """-sum log2 P(symbol) under integer-count PMFs (rows, K), bits."""
    picked = counts[np.arange(len(symbols)), symbols.astype(np.int64)]
    return float(-(np.log2(picked) - np.log2(counts.sum(1))).sum())


def _counts(probabilities: torch.Tensor) -> np.ndarray:
    """Integer counts (as float64, exact) from probabilities (rows, K): floor(p * 2^24), >= 1."""
    scale = float(2 ** PRECISION)
    total = probabilities.sum(1, keepdim=True)
    counts = torch.floor(probabilities / total * scale).clamp(min=1.0)
    return np.ascontiguousarray(counts.numpy())


def _gaussian_level_log_pmf(likelihood: DiscretizedGaussian, channel: int) -> torch.Tensor:
    """log PMF over the 256 levels of one channel of a discretized Gaussian: (pixels, 256)."""
    loc = likelihood.loc[0, channel].double().flatten()[:, None]
    inv_sigma = torch.exp(-likelihood.log_sigma[0, channel].double().flatten())[:, None]
    centre = torch.arange(LEVELS, dtype=torch.float64)[None] / 255.0
    upper, lower = (centre + HALF_BIN - loc) * inv_sigma, (centre - HALF_BIN - loc) * inv_sigma
    log_p = log_normal_interval(lower, upper)
    log_p[:, 0] = torch.special.log_ndtr(upper[:, 0])
    log_p[:, -1] = torch.special.log_ndtr(-lower[:, -1])
    return log_p


def _logistic_levels(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log PMF of discretized logistics (…, 1) at the 256 levels on [-1, 1]: (…, 256)."""
    values = torch.arange(LEVELS, dtype=torch.float64) / 127.5 - 1
    centred = values - mean
    inv_scale = torch.exp(-log_scale)
    plus_in, minus_in = inv_scale * (centred + 1 / 255), inv_scale * (centred - 1 / 255)
    log_cdf_plus = plus_in - torch.nn.functional.softplus(plus_in)
    log_mid = (log_cdf_plus + torch.log(-torch.expm1((minus_in - plus_in).clamp(max=-1e-12)))
               - torch.nn.functional.softplus(minus_in))
    log_mid[..., 0] = log_cdf_plus[..., 0]
    log_mid[..., -1] = -torch.nn.functional.softplus(minus_in[..., -1])
    return log_mid


def _mixture_level_log_pmf(likelihood: DiscretizedLogisticMixture, x: torch.Tensor,
                           channel: int) -> torch.Tensor:
    """log p(x_c = level | x_<c) of a logistic mixture, per pixel: (pixels, 256).

    The mixture is joint over a pixel's channels: channel c's components are weighted by how
    well each explained the channels before it (``x``'s channels >= c are not read)."""
    x11 = x[0].double() / 127.5 - 1  # (C, H, W)
    means = likelihood.means[0].double()  # (C, M, H, W)
    log_scales = likelihood.log_scales[0].double()
    coeffs = None if likelihood.coeffs is None else likelihood.coeffs[0].double()
    log_weights = torch.log_softmax(likelihood.logits[0].double(), dim=0)  # (M, H, W)
    for c in range(channel + 1):
        mean = means[c]
        if coeffs is not None and c == 1:
            mean = mean + coeffs[0] * x11[0]
        elif coeffs is not None and c == 2:
            mean = mean + coeffs[1] * x11[0] + coeffs[2] * x11[1]
        levels = _logistic_levels(mean[..., None], log_scales[c][..., None])  # (M, H, W, 256)
        if c < channel:  # weight components by the observed earlier channel
            observed = x[0, c].long()[None, :, :, None].expand(levels.shape[0], -1, -1, 1)
            log_weights = log_weights + levels.gather(3, observed)[..., 0]
    log_p = torch.logsumexp(log_weights[..., None] + levels, 0) - torch.logsumexp(log_weights, 0
                                                                                  )[..., None]
    return log_p.reshape(-1, LEVELS)


def _pixel_log_pmf(likelihood, x: torch.Tensor, channel: int) -> torch.Tensor:
    if isinstance(likelihood, DiscretizedGaussian):
        return _gaussian_level_log_pmf(likelihood, channel)
    return _mixture_level_log_pmf(likelihood, x, channel)


def _known_channels(x: torch.Tensor, channel: int) -> torch.Tensor:
    """``x`` with channels >= ``channel`` zeroed: the decoder's view before decoding them."""
    known = x.clone()
    known[:, channel:] = 0
    return known


# ---- one image --------------------------------------------------------------------------------
class _Chain:
    """The coding steps of one model, shared by the encoder and the decoder so that both compute
    the same PMFs from the same inputs."""

    def __init__(self, probe: Probe, latent_bits: int):
        import constriction

        self.probe, self.latent_bits = probe, latent_bits
        self.edges, self.centres = _standard_quantiles(latent_bits)
        self.categorical = constriction.stream.model.Categorical(perfect=False)
        self.uniform = constriction.stream.model.Uniform(2 ** latent_bits)
        self.shapes = probe.latent_shapes()
        self.blank = torch.zeros((1, *probe.image_shape), dtype=torch.uint8)

    def placeholders(self) -> list[torch.Tensor]:
        return [torch.zeros((1, *shape)) for shape in self.shapes]

    def layer(self, x: torch.Tensor, zs: list[torch.Tensor], index: int) -> LayerDraw:
        """Layer ``index``'s prior and posterior given the layers above (later ones zero)."""
        known = zs[:index] + [torch.zeros_like(z) for z in zs[index:]]
        return self.probe.encode_given(x, known).draws[index]

    def likelihood(self, zs: list[torch.Tensor]):
        draws = [LayerDraw(p_mean=z, p_logstd=torch.zeros_like(z), z=z) for z in zs]
        return self.probe.decode(LatentPass(draws, 1, {}))

    def pixel_counts(self, likelihood, x: torch.Tensor, channel: int) -> np.ndarray:
        log_pmf = _pixel_log_pmf(likelihood, _known_channels(x, channel), channel)
        return _counts(torch.softmax(log_pmf, dim=1))

    def encode(self, coder, x: torch.Tensor) -> dict:
        """Push image ``x`` (1, C, H, W) onto the stack. Returns its -ELBO terms (bits; the
        latent terms in expectation over each layer's bins) and ``symbol_bits``: the
        information content of the symbols coded, under the quantised PMFs (what an ideal
        coder would spend on exactly these pops and pushes)."""
        zs, bins, layer_bits, symbol_bits = self.placeholders(), [], [], 0.0
        for index in range(len(zs)):
            draw = self.layer(x, zs, index)
            masses = _posterior_masses(draw, self.edges)
            counts = _counts(masses)
            chosen = coder.decode(self.categorical, counts)  # bits back: a pop
            symbol_bits += self.latent_bits * len(chosen) - _information(counts, chosen)
            bins.append(chosen)
            zs[index] = _centres(draw, chosen, self.centres)
            layer_bits.append(_discrete_kl_bits(masses, self.latent_bits))
        likelihood = self.likelihood(zs)
        for channel in reversed(range(x.shape[1])):
            symbols = x[0, channel].flatten().numpy().astype(np.int32)
            counts = self.pixel_counts(likelihood, x, channel)
            coder.encode_reverse(symbols, self.categorical, counts)
            symbol_bits += _information(counts, symbols)
        for chosen in reversed(bins):
            coder.encode_reverse(chosen, self.uniform)
        log_px = float(likelihood.log_prob(x, kind="discretized")[0])
        return dict(layer_bits=layer_bits, pixel_bits=-log_px / math.log(2),
                    symbol_bits=symbol_bits)

    def decode(self, coder) -> torch.Tensor:
        """Pop one image (1, C, H, W) uint8 and give its posterior bins back to the stack."""
        zs, bins = self.placeholders(), []
        for index, shape in enumerate(self.shapes):
            draw = self.layer(self.blank, zs, index)
            chosen = coder.decode(self.uniform, int(np.prod(shape)))
            bins.append(chosen)
            zs[index] = _centres(draw, chosen, self.centres)
        likelihood = self.likelihood(zs)
        x = self.blank.clone()
        for channel in range(x.shape[1]):
            symbols = coder.decode(self.categorical, self.pixel_counts(likelihood, x, channel))
            x[0, channel] = torch.from_numpy(symbols.astype(np.uint8)).reshape(x.shape[2:])
        known = self.placeholders()
        counts = []
        for index in range(len(zs)):  # the encoder's posterior PMFs, from the same inputs
            counts.append(_counts(_posterior_masses(self.layer(x, known, index), self.edges)))
            known[index] = zs[index]
        for chosen, table in zip(reversed(bins), reversed(counts), strict=True):
            coder.encode_reverse(chosen, self.categorical, table)
        return x


# ---- the public functions ---------------------------------------------------------------------
@contextlib.contextmanager
def _one_thread():
    """Coding on one CPU thread: kernels split across threads may round differently, and the
    decoder must reproduce the encoder's PMFs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_probe(probe: Probe, latent_bits: int) -> None:
    if probe.device.type != "cpu":
        raise ValueError(f"vp.compress codes on the CPU (the decoder must reproduce every PMF "
                         f"bit for bit); the model is on {probe.device}: load it with "
                         f"device='cpu'")
    probe.require("vp.compress", likelihood=True, posterior=True)
    if probe.likelihood_kind != "discretized" or probe.n_bits != 8:
        raise UndefinedAnalysisError(
            f"vp.compress is undefined for {probe.name}: it codes 8-bit pixels with the "
            f"decoder's PMF (likelihood_kind='discretized', n_bits=8); this model has "
            f"likelihood_kind={probe.likelihood_kind!r}, n_bits={probe.n_bits}")
    if not isinstance(latent_bits, int) or not 1 <= latent_bits <= 16:
        raise ValueError(f"latent_bits (bins per latent element = 2^latent_bits) must be an "
                         f"integer in 1..16, got {latent_bits!r}")


def _check_likelihood(probe: Probe, chain: _Chain) -> None:
    likelihood = probe.decode(probe.sample_prior(1, generator=torch.Generator().manual_seed(0)))
    if not isinstance(likelihood, (DiscretizedGaussian, DiscretizedLogisticMixture)):
        raise UndefinedAnalysisError(
            f"vp.compress is undefined for {probe.name}: its decoder ({type(likelihood).__name__}"
            f") is not a PMF vaeprobe can tabulate (a discretized Gaussian or logistic mixture)")
    latents = encode(probe, chain.blank, 1, None, "mean")
    if any(d.distribution != "gaussian" or d.q_mean is None for d in latents.draws) or \
            not all(latents.kl_analytic):
        raise UndefinedAnalysisError(f"vp.compress is undefined for {probe.name}: its "
                                     f"posteriors are not Gaussian")


def _open_probe(source) -> Probe:
    from vaeprobe.adapters import as_probe

    return as_probe(source) if isinstance(source, Probe) else as_probe(source, device="cpu")


def _constriction_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("constriction")
    except PackageNotFoundError:
        return "unknown"


def _platform() -> dict:
    """What the PMFs' floating point depends on beyond the model: torch and the CPU kernels."""
    return dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability())


def model_identity(probe: Probe) -> dict:
    """What a compressed file must be decoded with: the checkpoint's sha256 (or, for a model
    held in memory, the sha256 of its parameters), and which weights of it (EMA or raw)."""
    sha = probe.source.get("checkpoint_sha256")
    if not sha:
        module = getattr(probe, "model", None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{probe.name} has no checkpoint sha256 to name in a compressed "
                             f"file; open it from a checkpoint (vp.load) to write one")
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sha = "parameters:" + digest.hexdigest()
    return dict(model_sha256=str(sha), ema=int(probe.source.get("ema", -1)),
                model_format=str(probe.source.get("format", "memory")))


def _initial_words(chain: _Chain, seed: int) -> np.ndarray:
    """Seeded random words for the first image's posterior pops: latent_bits per latent element
    (what the prior will push back), plus 64 words of slack."""
    elements = sum(int(np.prod(shape)) for shape in chain.shapes)
    words = math.ceil(elements * chain.latent_bits / 32) + 64
    return np.random.default_rng(seed).integers(0, 2 ** 32, size=words, dtype=np.uint32)


def compress(source, data, *, n_images: int | None = 100, latent_bits: int = 8, seed: int = 0,
             out=None, verify: bool = True, progress: bool = True) -> xr.Dataset:
    """Code images losslessly with the model (bits-back ANS) and report the real bits.

    Parameters
    ----------
    source : Probe, run directory, checkpoint file or model folder
        Gaussian latents per layer and a discretized 8-bit decoder PMF: vaeprobe's HVAE and
        two-stage models, VDVAE, and any such Probe (hierarchical ones implement
        ``encode_given``). Opened on the CPU.
    data : str, Dataset or uint8 tensor
        The images, coded in one chain in the order of the (sorted) seeded subset.
    n_images : int or None
        A seeded random subset (None: all).
    latent_bits : int
        Bins per latent element: 2^latent_bits of equal prior mass.
    seed : int
        Seeds the subset and the initial random bits.
    out : str or Path, optional
        Also write the compressed file here (``.vpbb``; :func:`decompress` reads it).
    verify : bool
        Decode the whole chain again and compare bit for bit (``round_trip``); also times the
        decoder.

    Returns
    -------
    xarray.Dataset
        Per ``image``: ``coded_bits`` (the net growth of the stack while coding it: bits),
        ``elbo_bits`` (its -ELBO at the same discretization: -log2 p(x | z) at the coded
        latents plus, per layer, KL(Q || uniform) over the bins, Q the posterior's bin masses
        given the coded layers above), ``pixel_bits`` (-log2 p(x | z)), ``symbol_bits`` (the
        information of the symbols actually coded under the quantised PMFs: pixel pushes +
        latent_bits per latent element - the posterior pops); ``layer_bits`` (image, layer:
        each layer's KL term, bits). Scalars: ``coded_bpd`` and ``elbo_bpd`` (bits/dim, means
        over the chain) with ``_se``; ``overhead_fraction`` (sum coded / sum -ELBO - 1: what
        the chain costs beyond the model's promise, from PMF quantisation, the ANS state and
        pops that do not read uniformly random bits), ``coder_overhead_fraction`` (sum coded /
        sum symbol_bits - 1: the ANS coder alone); ``initial_bits`` (the random bits the chain
        starts from, not counted in ``coded_bits``, given back at the end), ``file_bits``
        (initial + coded: the stack's final size), ``encode_images_per_second``,
        ``decode_images_per_second`` (one CPU thread; NaN without ``verify``).
        attrs: ``round_trip`` (1 only when every image decoded exactly and the initial bits
        came back), ``latent_bits``, ``coder``, ``model_sha256``, ``compressed_file``.

    Examples
    --------
    >>> ds = compress("runs/demo", "patches32:test", n_images=50)  # doctest: +SKIP
    >>> float(ds.coded_bpd), float(ds.elbo_bpd), int(ds.attrs["round_trip"])  # doctest: +SKIP
    """
    import constriction

    probe = _open_probe(source)
    _check_probe(probe, latent_bits)
    probe, data = fit_probe(probe, data)  # a convolutional model takes the data's size
    chain = _Chain(probe, latent_bits)
    dataset, indices = evaluation_set(probe, data, n_images, seed)
    images = torch.cat(list(iterate_batches(dataset, 64, indices)))
    with _one_thread(), torch.no_grad():
        _check_likelihood(probe, chain)
        initial = _initial_words(chain, seed)
        coder = constriction.stream.stack.AnsCoder(initial.copy())
        rows, seconds = _encode_all(chain, coder, images, progress)
        words = coder.get_compressed().copy()
        decoded, decode_seconds = None, math.nan
        if verify:
            decoded, decode_seconds, rest = _decode_all(chain, words, len(images), progress)
    identity = model_identity(probe) if out is not None else {}
    round_trip = bool(verify and torch.equal(decoded, images) and np.array_equal(rest, initial))
    ds = _compress_dataset(probe, rows, indices, len(initial) * 32, len(words) * 32, seconds,
                           decode_seconds)
    header = dict(format_version=FORMAT_VERSION, **identity, image_shape=list(probe.image_shape),
                  checkpoint=str(probe.source.get("checkpoint", "")),
                  n_images=len(images), latent_bits=latent_bits,
                  initial_words=len(initial), precision=PRECISION,
                  constriction=_constriction_version(), **_platform())
    if out is not None:
        write_compressed(out, header, words)
    parameters = dict(n_images=n_images, latent_bits=latent_bits, seed=seed, verify=verify)
    ds.attrs = result_attrs(
        "compress", parameters, probe, dataset, len(images), seed,
        model_sha256=identity.get("model_sha256", probe.source.get("checkpoint_sha256", "")),
        round_trip=int(round_trip), latent_bits=latent_bits, likelihood_kind="discretized",
        coder=f"bits-back ANS (constriction {header['constriction']}, precision {PRECISION})",
        discretization="equal prior mass bins per latent element (HiLLoC), bin centres",
        threads=1, compressed_file=str(out) if out is not None else "")
    return ds


def _encode_all(chain: _Chain, coder, images: torch.Tensor, progress: bool):
    rows = []
    bar = progress_bar(len(images), "compress: encode", progress, unit="img")
    start = time.perf_counter()
    for index in range(len(images)):
        before = coder.num_bits()
        terms = chain.encode(coder, images[index:index + 1])
        rows.append(dict(coded_bits=coder.num_bits() - before, **terms))
        bar.update(1)
    bar.close()
    return rows, time.perf_counter() - start


def _decode_all(chain: _Chain, words: np.ndarray, n: int, progress: bool):
    """Decode ``n`` images (last coded first); (images in coding order, seconds, the words
    left: the initial bits when all went well)."""
    import constriction

    coder = constriction.stream.stack.AnsCoder(words.copy())
    out = []
    bar = progress_bar(n, "compress: decode", progress, unit="img")
    start = time.perf_counter()
    for _ in range(n):
        out.append(chain.decode(coder))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    return torch.cat(out[::-1]), seconds, coder.get_compressed().copy()


def _compress_dataset(probe: Probe, rows: list[dict], indices, initial_bits: int,
                      file_bits: int, seconds: float, decode_seconds: float) -> xr.Dataset:
    dims = image_dims(probe)
    coded = np.array([row["coded_bits"] for row in rows], dtype=np.float64)
    layer_bits = np.array([row["layer_bits"] for row in rows], dtype=np.float64)
    pixel_bits = np.array([row["pixel_bits"] for row in rows], dtype=np.float64)
    elbo = pixel_bits + layer_bits.sum(1)
    symbol_bits = np.array([row["symbol_bits"] for row in rows], dtype=np.float64)
    n = len(rows)

    def se(values):
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    bits, bpd, speed = {"units": "bits"}, {"units": "bits/dim"}, {"units": "images/s"}
    return xr.Dataset(
        {
            "coded_bits": ("image", coded, {**bits, "long_name": "net stack growth per image"}),
            "elbo_bits": ("image", elbo, {**bits, "long_name": "-ELBO at the coded bins"}),
            "pixel_bits": ("image", pixel_bits, {**bits, "long_name": "-log2 p(x | z)"}),
            "symbol_bits": ("image", symbol_bits,
                            {**bits, "long_name": "information of the coded symbols under "
                             "the quantised PMFs (pushes - pops)"}),
            "layer_bits": (("image", "layer"), layer_bits,
                           {**bits, "long_name": "log2 q(bin) - log2 p(bin), per layer"}),
            "coded_bpd": ((), float(coded.mean() / dims), bpd),
            "coded_bpd_se": ((), se(coded / dims), bpd),
            "elbo_bpd": ((), float(elbo.mean() / dims), bpd),
            "elbo_bpd_se": ((), se(elbo / dims), bpd),
            "overhead_fraction": ((), float(coded.sum() / elbo.sum() - 1), {"units": "1"}),
            "coder_overhead_fraction": ((), float(coded.sum() / symbol_bits.sum() - 1),
                                        {"units": "1"}),
            "initial_bits": ((), initial_bits, {**bits, "long_name": "random bits the chain "
                                                "starts from (returned at the end)"}),
            "file_bits": ((), file_bits, {**bits, "long_name": "final stack: initial + coded"}),
            "encode_images_per_second": ((), n / seconds, speed),
            "decode_images_per_second": ((), n / decode_seconds, speed),
        },
        coords={"image": indices.numpy(), "layer": np.arange(len(probe.layers)),
                "name": ("layer", [info.name for info in probe.layers])})


# ---- the file -----------------------------------------------------------------------------------
def write_compressed(path, header: dict, words: np.ndarray) -> Path:
    """Write a ``.vpbb`` file atomically: magic, header length, JSON header, uint32 words."""
    text = json.dumps(header, sort_keys=True).encode()
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + struct.pack("<I", len(text)) + text)
            handle.write(words.astype("<u4").tobytes())
    return Path(path)


def read_compressed(path) -> tuple[dict, np.ndarray]:
    """(header, words) of a ``.vpbb`` file, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed file not found: {path}")
    blob = path.read_bytes()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise CompressedFileError(f"{path} is not a vaeprobe compressed file (written by "
                                  f"vp.compress / vaeprobe compress)")
    start = len(MAGIC) + 4
    (length,) = struct.unpack("<I", blob[len(MAGIC):start])
    try:
        header = json.loads(blob[start:start + length])
    except ValueError:
        raise CompressedFileError(f"{path}: its header is damaged") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise CompressedFileError(f"{path} has format version {header.get('format_version')}; "
                                  f"this vaeprobe reads version {FORMAT_VERSION}")
    body = blob[start + length:]
    if len(body) % 4:
        raise CompressedFileError(f"{path} is truncated (its payload is not whole words)")
    return header, np.frombuffer(body, dtype="<u4").astype(np.uint32)


def decompress(path, source=None, *, progress: bool = True) -> torch.Tensor:
    """Decode a ``.vpbb`` file written by :func:`compress`: the images, uint8 (N, C, H, W), in
    the order they were coded.

    Parameters
    ----------
    path : str or Path
        The compressed file.
    source : Probe, run directory or checkpoint, optional
        The model it was coded with; default the checkpoint path the file names. Another
        model (a different sha256, or the other of EMA / raw weights) is refused, naming the
        sha256 the file needs.

    Examples
    --------
    >>> images = decompress("images.vpbb", "runs/demo")  # doctest: +SKIP
    """
    header, words = read_compressed(path)
    if source is None:
        source = header.get("checkpoint")
        if not source or not Path(source).exists():
            raise FileNotFoundError(f"{path} was coded with {source or 'an unnamed model'}, "
                                    f"which is not here; pass the model (sha256 "
                                    f"{header['model_sha256']})")
    probe = _open_probe(source)
    identity = model_identity(probe)
    for key in ("model_sha256", "ema"):
        if identity[key] != header[key]:
            raise CompressedFileError(
                f"{path} was coded with the model of sha256 {header['model_sha256']} "
                f"(ema={header['ema']}); {probe.name} is sha256 {identity['model_sha256']} "
                f"(ema={identity['ema']}): decode it with the model it was coded with")
    if list(probe.image_shape) != header["image_shape"]:
        raise CompressedFileError(f"{path} holds images {header['image_shape']}, the model "
                                  f"makes {list(probe.image_shape)}")
    here = _platform()
    if any(header.get(key, here[key]) != here[key] for key in here):
        import warnings

        warnings.warn(f"{path} was coded with torch {header.get('torch')} on "
                      f"{header.get('cpu_capability')} CPU kernels, this is torch "
                      f"{here['torch']} on {here['cpu_capability']}: the decoder's PMFs must "
                      f"equal the encoder's bit for bit, and other kernels may round "
                      f"differently (a wrong image, not an error); check the result",
                      stacklevel=2)
    chain = _Chain(probe, int(header["latent_bits"]))
    with _one_thread(), torch.no_grad():
        images, _, _ = _decode_all(chain, words, int(header["n_images"]), progress)
    return images
