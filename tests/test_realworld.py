"""Real trained third-party models against their own code: disentangling-vae (three MNIST
models), JointVAE (continuous + discrete latents) and TAEF2 (a deterministic tiny autoencoder).

The fixtures in tests/fixtures/{disvae,jointvae,taesd}/parity.npz were written by running each
original project's code (``make_fixture.py`` beside them says how); the weights and images come
from ../shared/realworld, and every test here skips, saying why, without it.
"""

from pathlib import Path

import numpy as np
import pytest
import realworld
import torch

import vaeprobe as vp
from vaeprobe.probe import UndefinedAnalysisError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DISVAE = ("VAE_mnist", "betaH_mnist", "btcvae_mnist")


def _mnist32(n: int) -> torch.Tensor:
    images = np.load(realworld.path("mnist", "mnist_test_32.npz"))["images"][:n]
    return torch.from_numpy(images)


@pytest.mark.parametrize("name", DISVAE)
def test_disvae_matches_its_own_code(name):
    expected = np.load(FIXTURES / "disvae" / "parity.npz")
    probe = vp.load(realworld.path("models", "disentangling-vae", name), device="cpu")
    assert probe.source["format"] == "disvae" and probe.likelihood_kind == "discretized"
    x = _mnist32(len(expected["image_index"]))
    latents = probe.encode(x, posterior="mean")
    draw = latents.draws[0]
    np.testing.assert_allclose(draw.q_mean.flatten(1), expected[f"{name}/mean"], atol=1e-5)
    np.testing.assert_allclose(2 * draw.q_logstd.flatten(1), expected[f"{name}/logvar"],
                               atol=1e-5)
    # the KL per image and per dimension, as its loss computes them
    np.testing.assert_allclose(latents.kl_per_layer()[:, 0], expected[f"{name}/kl"], atol=1e-4)
    np.testing.assert_allclose(draw.kl.flatten(1), expected[f"{name}/kl_per_dim"], atol=1e-5)
    likelihood = probe.decode(latents)
    np.testing.assert_allclose(likelihood.mean, expected[f"{name}/reconstruction"], atol=1e-5)
    # its BCE on threshold-binarized images is our -log p(x | z = posterior mean)
    binary = vp.data.binarize(x, "threshold")
    binary = torch.stack([binary[i] for i in range(len(x))])
    np.testing.assert_allclose(-likelihood.log_prob(binary).numpy(),
                               expected[f"{name}/bce_threshold"], rtol=1e-5)


def test_jointvae_matches_its_own_code():
    expected = np.load(FIXTURES / "jointvae" / "parity.npz")
    probe = vp.load(realworld.path("models", "joint-vae", "mnist"), device="cpu")
    assert [layer.name for layer in probe.layers] == ["cont", "disc0"]
    x = _mnist32(len(expected["image_index"]))
    latents = probe.encode(x, posterior="mean")
    cont, disc = latents.draws
    assert disc.distribution == "categorical" and latents.kl_analytic == [True, True]
    np.testing.assert_allclose(cont.q_mean.flatten(1), expected["mean"], atol=1e-5)
    np.testing.assert_allclose(2 * cont.q_logstd.flatten(1), expected["logvar"], atol=1e-5)
    np.testing.assert_allclose(disc.q_mean.flatten(1), expected["alpha"], atol=1e-6)
    kl = latents.kl_per_layer().numpy()
    np.testing.assert_allclose(kl[:, 0], expected["kl_cont"], atol=1e-4)
    # its discrete KL adds EPS=1e-12 inside the log: differences of order 1e-11 nats
    np.testing.assert_allclose(kl[:, 1], expected["kl_disc"], atol=1e-5)
    np.testing.assert_allclose(probe.decode(latents).mean, expected["reconstruction"],
                               atol=1e-5)


def test_jointvae_iwae_samples_the_discrete_latent():
    probe = vp.load(realworld.path("models", "joint-vae", "mnist"), device="cpu")
    x = vp.data.binarize(_mnist32(4), "dynamic")
    latents = probe.encode(torch.stack([x[i] for i in range(4)]), n_samples=64,
                           generator=torch.Generator().manual_seed(0))
    one_hot = latents.draws[1].z.flatten(1)
    assert torch.equal(one_hot.sum(1), torch.ones(len(one_hot)))
    # the draws of c follow q(c|x): its log-probability of the draw enters log q
    log_q_disc = (one_hot * latents.draws[1].q_log_probs.flatten(1)).sum(1)
    assert torch.all(log_q_disc <= 0)
    ds = vp.iwae(probe, x, k=16, progress=False)
    assert float(ds["bpd_mean"]) <= float(ds["elbo_bpd_mean"]) + 1e-9
    assert 0.05 < float(ds["bpd_mean"]) < 1.0  # binarized MNIST: well under 1 bit/dim



def _enumerated_log_likelihood(probe, image: torch.Tensor, k: int) -> float:
    """An importance-sampled log p(x) with the discrete latent summed out exactly:
    L = logsumexp_k [log sum_c p(c) p(x | z_k, c) + log p(z_k) - log q(z_k | x)] - log K."""
    from vaeprobe.probe import gaussian_log_density

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        (mean, logvar), log_probs = probe.model.encode(image[None].float() / 255)
        n_classes = log_probs[0].shape[1]
        logstd = 0.5 * logvar
        z = mean + logstd.exp() * torch.randn(k, mean.shape[1], generator=generator)
        log_ratio = (gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
                     - gaussian_log_density(z, mean, logstd)).sum(1).double()
        target = (image == 255).double()
        per_class = []
        for c in range(n_classes):
            one_hot = torch.nn.functional.one_hot(torch.full((k,), c), n_classes).float()
            p = probe.model.decode(torch.cat([z, one_hot], 1)).double().clamp(1e-12, 1 - 1e-12)
            log_px = (target * p.log() + (1 - target) * (-p).log1p()).flatten(1).sum(1)
            per_class.append(log_px - np.log(n_classes))
        log_w = torch.logsumexp(torch.stack(per_class, 1), 1) + log_ratio
    return float(torch.logsumexp(log_w, 0) - np.log(k))


def test_jointvae_sampled_iwae_converges_to_the_enumerated_one():
    """Sampling c ~ q(c|x) in each importance draw (vp.iwae) and summing c out exactly estimate
    the same log p(x): with enough draws they agree to a fraction of a nat."""
    probe = vp.load(realworld.path("models", "joint-vae", "mnist"), device="cpu")
    binary = vp.data.binarize(_mnist32(3), "threshold")
    images = torch.stack([binary[0], binary[2]])
    sampled = vp.iwae(probe, images, k=512, progress=False)["log_likelihood"].values
    enumerated = [_enumerated_log_likelihood(probe, image, 128) for image in images]
    np.testing.assert_allclose(sampled, enumerated, atol=0.5)

def test_taef2_matches_its_own_code():
    expected = np.load(FIXTURES / "taesd" / "parity.npz")
    probe = vp.load(realworld.path("models", "taef2"), image_size=64, device="cpu")
    assert probe.source["format"] == "taesd" and probe.source["variant"] == "taef2"
    assert probe.source["weights_dtype"] == "float16" and probe.point_posterior
    x = torch.from_numpy(expected["images"])
    latents = probe.encode(x)
    np.testing.assert_allclose(latents.draws[0].z, expected["latents"], atol=1e-4)
    np.testing.assert_allclose(probe.decode(latents).mean, expected["reconstruction"],
                               atol=1e-4)


def test_taef2_refuses_what_a_deterministic_autoencoder_lacks():
    probe = vp.load(realworld.path("models", "taef2"), image_size=64, device="cpu")
    images = torch.from_numpy(np.load(FIXTURES / "taesd" / "parity.npz")["images"])
    for analysis in (lambda: vp.rate(probe, images, progress=False),
                     lambda: vp.iwae(probe, images, k=2, progress=False),
                     lambda: vp.samples(probe, 2, kind="mean", progress=False)):
        with pytest.raises(UndefinedAnalysisError, match="deterministic autoencoder"):
            analysis()
    spectra = vp.spectrum(probe, data=images, progress=False)
    assert "frequency" in spectra.dims


def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vaeprobe.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_rate_on_binarized_mnist_records_the_protocol(tmp_path):
    model = realworld.path("models", "disentangling-vae", "betaH_mnist")
    data = f"npz:{realworld.path('mnist', 'mnist_test_32.npz')},binarize=threshold"
    done = _cli("rate", str(model), "--data", data, "--n-images", "32", "--out",
                str(tmp_path / "rate.nc"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    ds = vp.open_results(tmp_path / "rate.nc")
    assert ds.attrs["format"] == "disvae" and ds.attrs["binarize"] == "threshold (at 128)"
    assert "elbo_bpd" in ds  # binary images: the Bernoulli likelihood is defined

