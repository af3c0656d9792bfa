"""Probabilistic PCA written as a Probe: exact log p(x), exact posterior, analytic KL.

z ~ N(0, I_d), y = x / 255 = mu + W z + N(0, sigma^2 I). W has orthogonal columns, so the exact
posterior is diagonal: q(z|y) = N(M^-1 W^T (y - mu), sigma^2 M^-1), M = W^T W + sigma^2 I.
Its likelihood evaluates the Gaussian density at x / 255 whatever the kind (a test double).
"""

import math

import numpy as np
import torch

from vaeprobe.probe import LatentPass, LayerDraw, LayerInfo, Probe, gaussian_kl

SIDE, LATENT = 2, 2
DIMS = SIDE * SIDE


class _Gaussian:
    def __init__(self, loc, sigma):
        self.loc, self.sigma = loc, sigma

    @property
    def mean(self):
        return self.loc.clamp(0, 1)

    def log_prob(self, x, kind="discretized", generator=None):
        y = x.double() / 255.0
        log_density = (-0.5 * ((y - self.loc) / self.sigma) ** 2 - math.log(self.sigma)
                       - 0.5 * math.log(2 * math.pi))
        return log_density.flatten(1).sum(1)

    def sample(self, generator=None):
        noise = torch.randn(self.loc.shape, generator=generator, dtype=torch.float64)
        return ((self.loc + self.sigma * noise).clamp(0, 1) * 255).round().to(torch.uint8)


class LinearGaussianProbe(Probe):
    def __init__(self, scales=(0.3, 0.1), sigma=0.05, mean_shift=0.0, logstd_shift=0.0):
        super().__init__({"checkpoint": "linear-gaussian test double"})
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(DIMS, LATENT)))
        self.W = torch.tensor(q * np.asarray(scales))  # (D, d), orthogonal columns
        self.mu, self.sigma = 0.5, sigma
        self.mean_shift, self.logstd_shift = mean_shift, logstd_shift  # a wrong posterior
        self.image_shape = (1, SIDE, SIDE)
        self.layers = [LayerInfo("z", (1, 1), LATENT)]
        self.device = torch.device("cpu")
        self.m_diag = (self.W ** 2).sum(0) + sigma ** 2  # (d,)

    def posterior(self, x):
        y = x.double().flatten(1) / 255.0
        q_mean = (y - self.mu) @ self.W / self.m_diag + self.mean_shift
        q_logstd = (0.5 * torch.log(self.sigma ** 2 / self.m_diag)).expand_as(q_mean)
        return q_mean, q_logstd + self.logstd_shift

    def encode(self, x, n_samples=1, generator=None, *, posterior="sample"):
        x = self.check_images(x)
        q_mean, q_logstd = (t.repeat_interleave(n_samples, 0)[:, :, None, None]
                            for t in self.posterior(x))
        noise = self.noise(x.shape[0], n_samples, generator, posterior)[0].double()
        z = q_mean + q_logstd.exp() * noise
        zeros = torch.zeros_like(z)
        kl = gaussian_kl(q_mean, q_logstd, zeros, zeros)
        return LatentPass([LayerDraw(zeros, zeros, z, q_mean, q_logstd, kl)], n_samples)

    def decode(self, latents):
        z = latents.draws[0].z.flatten(1)
        loc = (self.mu + z @ self.W.T).reshape(-1, *self.image_shape)
        return _Gaussian(loc, self.sigma)

    def sample_prior(self, n, temperature=1.0, generator=None):
        z = temperature * self.noise(n, 1, generator)[0].double()
        zeros = torch.zeros_like(z)
        return LatentPass([LayerDraw(zeros, zeros, z)], 1)

    def exact_log_likelihood(self, x):
        """log N(x / 255; mu, W W^T + sigma^2 I) per image."""
        y = x.double().flatten(1) / 255.0
        covariance = self.W @ self.W.T + self.sigma ** 2 * torch.eye(DIMS, dtype=torch.float64)
        normal = torch.distributions.MultivariateNormal(torch.full((DIMS,), self.mu,
                                                                   dtype=torch.float64),
                                                        covariance)
        return normal.log_prob(y)

    def exact_kl(self, x):
        """KL(q || N(0, I)) per image: 0.5 (tr S + m^T m - d - log det S)."""
        q_mean, q_logstd = self.posterior(x)
        variance = torch.exp(2 * q_logstd)
        return 0.5 * (variance.sum(1) + (q_mean ** 2).sum(1) - LATENT
                      - torch.log(variance).sum(1))


def images(n=40, seed=0):
    """Images drawn from the model itself (so the posterior is meaningful)."""
    probe = LinearGaussianProbe()
    generator = torch.Generator().manual_seed(seed)
    latents = probe.sample_prior(n, generator=generator)
    return probe.decode(latents).sample(generator)
