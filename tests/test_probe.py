"""The Probe contract: its own module, refusals, posterior means, sampled KLs, and randomness
that depends on neither the batch nor the chunk of draws."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussianProbe, images

import vaeprobe as vp
from vaeprobe.adapters.native import probe_classes, probe_for
from vaeprobe.models import HVAE, TwoStageVAE, preset, secondary_config
from vaeprobe.models.families import Family, families
from vaeprobe.probe import (
    LatentPass,
    LayerDraw,
    LayerInfo,
    Probe,
    UndefinedAnalysisError,
    gaussian_kl,
    gaussian_log_density,
)
from vaeprobe.random import image_generators, per_image_noise, per_row_random


def test_contract_module_imports_nothing_model_specific():
    import vaeprobe.probe

    def ours(module):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
        return {name for name in imported if name and name.startswith("vaeprobe")}

    # the contract, its densities and its argument checks; those two import nothing of ours;
    # chunking (rows per pass from free memory) only the memory budget of vaeprobe.validate
    parts = {"vaeprobe.densities", "vaeprobe.probe_checks", "vaeprobe.chunking"}
    assert ours(vaeprobe.probe) == {"vaeprobe.random"} | parts, ours(vaeprobe.probe)
    import vaeprobe.chunking
    import vaeprobe.densities
    import vaeprobe.probe_checks

    assert not ours(vaeprobe.densities) | ours(vaeprobe.probe_checks)
    assert ours(vaeprobe.chunking) == {"vaeprobe.validate"}


@pytest.fixture(scope="module")
def tiny_probe():
    torch.manual_seed(0)
    model = HVAE(preset("tiny-8"))
    with torch.no_grad():  # non-zero priors and heads, so every layer matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return probe_for(model, "cpu")


@pytest.mark.parametrize("kind", ["discretized", "dequantized"])
def test_iwae_does_not_depend_on_batch_size_or_chunk(tiny_probe, digits_test, kind):
    # The noise is drawn in a fixed layout, so every draw is the same number whatever the batch
    # or chunk (test_chunked_noise_equals_unchunked checks it bit for bit). What is left is the
    # last bit of float32 convolutions, whose CPU kernels round differently with the batch
    # size (a lone 1x1 conv differs by ~4e-7 between batches of 16 and of 5).
    reference = None
    for batch_size, chunk in [(1, None), (5, 3), (16, None), (16, 1), (5, 16)]:
        ds = vp.iwae(tiny_probe, digits_test, k=16, n_images=6, batch_size=batch_size,
                     chunk=chunk, kind=kind, progress=False)
        values = ds["log_likelihood_by_k"].values
        if reference is None:
            reference = values
        np.testing.assert_allclose(values, reference, rtol=1e-6, atol=1e-5)


def test_chunked_noise_equals_unchunked():
    shapes = [(2, 1, 1), (3, 4, 4)]
    whole = per_image_noise(shapes, image_generators(3, [7, 8]), 5, "cpu")
    generators = image_generators(3, [7, 8])
    parts = [per_image_noise(shapes, generators, n, "cpu") for n in (2, 3)]
    for layer, expected in enumerate(whole):
        rows = torch.cat([parts[0][layer].reshape(2, 2, *shapes[layer]),
                          parts[1][layer].reshape(2, 3, *shapes[layer])], 1)
        assert torch.equal(rows.reshape(expected.shape), expected)


def test_per_row_random_is_split_free():
    a = per_row_random(torch.rand, (6, 3), image_generators(0, [1, 2]), "cpu")
    generators = image_generators(0, [1, 2])
    b1 = per_row_random(torch.rand, (2, 3), generators, "cpu")
    b2 = per_row_random(torch.rand, (4, 3), generators, "cpu")
    assert torch.equal(a.reshape(2, 3, 3), torch.cat([b1.reshape(2, 1, 3),
                                                      b2.reshape(2, 2, 3)], 1))
    with pytest.raises(ValueError, match="split evenly"):
        per_row_random(torch.rand, (5, 3), image_generators(0, [1, 2]), "cpu")


def test_image_generator_streams_are_independent():
    latent, other = image_generators(0, [4]), image_generators(0, [4], stream=1)
    assert not torch.equal(torch.rand(8, generator=latent[0]), torch.rand(8, generator=other[0]))


def test_posterior_mean_is_the_posterior_mean(tiny_probe, digits_test):
    x = vp.data.gather(digits_test, torch.arange(4))
    latents = tiny_probe.encode(x, 2, image_generators(0, range(4)), posterior="mean")
    for draw in latents.draws:
        assert torch.equal(draw.z, draw.q_mean)
    with pytest.raises(ValueError, match="posterior must be one of"):
        tiny_probe.encode(x, posterior="mode")
    a = vp.rate(tiny_probe, digits_test, n_images=8, posterior="mean", seed=0, progress=False)
    b = vp.rate(tiny_probe, digits_test, n_images=8, posterior="mean", seed=5, progress=False)
    assert a.attrs["posterior"] == "mean"
    assert float(a["distortion"]) != pytest.approx(float(
        vp.rate(tiny_probe, digits_test, n_images=8, progress=False)["distortion"]), rel=1e-9)
    assert b.attrs["seed"] == 5


def test_two_stage_posterior_mean_runs():
    probe = probe_for(TwoStageVAE(preset("tiny-8"), secondary_config(preset("tiny-8"))), "cpu")
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    latents = probe.encode(x, 1, posterior="mean")
    assert all(torch.equal(d.z, d.q_mean) for d in latents.draws)


def test_two_stage_prior_given_fixes_the_primary_then_the_secondary():
    torch.manual_seed(0)
    probe = probe_for(TwoStageVAE(preset("tiny-8"), secondary_config(preset("tiny-8"))), "cpu")
    for p in probe.model.secondary.parameters():  # a non-zero residual, so stages matter
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    latents = probe.encode(x, 1, image_generators(0, range(4)))
    draw = image_generators(1, range(4))  # a fresh list per call: generators are consumed
    all_kept = probe.sample_prior_given(latents, len(probe.layers), generator=draw)
    torch.testing.assert_close(probe.decode(all_kept).mean, probe.decode(latents).mean,
                               rtol=0, atol=1e-6)
    primary_kept = probe.sample_prior_given(latents, probe.n_primary,
                                            generator=image_generators(1, range(4)))
    torch.testing.assert_close(primary_kept.context["x_hat"], latents.context["x_hat"],
                               rtol=0, atol=1e-6)
    assert not torch.allclose(probe.decode(primary_kept).mean, probe.decode(latents).mean)
    none_kept = probe.sample_prior_given(latents, 0, generator=image_generators(1, range(4)))
    prior = probe.sample_prior(4, generator=image_generators(1, range(4)))
    assert torch.equal(probe.decode(none_kept).mean, probe.decode(prior).mean)
    with pytest.raises(ValueError, match="n_fixed"):
        probe.sample_prior_given(latents, len(probe.layers) + 1)


class _NoLikelihood(LinearGaussianProbe):
    likelihood_kind = "none"
    prior_is_generative = False


def test_refusals_name_the_model_and_reason():
    probe = _NoLikelihood()
    with pytest.raises(UndefinedAnalysisError, match="vp.iwae is undefined for linear-gaussian"
                                                      ".*no likelihood"):
        vp.iwae(probe, images(4), k=2, progress=False)
    with pytest.raises(UndefinedAnalysisError, match="prior_is_generative=False"):
        probe.require("prior samples", prior=True)
    probe.require("vp.rate")  # nothing needed: no error
    ds = vp.rate(probe, images(4), progress=False)  # reconstructions still run
    assert ds.sizes["layer"] == 1


def test_sampled_kl_enters_log_q():
    torch.manual_seed(0)
    z, q_mean, q_logstd = torch.randn(3, 2, 1, 1), torch.randn(3, 2, 1, 1), torch.zeros(3, 2, 1, 1)
    p_mean, p_logstd = torch.zeros_like(z), torch.zeros_like(z)
    log_q = gaussian_log_density(z, q_mean, q_logstd)
    sampled = log_q - gaussian_log_density(z, p_mean, p_logstd)
    analytic = LatentPass([LayerDraw(p_mean, p_logstd, z, q_mean, q_logstd,
                                     gaussian_kl(q_mean, q_logstd, p_mean, p_logstd))])
    flow = LatentPass([LayerDraw(p_mean, p_logstd, z, kl=sampled, kl_analytic=False)])
    assert torch.allclose(flow.log_q(), analytic.log_q())
    assert flow.kl_analytic == [False] and analytic.kl_analytic == [True]
    assert torch.allclose(flow.kl_per_layer()[:, 0], sampled.flatten(1).sum(1))


class _WideLayers(LinearGaussianProbe):
    """Two latent layers of shapes 1x1 and 1x4 (same height, different width)."""

    def __init__(self):
        super().__init__()
        self.layers = [LayerInfo("a", (1, 1), 2), LayerInfo("b", (1, 4), 1)]

    def encode(self, x, n_samples=1, generator=None, *, posterior="sample"):
        first = super().encode(x, n_samples, generator, posterior=posterior).draws[0]
        second = LayerDraw(*(t.reshape(-1, 1, 1, 2).repeat(1, 1, 1, 2).contiguous() if t
                             is not None else None for t in (first.p_mean, first.p_logstd,
                                                             first.z, first.q_mean,
                                                             first.q_logstd, first.kl)))
        return LatentPass([first, second], n_samples)

    def decode(self, latents):
        return super().decode(LatentPass(latents.draws[:1], latents.n_samples))


def test_rate_by_resolution_groups_by_height_and_width():
    ds = vp.rate(_WideLayers(), images(6), progress=False)
    assert list(ds["resolution"].values) == ["1x1", "1x4"]
    assert list(ds["resolution_width"].values) == [1, 4]
    assert list(ds["layer_resolution"].values) == ["1x1", "1x4"]
    assert float(ds["rate_by_resolution"].sel(resolution="1x4")) == pytest.approx(
        float(ds["rate"].sel(layer=1)))
    assert float(ds["rate_by_resolution"].sum()) == pytest.approx(float(ds["total_rate"]))


def test_family_registry_checks_its_entries():
    with pytest.raises(TypeError, match="must be registered as a Family"):
        families.register("broken", object())
    with pytest.raises(TypeError, match="check_config must be callable"):
        families.register("broken", Family(HVAE, HVAE, dict, None))
    assert "broken" not in families
    families.register("no-probe", Family(torch.nn.Linear, dict, dict, lambda config, path: (0, 0)))
    try:  # a family without a registered Probe: the error says how to register one
        with pytest.raises(TypeError, match=r"probe_classes.register\('no-probe'"):
            probe_for(torch.nn.Linear(2, 2))
        with pytest.raises(TypeError, match="must be a vaeprobe.probe.Probe subclass"):
            probe_classes.register("no-probe", dict)
    finally:
        families._entries.pop("no-probe")
    with pytest.raises(TypeError, match="no Probe for Linear"):
        probe_for(torch.nn.Linear(2, 2))
    # every family we train has its Probe, registered by the native adapter (models/ names none)
    assert set(probe_classes) == set(families)
    assert all(issubclass(probe_classes.get(name), Probe) for name in families)


def test_a_stored_config_is_checked_by_its_family_naming_the_part():
    from vaeprobe.models.families import check_stored_config
    from vaeprobe.validate import ConfigError

    good = preset("tiny-8").to_dict()
    check_stored_config("hvae", good, "f.pt")
    with pytest.raises(ConfigError, match=r"f.pt \(config\).*width"):
        check_stored_config("hvae", {**good, "width": -1}, "f.pt")
    with pytest.raises(ConfigError, match=r"f.pt \(config.secondary\).*width"):
        check_stored_config("two_stage", {"primary": good, "secondary": {**good, "width": 0}},
                            "f.pt")
    with pytest.raises(ConfigError, match="has keys 'primary' and 'secondary'"):
        check_stored_config("two_stage", {"primary": good}, "f.pt")


def test_presets_have_one_source():
    """The models own the model config per preset, the trainer its settings per preset (keyed
    by its own field names); the old mixed table is deprecated with a warning."""
    import ast
    import dataclasses

    from trainers.config import PRESETS as TRAIN_PRESETS
    from trainers.config import TrainConfig
    from vaeprobe.models import PRESETS, hvae

    assert set(TRAIN_PRESETS) == set(PRESETS)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(set(values) <= fields for values in TRAIN_PRESETS.values())
    # vaeprobe.models names no trainer field: no key of the trainer's settings in its source
    source = Path(hvae.__file__).read_text()
    keywords = {node.arg for node in ast.walk(ast.parse(source)) if isinstance(node, ast.keyword)}
    assert not keywords & {"lr", "lambda_lr", "steps", "ckpt_every", "batch_size"}
    with pytest.warns(DeprecationWarning, match="trainers.config.PRESETS"):
        from vaeprobe.models import PRESET_TABLE
    assert {name: entry.model for name, entry in PRESET_TABLE.items()} == PRESETS
