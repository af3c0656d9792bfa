"""vp.audit and its sections: dims, units, provenance, and each against a truth."""

import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussianProbe
from linear_gaussian import images as linear_images
from torch import nn

import vaeprobe as vp
from conftest import STAND_IN_NETS
from vaeprobe import audit as audit_module  # noqa: F401  (the function, with sections attached)
from vaeprobe import similarity
from vaeprobe.audit import (
    SECTIONS,
    latent_statistics,
    model_card,
    numerical_health,
    open_audit,
    progressive_coding,
    reconstructions,
    run_section,
    samples,
    spectra,
    where_bits_go,
)
from vaeprobe.probe import LatentPass, LayerDraw, LayerInfo, Probe, UndefinedAnalysisError
from vaeprobe.random import image_streams

STAND_INS = {k: v for k, v in STAND_IN_NETS.items() if k != "prc_extractor"}
pytestmark = pytest.mark.usefixtures("offline_weights")
N = 16  # images per test


@pytest.fixture(scope="module")
def probe(tiny_run):
    return vp.load(tiny_run, device="cpu")


def assert_section(ds, section, n_images=N):
    """Provenance and units every section carries."""
    for key in ("vaeprobe_version", "created_at", "analysis", "parameters", "checkpoint",
                "dataset", "n_images", "seed", "protocol"):
        assert key in ds.attrs, key
    assert ds.attrs["analysis"] == f"audit.{section}" and ds.attrs["status"] == "ok"
    assert int(ds.attrs["n_images"]) == n_images
    for name, variable in ds.data_vars.items():
        assert "units" in variable.attrs, name


# ---- test doubles ------------------------------------------------------------------------------


class _Mean:
    def __init__(self, mean):
        self.mean = mean


class ConvProbe(Probe):
    """One spatial latent layer (2, 8, 8) over a tiny conv encoder/decoder; no likelihood.

    ``posterior_mean``/``posterior_std`` per channel, when given, replace the encoder: latents
    of known spread. ``overflow`` multiplies the first encoder conv by 1e6 (and the second by
    1e-6): activations beyond float16's range inside, a normal output in float32.
    """

    likelihood_kind = "none"
    prior_is_generative = False

    def __init__(self, overflow=False, posterior_mean=None, posterior_std=None, source=None):
        super().__init__(source or {"checkpoint": "conv test double"})
        torch.manual_seed(0)
        self.model = nn.ModuleDict({"enc1": nn.Conv2d(1, 4, 3, padding=1),
                                    "enc2": nn.Conv2d(4, 4, 1), "dec": nn.Conv2d(2, 1, 3,
                                                                                padding=1)})
        if overflow:
            with torch.no_grad():
                self.model["enc1"].weight.mul_(1e6)
                self.model["enc1"].bias.mul_(1e6)
                self.model["enc2"].weight.mul_(1e-6)
        self.posterior_mean, self.posterior_std = posterior_mean, posterior_std
        self.image_shape, self.device = (1, 8, 8), torch.device("cpu")
        self.layers = [LayerInfo("z", (8, 8), 2)]

    @torch.no_grad()
    def encode(self, x, n_samples=1, generator=None, *, posterior="sample"):
        x = self.check_images(x)
        if self.posterior_mean is not None:
            shape = (x.shape[0], 2, 8, 8)
            mean = torch.tensor(self.posterior_mean).float()[None, :, None, None].expand(shape)
            logstd = torch.tensor(self.posterior_std).float().log()[None, :, None, None
                                                                    ].expand(shape)
        else:
            h = self.model["enc2"](torch.relu(self.model["enc1"](x.float() / 255)))
            mean, logstd = h[:, :2], h[:, 2:].clamp(-3, 1)
        mean, logstd = mean.repeat_interleave(n_samples, 0), logstd.repeat_interleave(n_samples, 0)
        z = mean + logstd.exp() * self.noise(x.shape[0], n_samples, generator, posterior)[0]
        zeros = torch.zeros_like(z)
        return LatentPass([LayerDraw(zeros, zeros, z, mean, logstd,
                                     vp.probe.gaussian_kl(mean, logstd, zeros, zeros))],
                          n_samples)

    @torch.no_grad()
    def decode(self, latents):
        return _Mean(torch.sigmoid(self.model["dec"](latents.draws[0].z)))


# ---- closed forms and the reference library ----------------------------------------------------


def test_psnr_of_a_constant_offset_is_10_log10_of_1_over_mse():
    x = torch.randint(10, 240, (3, 3, 8, 8), dtype=torch.uint8)
    for offset in (1, 5, 12):
        mse = (offset / 255) ** 2  # on the [0, 1] scale
        np.testing.assert_allclose(similarity.psnr(x, x + offset).numpy(), 10 * np.log10(1 / mse),
                                   rtol=1e-12)
    assert np.isinf(similarity.psnr(x, x).numpy()).all()


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=generator)
    y = (x.int() + torch.randint(-30, 30, x.shape, generator=generator)).clamp(0, 255).byte()
    expected = [peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255)
                for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(similarity.psnr(x, y).numpy(), expected, rtol=1e-12)
    expected = [structural_similarity(a.numpy(), b.numpy(), data_range=255, channel_axis=0)
                for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(similarity.ssim(x, y).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(similarity.ssim(x, x).numpy(), 1.0)
    assert (similarity.ssim(x, y).numpy() < 1).all()


# ---- sections ----------------------------------------------------------------------------------


def test_model_card(probe):
    ds = model_card(probe)
    assert ds.sizes["layer"] == len(probe.layers) == int(ds["n_layers"])
    assert list(ds["name"].values) == [info.name for info in probe.layers]
    assert int(ds["n_parameters"]) == sum(p.numel() for p in probe.model.parameters())
    assert int(ds["latent_dims_total"]) == sum(c * h * w for c, h, w in probe.latent_shapes())
    a = ds.attrs
    assert a["analysis"] == "audit.model_card" and len(a["checkpoint_sha256"]) == 64
    assert a["likelihood_kind"] == "discretized" and a["prior_is_generative"] == 1
    assert json.loads(a["defines"])["progressive coding"] == "yes"
    assert all("units" in v.attrs for v in ds.data_vars.values())
    card = model_card(ConvProbe())
    assert card.attrs["prior_is_generative"] == 0
    assert json.loads(card.attrs["defines"])["vp.iwae"].startswith("no:")


def test_bits_wraps_rate_and_flags_collapsed_layers(probe, digits_test):
    ds = where_bits_go(probe, digits_test, n_images=N, progress=False)
    assert_section(ds, "bits")
    rate = vp.rate(probe, digits_test, n_images=N, progress=False)
    np.testing.assert_allclose(ds["rate"], rate["rate"])
    np.testing.assert_array_equal(ds["collapsed"], (rate["rate"] < 0.1).astype(int))
    everything = where_bits_go(probe, digits_test, n_images=N, collapse_threshold=1e9,
                               progress=False)
    assert int(everything["n_collapsed"]) == len(probe.layers)
    assert json.loads(everything.attrs["collapsed_layers"]) == list(rate["name"].values)
    assert everything.attrs["collapse_threshold"] == 1e9


def test_reconstructions_with_stand_in_networks(probe, digits_test):
    ds = reconstructions(probe, digits_test, n_images=N, progress=False, **STAND_INS)
    assert_section(ds, "reconstructions")
    assert ds.sizes == {"kind": 2, "image": N, "preview_image": 8, "channel": 1, "y": 8, "x": 8}
    assert list(ds["kind"].values) == ["posterior_mean", "posterior_sample"]
    assert ds.attrs["stand_in_network"] == 1 and "NOT comparable" in ds.attrs["warning"]
    assert ds.attrs["ssim_data_range"] == 255 and ds.attrs["ssim_win_size"] == 7
    assert np.isfinite(ds["rfid"]).all() and np.isfinite(ds["lpips"]).all()
    # the sample reconstruction is vp.rate's (same per-image generators)
    rate = vp.rate(probe, digits_test, n_images=N, progress=False)
    assert float(ds["distortion_mean"].sel(kind="posterior_sample")) == pytest.approx(
        float(rate["distortion"]), rel=1e-9)
    mean = vp.rate(probe, digits_test, n_images=N, posterior="mean", progress=False)
    assert float(ds["distortion_mean"].sel(kind="posterior_mean")) == pytest.approx(
        float(mean["distortion"]), rel=1e-9)
    np.testing.assert_allclose(ds["mse"], ds["distortion"] / 64)


def test_reconstructions_without_weights_record_the_named_file(probe, digits_test):
    ds = reconstructions(probe, digits_test, n_images=N, progress=False)
    assert "alexnet-owt-7be5be79.pth" in ds.attrs["lpips_skipped"]
    assert "weights-inception-2015-12-05" in ds.attrs["rfid_skipped"]
    assert np.isnan(ds["lpips_mean"]).all() and np.isnan(ds["rfid"]).all()
    assert np.isfinite(ds["psnr_mean"]).all() and ds.attrs["stand_in_network"] == 0


def test_scale_factor_is_one_over_std_of_latents_of_known_spread(digits_test):
    shift, spread = [3.0, -1.0], [0.5, 2.0]
    double = ConvProbe(posterior_mean=shift, posterior_std=spread,
                       source={"checkpoint": "spread", "scaling_factor": 0.18215,
                               "shift_factor": "none"})
    ds = latent_statistics(double, digits_test, n_images=200, batch_size=64, progress=False)
    assert_section(ds, "latents", 200)
    # the same draws, by hand
    x = vp.data.gather(digits_test, vp.data.select(digits_test, 200, 0))
    z = double.encode(x, 1, image_streams(0, vp.data.select(digits_test, 200, 0).tolist())
                      ).draws[0].z.double().numpy()
    np.testing.assert_allclose(ds["sample_std"].sel(layer=0), z.std((0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(ds["channel_scale"].sel(layer=0), 1 / z.std((0, 2, 3)),
                               rtol=1e-9)
    assert float(ds["recommended_scaling_factor"][0]) == pytest.approx(1 / z.std(), rel=1e-9)
    assert float(ds["recommended_shift_factor"][0]) == pytest.approx(z.mean(), rel=1e-9)
    assert float(ds["recommended_scaling_factor_unshifted"][0]) == pytest.approx(
        1 / np.sqrt((z ** 2).mean()), rel=1e-9)
    # and the truth it estimates (200 x 64 draws per channel)
    np.testing.assert_allclose(ds["sample_std"].sel(layer=0), spread, rtol=0.02)
    np.testing.assert_allclose(ds["posterior_mean_mean"].sel(layer=0), shift, rtol=1e-6)
    np.testing.assert_allclose(ds["posterior_mean_std"].sel(layer=0), 0, atol=1e-6)
    assert float(ds["checkpoint_scaling_factor"]) == 0.18215
    assert np.isnan(ds["checkpoint_shift_factor"])


def test_sample_prior_given_at_k_all_is_the_posterior_and_at_0_the_prior(probe, digits_test):
    x = vp.data.gather(digits_test, torch.arange(6))
    generators = image_streams(0, range(6))
    latents = probe.encode(x, 1, generators)
    full = probe.decode(latents).mean
    kept = probe.sample_prior_given(latents, len(probe.layers), generator=image_streams(
        1, range(6)))
    torch.testing.assert_close(probe.decode(kept).mean, full, rtol=0, atol=1e-6)
    prior = probe.decode(probe.sample_prior(6, generator=image_streams(1, range(6)))).mean
    none_kept = probe.sample_prior_given(latents, 0, generator=image_streams(1, range(6)))
    torch.testing.assert_close(probe.decode(none_kept).mean, prior, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_fixed"):
        probe.sample_prior_given(latents, len(probe.layers) + 1)
    with pytest.raises(UndefinedAnalysisError, match="sample_prior_given"):
        LinearGaussianProbe().sample_prior_given(latents, 0)


def test_progressive_coding_ends_at_the_reconstruction(probe, digits_test):
    ds = progressive_coding(probe, digits_test, n_images=N, progress=False)
    assert_section(ds, "progressive")
    layers = len(probe.layers)
    assert ds.sizes["k"] == layers + 1 and list(ds["kind"].values) == ["mean", "sample"]
    assert list(ds["last_layer"].values) == [""] + [info.name for info in probe.layers]
    rate = vp.rate(probe, digits_test, n_images=N, progress=False)
    mean = vp.rate(probe, digits_test, n_images=N, posterior="mean", progress=False)
    end = ds.sel(k=layers)
    assert float(end["distortion"].sel(kind="sample")) == pytest.approx(
        float(rate["distortion"]), rel=1e-6)
    assert float(end["distortion"].sel(kind="mean")) == pytest.approx(
        float(mean["distortion"]), rel=1e-6)
    np.testing.assert_allclose(ds["cumulative_rate"][-1], rate["total_rate"], rtol=1e-9)
    # k = 0: a prior decode with the section's own prior noise
    indices = vp.data.select(digits_test, N, 0)
    x = vp.data.gather(digits_test, indices)
    prior = probe.sample_prior(N, generator=image_streams(0, indices.tolist(), stream=2))
    expected = ((x.double() / 255 - probe.decode(prior).mean.double()) ** 2).sum((1, 2, 3))
    assert float(ds["distortion"].sel(kind="sample", k=0)) == pytest.approx(
        float(expected.mean()), rel=1e-9)


def test_progressive_coding_is_skipped_with_a_reason_where_undefined(digits_test):
    ds = run_section("progressive", ConvProbe(), digits_test, n_images=N, progress=False)
    assert ds.attrs["status"] == "skipped" and "hierarchy" in ds.attrs["skipped"]


def test_spectra_with_latent_spectra(probe, digits_test):
    ds = spectra(probe, digits_test, n_images=N, progress=False)
    assert_section(ds, "spectra")
    assert ds.sizes["step"] == 1 and ds["frequency"].attrs["units"] == "cycles/pixel"
    assert list(ds["spatial"].values) == [int(min(i.resolution) >= 8) for i in probe.layers]
    spatial = ds.sel(layer=ds["spatial"] == 1)
    np.testing.assert_allclose(spatial["latent_power_normalised"].sum("latent_frequency"), 1.0)
    assert np.isnan(ds["latent_power"].sel(layer=ds["spatial"] == 0)).all()
    assert ds["latent_frequency"].attrs["units"] == "cycles/latent pixel"


def test_likelihood_and_samples_skip_without_a_likelihood_or_prior(probe, digits_test):
    double = ConvProbe()
    for name in ("likelihood", "samples"):
        ds = run_section(name, double, digits_test, n_images=N, progress=False)
        assert ds.attrs["status"] == "skipped" and "undefined" in ds.attrs["skipped"]
    ds = run_section("likelihood", probe, digits_test, n_images=N, k=4, progress=False)
    assert_section(ds, "likelihood")
    iwae = vp.iwae(probe, digits_test, k=4, n_images=N, progress=False)
    np.testing.assert_allclose(ds["bpd"], iwae["bpd"])
    assert float(ds["ess_fraction"]) == pytest.approx(float(iwae["ess"].mean()) / 4)


def test_samples_are_decoded_prior_draws(probe, digits_test):
    ds = samples(probe, digits_test, n_images=N, n_grid=4, progress=False,
                 feature_extractor=STAND_INS["feature_extractor"])
    assert_section(ds, "samples")
    assert ds["images"].dtype == np.uint8 and ds.sizes == {
        "temperature": 3, "kind": 2, "image": 4, "channel": 1, "y": 8, "x": 8}
    latents = probe.sample_prior(4, temperature=0.8, generator=image_streams(0, range(4)))
    expected = vp.data.to_uint8(probe.decode(latents).mean).numpy()
    np.testing.assert_array_equal(ds["images"].sel(temperature=0.8, kind="mean"), expected)
    assert np.isfinite(ds["fid"]).all() and ds.attrs["stand_in_network"] == 1


def test_precision_predicts_and_measures_a_planted_float16_overflow(digits_test):
    # forced to run float16 on this CPU (the default skips dtypes with slow convolutions)
    ds = numerical_health(ConvProbe(overflow=True), digits_test, n_images=N, progress=False,
                          cpu_images=4, cpu_slowdown_limit=math.inf)
    assert_section(ds, "precision")
    assert list(ds["dtype"].values) == ["float32", "bfloat16", "float16"]
    bad = ds["nan_count"] + ds["inf_count"]
    assert int(bad.sel(dtype="float16", stage="encode")) > 0
    assert int(bad.sel(dtype="float32").sum()) == 0 and int(bad.sel(dtype="bfloat16").sum()) == 0
    assert json.loads(ds.attrs["modules_exceeding_float16"]) == ["enc1"]
    assert int(ds["exceeds_float16"].sel(module="enc1")) == 1
    assert int(ds["n_images_measured"]) == 4 and int(ds["n_modules_monitored"]) == 3
    prediction = json.loads(ds.attrs["prediction"])
    assert prediction["float16"].startswith("overflow") and prediction["bfloat16"].startswith(
        "no overflow")
    # the planted activation: the largest |enc1 output| over all 16 images, by hand
    x = vp.data.gather(digits_test, vp.data.select(digits_test, N, 0))
    with torch.no_grad():
        planted = ConvProbe(overflow=True).model["enc1"](x.float() / 255).abs().max()
    assert float(ds["max_activation"].sel(module="enc1")) == pytest.approx(float(planted),
                                                                          rel=1e-6)
    healthy = numerical_health(ConvProbe(), digits_test, n_images=N, progress=False,
                               cpu_slowdown_limit=math.inf)
    assert int((healthy["nan_count"] + healthy["inf_count"]).sum()) == 0
    assert float(healthy["max_abs_deviation"].sel(dtype="float16", stage="roundtrip")) < 1e-2


def test_precision_on_cpu_skips_slow_dtypes_and_says_so(digits_test, monkeypatch):
    from vaeprobe.audit import precision

    monkeypatch.setattr(precision, "cpu_slowdown", lambda name: 100.0 if name == "float16"
                        else 0.5)
    ds = numerical_health(ConvProbe(overflow=True), digits_test, n_images=N, progress=False)
    assert json.loads(ds.attrs["dtypes_run"]) == ["bfloat16"]
    assert "100x slower" in json.loads(ds.attrs["dtype_skipped"])["float16"]
    assert int(ds["nan_count"].sel(dtype="float16").min()) == -1  # not run
    assert int(ds["n_images_measured"]) == 1
    assert ds.attrs["measured_on"] == "1 image(s) on CPU, the whole image"  # 8 px < the crop
    # the prediction still covers every image
    assert json.loads(ds.attrs["modules_exceeding_float16"]) == ["enc1"]
    assert int(ds.attrs["declared_force_upcast"]) == -1
    # a convolutional one-layer model is measured on a centre crop, against float32 on it
    crop = numerical_health(ConvProbe(overflow=True), digits_test, n_images=N, progress=False,
                            cpu_crop=4, cpu_slowdown_limit=math.inf)
    assert crop.attrs["measured_on"] == "1 image(s) on CPU, a 4x4 centre crop"
    bad = crop["nan_count"] + crop["inf_count"]
    assert int(bad.sel(dtype="float16", stage="encode")) > 0 and int(bad.sel(
        dtype="bfloat16").sum()) == 0
    quick = numerical_health(ConvProbe(), digits_test, n_images=N, progress=False,
                             run_low_precision=False)
    assert json.loads(quick.attrs["dtypes_run"]) == [] and int(quick["n_images_measured"]) == 0


# ---- the whole audit -------------------------------------------------------------------------


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.ids.append(attrs["id"])
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
            self.images += 1


def test_audit_reports_failures_in_place_and_writes_every_file(probe, digits_test, tmp_path,
                                                               monkeypatch):
    from vaeprobe.audit.latents import LatentAccumulator

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(LatentAccumulator, "update", broken)
    report = vp.audit(probe, digits_test, n_images=N, progress=False, out=tmp_path,
                      settings={"likelihood": {"k": 4}}, **STAND_INS)
    assert list(report) == list(SECTIONS)
    assert report["latents"].attrs["status"] == "failed"
    assert "planted failure" in report["latents"].attrs["error"]
    assert "broken" in report["latents"].attrs["traceback"]
    assert all(ds.attrs["status"] == "ok" for name, ds in report.items() if name != "latents")
    reread = open_audit(tmp_path / "audit.nc")
    assert list(reread) == list(report) and reread.attrs["checkpoint"] == probe.source[
        "checkpoint"]
    np.testing.assert_allclose(reread["bits"]["rate"], report["bits"]["rate"])
    assert reread["latents"].attrs["status"] == "failed"
    assert (tmp_path / "audit.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "audit.html").read_text()
    parser = _Parser()
    parser.feed(page)
    assert parser.ids == list(SECTIONS) and parser.images >= 8
    assert "planted failure" in page and "protocol" in page
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_audit_refuses_unknown_sections_and_settings(probe, digits_test):
    with pytest.raises(ValueError, match="unknown or no sections"):
        vp.audit(probe, digits_test, sections=["nope"])
    with pytest.raises(ValueError, match="takes no"):
        vp.audit(probe, digits_test, settings={"likelihood": {"K": 4}})
    assert vp.audit.model_card is model_card  # sections callable from vaeprobe.audit


def test_audit_of_a_single_latent_model_skips_what_is_undefined():
    x = linear_images(24)
    report = vp.audit(LinearGaussianProbe(), x, n_images=24, progress=False,
                      sections=["bits", "progressive", "likelihood", "latents"],
                      settings={"likelihood": {"k": 4}})
    assert report["progressive"].attrs["status"] == "skipped"
    assert report["likelihood"].attrs["status"] == "ok"
    assert "Progressive coding: skipped" in report.summary()
    assert math.isfinite(float(report["latents"]["recommended_scaling_factor"][0]))


@pytest.mark.slow
def test_cli_audit_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "vaeprobe.cli", "audit", str(tiny_run), "--data", "digits8:test",
         "--n-images", "16", "--feature-extractor", "random-convnet-TEST-ONLY",
         "--lpips-trunk", "random-TEST-ONLY", "--settings", '{"likelihood": {"k": 4}}',
         "--out", str(out), "--quiet"], capture_output=True, text=True, check=False,
        env={**__import__("os").environ, "VAEPROBE_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    for title in ("1. Model card", "2. Where the bits go", "9. Numerical health"):
        assert title in result.stdout
    assert "STAND-IN" in result.stdout
    assert {p.name for p in out.iterdir()} == {"audit.nc", "audit.png", "audit.html",
                                               "audit.json", "sections"}
    assert {p.name for p in (out / "sections").iterdir()} == {f"{n}.nc" for n in SECTIONS}
    assert open_audit(out / "audit.nc")["reconstructions"].attrs["stand_in_network"] == 1


def test_audit_of_the_vdvae_fixture():
    from pathlib import Path

    from vaeprobe.adapters.vdvae import open_vdvae

    fixture = Path(__file__).parent / "fixtures" / "vdvae"
    probe = open_vdvae(fixture / "latest-model-ema.th", hparams=str(fixture / "hparams.json"),
                       device="cpu")
    x = torch.randint(0, 256, (8, *probe.image_shape), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    report = vp.audit(probe, x, n_images=8, progress=False, settings={
        "likelihood": {"k": 2}, "progressive": {"n_images": 8}}, **STAND_INS)
    status = {name: ds.attrs["status"] for name, ds in report.items()}
    assert status == {name: "ok" for name in SECTIONS}, status
    # progressive coding runs (VDVAE implements sample_prior_given) and ends at the posterior
    progressive = report["progressive"]
    end = progressive.sel(k=len(probe.layers), kind="sample")
    assert float(end["distortion"]) == pytest.approx(float(report["bits"]["distortion"]),
                                                     rel=1e-5)
    assert report["model_card"].attrs["format"] == "vdvae"
    assert int(report["bits"].attrs["n_images"]) == 8


DIFFUSERS = __import__("pathlib").Path(__file__).parent / "fixtures" / "diffusers" / "tiny_vae"


@pytest.mark.skipif(not DIFFUSERS.is_dir(), reason="the diffusers fixture comes with the "
                    "adapters (tests/fixtures/diffusers)")
def test_audit_of_the_diffusers_fixture(tmp_path):
    probe = vp.load(DIFFUSERS, device="cpu")
    report = vp.audit(probe, "patches16:test", n_images=N, progress=False, out=tmp_path,
                      **STAND_INS)
    status = {name: ds.attrs["status"] for name, ds in report.items()}
    undefined = ("progressive", "likelihood", "samples")
    assert status == {name: "skipped" if name in undefined else "ok" for name in SECTIONS}
    assert "prior_is_generative=False" in report["samples"].attrs["skipped"]
    assert "likelihood_kind='none'" in report["likelihood"].attrs["skipped"]
    latents = report["latents"]
    assert float(latents["checkpoint_scaling_factor"]) == probe.source["scaling_factor"]
    assert float(latents["checkpoint_shift_factor"]) == pytest.approx(0.1)
    assert report["model_card"].attrs["format"] == "diffusers"
    assert "checkpoint: scaling_factor 0.5, shift_factor 0.1" in report.summary()
    page = (tmp_path / "audit.html").read_text()
    assert page.count("class=skipped>skipped:") == 3


# ---- one pass, per-dimension views, MS-SSIM, quick -------------------------------------------


class CountingProbe(ConvProbe):
    """ConvProbe counting its encoder and decoder passes."""

    def __init__(self):
        super().__init__()
        self.calls = {"encode": 0, "decode": 0}

    def encode(self, x, n_samples=1, generator=None, *, posterior="sample"):
        self.calls["encode"] += 1
        return super().encode(x, n_samples, generator, posterior=posterior)

    def decode(self, latents):
        self.calls["decode"] += 1
        return super().decode(latents)


def test_the_shared_sections_encode_each_image_once_and_decode_it_once_per_kind(digits_test):
    probe = CountingProbe()
    shared = ["bits", "reconstructions", "latents", "spectra", "precision"]
    report = vp.audit(probe, digits_test, n_images=N, batch_size=5, sections=shared,
                      progress=False, settings={"precision": {"run_low_precision": False}},
                      feature_extractor=STAND_INS["feature_extractor"])
    assert all(ds.attrs["status"] == "ok" for ds in report.values())
    batches = math.ceil(N / 5)
    assert probe.calls == {"encode": batches, "decode": 2 * batches}
    assert report.timing["mean_path"].startswith("read off the draw")
    # and each section equals its own public function (which runs the pass for itself)
    alone = numerical_health(ConvProbe(), digits_test, n_images=N, progress=False,
                             run_low_precision=False)
    np.testing.assert_allclose(report["precision"]["max_activation"], alone["max_activation"])
    latents = latent_statistics(ConvProbe(), digits_test, n_images=N, progress=False)
    np.testing.assert_allclose(report["latents"]["sample_std"], latents["sample_std"])


def test_per_dimension_views_of_a_flat_latent_model_match_the_exact_posterior(probe,
                                                                             digits_test):
    hierarchical = where_bits_go(probe, digits_test, n_images=4, progress=False)
    assert "rate_per_dim" not in hierarchical  # per-layer views only
    assert int(hierarchical.attrs["per_dimension"]) == 0
    probe = LinearGaussianProbe(scales=(0.3, 0.001))  # the second dimension carries ~nothing
    x = linear_images(40)
    report = vp.audit(probe, x, n_images=40, progress=False, sections=["bits", "latents"])
    bits, latents = report["bits"], report["latents"]
    q_mean, q_logstd = probe.posterior(x)
    variance = torch.exp(2 * q_logstd)
    kl = 0.5 * (variance + q_mean ** 2 - 1 - 2 * q_logstd)  # (images, dims), nats
    np.testing.assert_allclose(bits["rate_per_dim"], kl.mean(0), rtol=1e-9)
    np.testing.assert_allclose(bits["rate_per_dim"], bits["rate_per_channel"].sel(layer=0))
    assert list(bits["dim_by_rank"].values) == [0, 1]
    assert int(bits["n_active_dims"]) == 1 and list(bits["active_dim"].values) == [1, 0]
    exact_std = probe.sigma / probe.m_diag.sqrt()
    np.testing.assert_allclose(latents["posterior_std_per_dim"], exact_std, rtol=1e-9)
    aggregate = (q_mean.var(0, unbiased=False) + variance.mean(0)).sqrt()
    np.testing.assert_allclose(latents["aggregate_std_per_dim"], aggregate, rtol=1e-9)
    assert "active dimensions 1/2" in report.summary()
    assert "posterior std per dim" in report.summary()


def test_msssim_is_pytorch_msssim_and_skipped_with_the_reason_for_small_images():
    from pytorch_msssim import ms_ssim

    from vaeprobe.similarity import msssim_skip_reason

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 176, 176), dtype=torch.uint8, generator=generator)
    y = (x.int() + torch.randint(-20, 20, x.shape, generator=generator)).clamp(0, 255).byte()
    np.testing.assert_allclose(similarity.ms_ssim(x, x).numpy(), 1.0, rtol=1e-6)
    value = similarity.ms_ssim(x, y).numpy()  # float32: 2.2e-6 from pytorch-msssim's float64
    np.testing.assert_allclose(value, ms_ssim(x.double(), y.double(), data_range=255,
                                              size_average=False).numpy(), rtol=0, atol=1e-5)
    assert ((0 < value) & (value < 1)).all()
    assert msssim_skip_reason(176, 200) == ""
    assert "at least 161x161" in msssim_skip_reason(160, 512)


def test_reconstructions_of_small_images_skip_msssim_with_the_reason(probe, digits_test):
    ds = reconstructions(probe, digits_test, n_images=4, progress=False)
    assert "at least 161x161" in ds.attrs["msssim_skipped"] and "8x8" in ds.attrs[
        "msssim_skipped"]
    assert np.isnan(ds["msssim_mean"]).all()


def test_quick_profile_is_small_and_stated(probe, digits_test):
    report = vp.audit(probe, digits_test, quick=True, progress=False,
                      sections=["progressive", "likelihood", "precision"])
    assert int(report.attrs["n_images"]) == 32 and report.attrs["quick"] == 1
    assert report["progressive"].sizes["k"] <= 4
    assert int(report["likelihood"]["k"].values[-1]) == 16
    assert json.loads(report["precision"].attrs["dtypes_run"]) == []
    assert "predicted only" in report["precision"].attrs["dtype_skipped"]


REALWORLD = Path(os.environ.get("VAEPROBE_REALWORLD", Path(__file__).resolve().parents[1]
                                / ".." / "shared" / "realworld"))
if not REALWORLD.is_dir():  # a clone beside a shared/ one level up (the engineers' layout)
    REALWORLD = Path(__file__).resolve().parents[2] / ".." / "shared" / "realworld"
DISVAE = REALWORLD / "models" / "disentangling-vae"


@pytest.mark.skipif(not DISVAE.is_dir(), reason="needs ../shared/realworld (the "
                    "disentangling-vae MNIST models); absent in a user's clone")
def test_disentangling_vae_mnist_models_show_ten_dimensions_and_their_active_count():
    from vaeprobe.adapters import formats

    if "disvae" not in formats.names():
        pytest.skip("the disvae format is not registered in this tree")
    data = f"npz:{REALWORLD / 'mnist' / 'mnist_test_32.npz'}"
    found = {}
    for name in ("VAE_mnist", "btcvae_mnist"):
        report = vp.audit(DISVAE / name, data, n_images=200, progress=False,
                          sections=["bits", "latents"], device="cpu")
        bits = report["bits"]
        assert bits.sizes["dim"] == 10 and report["latents"].sizes["dim"] == 10
        assert "Bernoulli" in bits.attrs["log_px_skipped"]  # grey levels: no ELBO, said why
        found[name] = (float(bits["total_rate"]), int(bits["n_active_dims"]))
        assert f"active dimensions {found[name][1]}/10" in report.summary()
    # the README of shared/realworld: VAE about 19 nats; beta-TCVAE about 9 with 8 of 10 active
    assert found["VAE_mnist"][0] == pytest.approx(19, abs=2) and found["VAE_mnist"][1] == 10
    assert found["btcvae_mnist"][0] == pytest.approx(9, abs=1.5)
    assert found["btcvae_mnist"][1] == 8


@pytest.mark.skipif(not DIFFUSERS.is_dir(), reason="the diffusers fixture comes with the "
                    "adapters (tests/fixtures/diffusers)")
def test_precision_of_a_convolutional_model_runs_on_a_crop_and_reads_force_upcast():
    probe = vp.load(DIFFUSERS, device="cpu")
    ds = numerical_health(probe, "patches16:test", n_images=4, progress=False, cpu_crop=8,
                          cpu_slowdown_limit=math.inf)
    assert ds.attrs["measured_on"] == "1 image(s) on CPU, a 8x8 centre crop"
    assert json.loads(ds.attrs["dtypes_run"]) == ["bfloat16", "float16"]
    assert int(ds.attrs["declared_force_upcast"]) == 1  # diffusers' default config
    assert ds.attrs["force_upcast_vs_prediction"].startswith("declares upcasting")
    assert int((ds["nan_count"] + ds["inf_count"]).sum()) == 0
