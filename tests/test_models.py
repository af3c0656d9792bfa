import math

import pytest
import torch

from vaeprobe.adapters.native import HVAEProbe, TwoStageProbe
from vaeprobe.models import HVAE, PRESETS, HVAEConfig, TwoStageVAE, preset, secondary_config
from vaeprobe.probe import gaussian_kl, gaussian_log_density
from vaeprobe.random import image_generators


def tiny(**overrides):
    return preset("tiny-8", **overrides)


def images(n=4, config=None, seed=0):
    config = config or tiny()
    generator = torch.Generator().manual_seed(seed)
    shape = (n, config.image_channels, config.image_size, config.image_size)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def test_analytic_kl_matches_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    q_mean, q_logstd, p_mean, p_logstd = (torch.randn(4, generator=generator,
                                                      dtype=torch.float64) * 0.5
                                          for _ in range(4))
    z = q_mean + q_logstd.exp() * torch.randn(400000, 4, generator=generator,
                                              dtype=torch.float64)
    monte_carlo = (gaussian_log_density(z, q_mean, q_logstd)
                   - gaussian_log_density(z, p_mean, p_logstd)).mean(0)
    assert torch.allclose(gaussian_kl(q_mean, q_logstd, p_mean, p_logstd), monte_carlo,
                          atol=0.01)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_forward_backward(name):
    config = PRESETS[name]
    model = HVAE(config)
    x = images(2, config)
    likelihood, draws = model.posterior_pass(x)
    assert likelihood.mean.shape == x.shape and len(draws) == config.n_latent_layers
    loss = sum(d.kl.sum() for d in draws) - likelihood.log_prob(x, "dequantized").sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad
               and p is not model.head.log_sigma)
    assert [info["resolution"][0] for info in model.layer_info()] == [
        r for r, n in config.layers for _ in range(n)]


def test_paper_svhn_layout():
    config = PRESETS["paper-svhn"]
    assert config.layers == ((1, 2), (4, 4), (8, 10), (16, 16), (32, 16))
    assert config.n_latent_layers == 48 and config.latent_channels == 16
    assert (config.width, config.bottleneck) == (128, 32)
    assert PRESETS["paper-celeba"].layers[-1] == (64, 8)


@pytest.mark.parametrize("merge", ["precision", "concat"])
def test_merges(merge):
    model = HVAE(tiny(merge=merge))
    _, draws = model.posterior_pass(images())
    for d in draws:
        if merge == "precision":  # the merged posterior is at least as precise as the prior
            assert (d.q_logstd <= d.p_logstd + 1e-6).all()
        assert torch.isfinite(d.kl).all()


def test_bad_configs():
    with pytest.raises(ValueError, match="end at image_size"):
        HVAEConfig(image_size=32, layers=((1, 1), (16, 1)))
    with pytest.raises(ValueError, match="does not divide"):
        HVAEConfig(image_size=12, layers=((8, 1), (12, 1)))
    with pytest.raises(ValueError, match="merge"):
        tiny(merge="sum")
    with pytest.raises(ValueError, match="unknown HVAE config keys"):
        HVAEConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="residual_gain"):
        tiny(residual_gain=10.0)  # a gain needs residual=True


def test_encode_runs_bottom_up_once_per_image():
    model = HVAE(tiny())
    probe = HVAEProbe(model, "cpu")
    seen = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    latents = probe.encode(images(3), n_samples=5)
    assert seen == [3]
    assert latents.draws[0].z.shape[0] == 15 and latents.kl_per_layer().shape == (15, 3)


def test_log_q_and_log_p_agree_with_layer_parameters():
    probe = HVAEProbe(HVAE(tiny()), "cpu")
    latents = probe.encode(images(2), n_samples=2, generator=torch.Generator().manual_seed(0))
    log_q = sum(torch.distributions.Normal(d.q_mean, d.q_logstd.exp()).log_prob(d.z)
                .flatten(1).sum(1) for d in latents.draws)
    log_p = sum(torch.distributions.Normal(d.p_mean, d.p_logstd.exp()).log_prob(d.z)
                .flatten(1).sum(1) for d in latents.draws)
    assert torch.allclose(latents.log_q(), log_q, atol=1e-4)
    assert torch.allclose(latents.log_p(), log_p, atol=1e-4)


def test_decode_from_z_alone_matches_decode_with_state():
    probe = HVAEProbe(HVAE(tiny()), "cpu")
    latents = probe.encode(images(2), generator=torch.Generator().manual_seed(0))
    with_state = probe.decode(latents).mean
    latents.context.clear()
    assert torch.allclose(probe.decode(latents).mean, with_state, atol=1e-6)


def test_per_image_generators_make_draws_batch_free():
    probe = HVAEProbe(HVAE(tiny()), "cpu")
    x = images(4)
    whole = probe.encode(x, 2, image_generators(0, range(4))).log_q()
    parts = torch.cat([probe.encode(x[:1], 2, image_generators(0, [0])).log_q(),
                       probe.encode(x[1:], 2, image_generators(0, [1, 2, 3])).log_q()])
    assert torch.allclose(whole, parts, atol=1e-5)


def test_prior_temperature_per_layer():
    probe = HVAEProbe(HVAE(tiny()), "cpu")
    cold = probe.sample_prior(3, temperature=[0.0, 0.0, 0.0],
                              generator=torch.Generator().manual_seed(0))
    for d in cold.draws:
        assert torch.allclose(d.z, d.p_mean)
    assert probe.decode(probe.sample_prior(3, 0.7)).sample().shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="one per latent layer"):
        probe.sample_prior(2, temperature=[1.0, 1.0])


def test_probe_rejects_wrong_images():
    probe = HVAEProbe(HVAE(tiny()), "cpu")
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        probe.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        probe.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="n_samples"):
        probe.encode(images(1), n_samples=0)


def test_two_stage_mean_is_x_hat_plus_the_scaled_head_output():
    """mean = clamp(x_hat + head / gain): a zero head reproduces x_hat exactly."""
    model = TwoStageVAE(tiny(), secondary_config(tiny()))
    probe = TwoStageProbe(model, "cpu")
    x = images(4)
    latents = probe.encode(x, n_samples=2)
    head = model.secondary.head.out_conv
    output = head(latents.context["h"])
    expected = (latents.context["x_hat"] + output / model.secondary.config.residual_gain)
    torch.testing.assert_close(probe.decode(latents).mean, expected.clamp(0, 1))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    assert torch.equal(probe.decode(latents).mean, latents.context["x_hat"])
    assert [info.stage for info in probe.layers] == ["primary"] * 3 + ["secondary"] * 3
    assert probe.layers[3].name.startswith("secondary.")
    samples = probe.decode(probe.sample_prior(2))
    assert samples.mean.shape == (2, 1, 8, 8)
    assert math.isfinite(float(latents.log_p().sum() - latents.log_q().sum()))


def test_shared_posterior_context_equals_the_concatenated_block():
    """conv(gelu(cat(h, a))) split as W_h gelu(h) + W_a gelu(a) + b: same posterior."""
    model = HVAE(tiny())
    layer = model.decoder_layers[1]
    generator = torch.Generator().manual_seed(0)
    h, a = (torch.randn(3, 16, 4, 4, generator=generator) for _ in range(2))
    expected = layer.posterior(torch.cat([h, a], 1)).chunk(2, 1)
    got = layer._posterior(h, layer.posterior_context(a))
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6)


def _untrained_two_stage(seed: int):
    """(distortion, draws, excess) of an untrained two-stage model at init ``seed``: the
    excess is the mean square between its secondary's output and the primary's x_hat."""
    torch.manual_seed(seed)
    model = TwoStageVAE(tiny(), secondary_config(tiny()))
    x = images(8)
    noise = [torch.randn(8, *shape) for shape in model.latent_shapes()]
    likelihood, draws = model.posterior_pass(x, noise=noise)
    with torch.no_grad():
        primary_noise = noise[:len(model.primary.decoder_layers)]
        x_hat = model.primary.posterior_pass(x, noise=primary_noise)[0].mean
    distortion = ((x.float() / 255 - likelihood.loc) ** 2).sum()
    return distortion, draws, float(((likelihood.loc - x_hat) ** 2).mean().detach())


def test_distortion_gradient_reaches_the_secondary_latents_at_init():
    """The secondary did not learn when its head started at zero: the distortion then sends no
    gradient to its latents, and only the rate term moves its posterior."""
    distortion, draws, _ = _untrained_two_stage(0)
    gradients = torch.autograd.grad(distortion, [d.z for d in draws] + [d.q_mean for d in draws])
    assert all(float(g.abs().sum()) > 0 for g in gradients)
    # the scaled residual keeps the untrained secondary's excess distortion small. It depends
    # on the init, not on the thread count: benchmarks/test_spread.py --cases excess measured,
    # over init seeds 0-11, a median of 0.005 and a maximum of 0.076 (seed 8; 3 of 12 seeds
    # above 0.01), the same at 1, 2 and 4 threads. So the median over those 12 seeds is held
    # below 0.01 and every seed below 0.15 (twice the worst), instead of one chosen seed
    excess = sorted(_untrained_two_stage(seed)[2] for seed in range(12))
    assert (excess[5] + excess[6]) / 2 < 0.01 and excess[-1] < 0.15, excess
