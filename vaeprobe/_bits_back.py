"""The bits-back coding chain of :mod:`vaeprobe.compress`: the PMFs (latent bins, pixel levels)
and the steps of one image, shared by the encoder and the decoder so that both compute the same
integer-count PMFs from the same inputs (see :mod:`vaeprobe.compress` for the scheme)."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from vaeprobe._analysis import progress_bar
from vaeprobe.models.likelihoods import (
    HALF_BIN,
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    log_normal_interval,
)
from vaeprobe.probe import LatentPass, LayerDraw, Probe


class NonFiniteModelError(ArithmeticError):
    """A PMF of NaN or inf: the model's numbers are not finite (the CLI's exit status 3)."""


PRECISION = 24  # the coder's probability precision: PMFs are integer counts summing to ~2^24
LEVELS = 256  # 8-bit pixels


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
    if not torch.isfinite(probabilities).all():
        raise NonFiniteModelError(
            "the model's probabilities are not a number (NaN or inf: its weights are not finite "
            "or its numbers overflowed), so nothing can be coded with it")
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
class Chain:
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



@contextlib.contextmanager
def one_thread():
    """Coding on one CPU thread: kernels split across threads may round differently, and the
    decoder must reproduce the encoder's PMFs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def initial_words(chain: Chain, seed: int) -> np.ndarray:
    """Seeded random words for the first image's posterior pops: latent_bits per latent element
    (what the prior will push back), plus 64 words of slack."""
    elements = sum(int(np.prod(shape)) for shape in chain.shapes)
    words = math.ceil(elements * chain.latent_bits / 32) + 64
    return np.random.default_rng(seed).integers(0, 2 ** 32, size=words, dtype=np.uint32)


def encode_all(chain: Chain, coder, images: torch.Tensor, progress: bool):
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


def decode_all(chain: Chain, words: np.ndarray, n: int, progress: bool):
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

