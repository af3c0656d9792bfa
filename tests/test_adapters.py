"""Third-party formats: sniffing, options, parity with the original code, refusals, security."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import adapters, io
from vaeprobe.adapters import Format, FormatError
from vaeprobe.probe import UndefinedAnalysisError
from vaeprobe.random import image_generators

FIXTURES = Path(__file__).parent / "fixtures"
DIFFUSERS = FIXTURES / "diffusers" / "tiny_vae"
PYTHAE = FIXTURES / "pythae" / "vae"
TEST_NETS = dict(feature_extractor="random-convnet-TEST-ONLY",
                 prc_extractor="random-convnet-TEST-ONLY", lpips_trunk="random-TEST-ONLY")


class TinyVAE(torch.nn.Module):
    """The twenty-line VAE a user writes: encode -> (mean, logvar), decode -> mean."""

    def __init__(self, dims: int = 64, latent: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(dims, 2 * latent)
        self.decoder = torch.nn.Linear(latent, dims)

    def encode(self, x):
        return self.encoder(x.flatten(1)).chunk(2, dim=1)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))


def _images(shape, n=6, seed=0):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def diffusers_probe():
    return vp.load(DIFFUSERS, device="cpu")


@pytest.fixture(scope="module")
def pythae_probe():
    return vp.load(PYTHAE, device="cpu")


@pytest.fixture(scope="module")
def module_probe():
    return vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), device="cpu")


# ---------------------------------------------------------------------------------------------
# loading: sniffing, options, errors


def test_formats_are_sniffed_from_the_files(tmp_path):
    assert adapters.sniff_format(DIFFUSERS) == "diffusers"
    assert adapters.sniff_format(DIFFUSERS / "config.json") == "diffusers"
    assert adapters.sniff_format(DIFFUSERS / "diffusion_pytorch_model.safetensors") == "diffusers"
    assert adapters.sniff_format(PYTHAE / "model.pt") == "pythae"
    assert adapters.sniff_format(PYTHAE) == "pythae"
    (tmp_path / "ckpt_step00000010.pt").write_bytes(b"")
    assert adapters.sniff_format(tmp_path) == "vaeprobe"
    for name in ("cifar10-iter-1050000-model-ema.th", "imagenet32-iter-1-model.th"):
        (tmp_path / name).write_bytes(b"")
        assert adapters.sniff_format(tmp_path / name) == "vdvae"
    pipeline = tmp_path / "pipeline"
    (pipeline / "vae").mkdir(parents=True)
    for file in DIFFUSERS.iterdir():
        (pipeline / "vae" / file.name).write_bytes(file.read_bytes())
    assert adapters.sniff_format(pipeline) == "diffusers"


def test_unknown_folder_wrong_format_and_bad_options_are_clear_errors(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(FormatError, match=r"cannot tell the format.*'diffusers'.*'pythae'.*"
                                          r"'vdvae'.*format="):
        vp.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        vp.load(tmp_path / "missing")
    with pytest.raises(FormatError, match=r"looks like a 'pythae' checkpoint, not 'diffusers'"):
        vp.load(PYTHAE, format="diffusers")
    with pytest.raises(FormatError, match=r"unknown format 'onnx'; known formats: 'diffusers'"):
        vp.load(PYTHAE, format="onnx")
    with pytest.raises(FormatError, match=r"unknown option\(s\) \['image_sise'\] for format "
                                          r"'diffusers'; its options: \['image_size', 'weights', "
                                          r"'tile_size', 'pad'\]"):
        vp.load(DIFFUSERS, image_sise=16)
    with pytest.raises(FormatError, match=r"unknown option\(s\) \['hparams'\].*'pixel_range'"):
        vp.load(PYTHAE, hparams="cifar10")


def _needs_level(path, *, level, scale=1.0, device=None):
    raise AssertionError("never opened: its option check fails first")


def test_a_missing_required_option_names_it():
    entry = Format(f"{__name__}:_needs_level", lambda path: True, "test files")
    assert entry.options() == (["level", "scale"], ["level"])
    with pytest.raises(FormatError, match=r"format 'x' needs option\(s\) \['level'\].*"
                                          r"--option level=..."):
        adapters._check_options("x", entry, {"scale": 2.0})


def test_registry_validates_format_entries():
    with pytest.raises(TypeError, match="must be registered as a Format"):
        adapters.formats.register("bad", lambda path: None)
    with pytest.raises(ValueError, match="package.module:function"):
        adapters.formats.register("bad", Format("no colon", lambda path: False, ""))
    assert "bad" not in adapters.formats


def test_provenance_carries_format_options_and_file_hashes(pythae_probe, digits_test):
    ds = vp.rate(pythae_probe, digits_test, n_images=8, progress=False)
    assert ds.attrs["format"] == "pythae" and json.loads(ds.attrs["options"]) == {}
    hashes = json.loads(ds.attrs["files_sha256"])
    assert hashes == {name: io.sha256_file(PYTHAE / name)
                      for name in ("model.pt", "model_config.json")}
    assert ds.attrs["checkpoint_sha256"] == hashes["model.pt"]
    probe = vp.load(DIFFUSERS, device="cpu", image_size=[32, 16])
    assert probe.image_shape == (3, 32, 16) and probe.layers[0].resolution == (16, 8)
    assert json.loads(probe.source["options"]) == {"image_size": [32, 16]}
    assert probe.source["scaling_factor"] == 0.5 and probe.source["shift_factor"] == 0.1


# ---------------------------------------------------------------------------------------------
# parity with the original code


def test_diffusers_rate_and_mean_reconstruction_equal_diffusers(diffusers_probe):
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import load_file

    config = json.loads((DIFFUSERS / "config.json").read_text())
    vae = diffusers.AutoencoderKL.from_config(config).eval()
    vae.load_state_dict(load_file(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    x = _images((3, 16, 16))
    with torch.no_grad():
        x11 = x.float() / 127.5 - 1
        reference_kl = vae.encode(x11).latent_dist.kl()
        reference_mode = vae(x11).sample  # diffusers reconstructs from the posterior mode
    latents = diffusers_probe.encode(x, posterior="mean")
    torch.testing.assert_close(latents.kl_per_layer()[:, 0], reference_kl, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(diffusers_probe.decode(latents).mean,
                               ((reference_mode + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    ds = vp.rate(diffusers_probe, x, progress=False)
    np.testing.assert_allclose(float(ds["total_rate"]), float(reference_kl.mean()), rtol=1e-5)


def test_pythae_kl_and_reconstruction_equal_pythae(pythae_probe):
    expected = json.loads((FIXTURES / "pythae" / "expected.json").read_text())
    x = torch.tensor(expected["images"], dtype=torch.uint8)
    latents = pythae_probe.encode(x, posterior="mean")
    draw = latents.draws[0]
    assert draw.q_mean.shape == (4, 2, 1, 1) and pythae_probe.layers[0].channels == 2
    torch.testing.assert_close(draw.q_mean.flatten(1), torch.tensor(expected["mu"]))
    torch.testing.assert_close(latents.kl_per_layer()[:, 0], torch.tensor(expected["kl"]),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pythae_probe.decode(latents).mean,
                               torch.tensor(expected["reconstruction"]), rtol=1e-5, atol=1e-6)


def test_module_probe_gaussian_and_bernoulli_likelihoods():
    model = TinyVAE()
    probe = vp.Probe.from_module(model, image_shape=(1, 8, 8), likelihood="gaussian",
                                 sigma=0.1, device="cpu")
    x = _images((1, 8, 8))
    latents = probe.encode(x, posterior="mean")
    with torch.no_grad():
        mean, logvar = model.encode(x.float() / 255)
        decoded = model.decode(mean).reshape(-1, 1, 8, 8)
    torch.testing.assert_close(latents.draws[0].q_logstd.flatten(1), 0.5 * logvar)
    centre = x.double() / 255  # discretized Gaussian: mass of each level's bin of width 1/255
    normal = torch.distributions.Normal(decoded.double(), 0.1)
    bins = normal.cdf(centre + 0.5 / 255) - normal.cdf(centre - 0.5 / 255)
    bins = torch.where(x == 0, normal.cdf(centre + 0.5 / 255), bins)
    bins = torch.where(x == 255, 1 - normal.cdf(centre - 0.5 / 255), bins)
    torch.testing.assert_close(probe.decode(latents).log_prob(x), bins.log().flatten(1).sum(1))
    binary = vp.Probe.from_module(model, image_shape=(1, 8, 8), likelihood="bernoulli",
                                  device="cpu")
    x01 = (x > 127).to(torch.uint8) * 255
    p = binary.decode(binary.encode(x01, posterior="mean")).mean.double()
    expected = torch.where(x01 == 255, p.log(), (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(binary.decode(binary.encode(x01, posterior="mean")).log_prob(x01),
                               expected)
    with pytest.raises(ValueError, match="binary images"):
        binary.decode(binary.encode(x, posterior="mean")).log_prob(x)
    ds = vp.iwae(probe, x, k=4, progress=False)  # a likelihood: IWAE is defined
    assert np.isfinite(ds["bpd"].values).all()


def test_module_probe_encodes_once_across_chunks_with_the_draws_of_one_pass():
    model = TinyVAE()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    probe = vp.Probe.from_module(model, image_shape=(1, 8, 8), device="cpu",
                                 likelihood="gaussian", sigma=0.1)
    calls.clear()  # from_module runs the encoder once to learn the latent shape
    x = _images((1, 8, 8), n=3)
    chunks = list(probe.encode_chunks(x, 5, 2, image_generators(0, range(3))))
    assert [c.n_samples for c in chunks] == [2, 2, 1] and len(calls) == 1
    whole = probe.encode(x, 5, image_generators(0, range(3)))
    joined = torch.cat([c.draws[0].z.reshape(3, c.n_samples, -1) for c in chunks], 1)
    torch.testing.assert_close(joined, whole.draws[0].z.reshape(3, 5, -1), rtol=0, atol=0)
    a = vp.iwae(probe, x, k=5, chunk=2, progress=False)["log_likelihood"]
    b = vp.iwae(probe, x, k=5, chunk=5, progress=False)["log_likelihood"]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_module_probe_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match=r"no encode\(\) method"):
        vp.Probe.from_module(torch.nn.Linear(2, 2), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="needs sigma > 0"):
        vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), likelihood="gaussian")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        vp.Probe.from_module(TinyVAE(), image_shape=(1, 8, 8), likelihood="laplace")


# ---------------------------------------------------------------------------------------------
# every format: what runs and what refuses


@pytest.mark.parametrize("name", ["diffusers_probe", "pythae_probe", "module_probe"])
def test_rate_spectrum_and_reconstructions_run_iwae_and_priors_refuse(name, request):
    probe = request.getfixturevalue(name)
    x = _images(probe.image_shape, n=12)
    rate = vp.rate(probe, x, progress=False)
    assert rate.sizes["layer"] == 1 and float(rate["total_rate"]) > 0
    assert rate["kl_analytic"].values.tolist() == [1]
    spectrum = vp.spectrum(probe, x, n_images=12, progress=False)
    assert np.isfinite(spectrum["power_reconstruction"].values).all()
    quality = vp.sample_quality(probe, x, n_images=12, kinds=["reconstruction_mean"],
                                progress=False, kid_subset_size=6, n_diversity_pairs=4, **TEST_NETS)
    assert np.isfinite(float(quality["lpips"].sel(kind="reconstruction_mean")))
    with pytest.raises(UndefinedAnalysisError, match="no likelihood"):
        vp.iwae(probe, x, k=2, progress=False)
    with pytest.raises(UndefinedAnalysisError, match="no likelihood"):
        vp.sample_quality(probe, x, n_images=12, kinds=["reconstruction_stochastic"],
                          progress=False, **TEST_NETS)
    if probe.prior_is_generative:  # pythae and plain modules: N(0, I) is their prior
        quality = vp.sample_quality(probe, x, n_images=12, kinds=["mean"], progress=False,
                                    kid_subset_size=6, n_diversity_pairs=4, **TEST_NETS)
        assert np.isfinite(float(quality["fid"].sel(kind="mean")))
    else:
        with pytest.raises(UndefinedAnalysisError, match="prior is not the generative"):
            vp.sample_quality(probe, x, n_images=12, kinds=["mean"], progress=False, **TEST_NETS)


# ---------------------------------------------------------------------------------------------
# security: pickles in a format's place are refused without running them


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            (target / file.name).write_bytes(file.read_bytes())
    return target


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(path))
    yield path
    assert not path.exists(), "a pickle ran"


def test_diffusers_pickles_are_never_opened(tmp_path, marker):
    folder = _copy(DIFFUSERS, tmp_path / "vae")
    weights = folder / "diffusion_pytorch_model.safetensors"
    torch.save({"w": _Evil()}, weights)  # a pickle where the safetensors should be
    with pytest.raises(io.CheckpointError, match=f"cannot read safetensors file {weights}"):
        vp.load(folder)
    weights.unlink()
    torch.save({"w": _Evil()}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model.bin'\] are pickles"):
        vp.load(folder, format="diffusers")


def test_pythae_pickles_are_never_opened(tmp_path, marker):
    folder = _copy(PYTHAE, tmp_path / "vae")
    torch.save({"model_state_dict": {"w": _Evil()}}, folder / "model.pt")
    with pytest.raises(io.CheckpointError, match=f"refused to load {folder / 'model.pt'}"):
        vp.load(folder)
    folder = _copy(PYTHAE, tmp_path / "custom")
    config = json.loads((folder / "model_config.json").read_text())
    (folder / "model_config.json").write_text(json.dumps({**config,
                                                          "uses_default_encoder": False}))
    torch.save(_Evil(), folder / "encoder.pkl")
    with pytest.raises(ValueError, match=f"custom encoder, stored as {folder / 'encoder.pkl'}.*"
                                         f"never opens.*encoder=my_encoder"):
        vp.load(folder)


def test_pythae_custom_networks_come_from_trusted_modules(tmp_path):
    """A model saved with custom networks opens with encoder= / decoder= given in code."""

    class TrustedEncoder(torch.nn.Module):  # pythae's forward contract, the user's own code
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(64, 512),
                                                                   torch.nn.ReLU())])
            self.embedding, self.log_var = torch.nn.Linear(512, 2), torch.nn.Linear(512, 2)

        def forward(self, x):
            hidden = self.layers[0](x.flatten(1))
            return {"embedding": self.embedding(hidden),
                    "log_covariance": self.log_var(hidden)}

    folder = _copy(PYTHAE, tmp_path / "custom")
    config = json.loads((folder / "model_config.json").read_text())
    (folder / "model_config.json").write_text(json.dumps({**config,
                                                          "uses_default_encoder": False}))
    probe = vp.load(folder, device="cpu", encoder=TrustedEncoder())
    expected = json.loads((FIXTURES / "pythae" / "expected.json").read_text())
    x = torch.tensor(expected["images"], dtype=torch.uint8)
    latents = probe.encode(x, posterior="mean")
    torch.testing.assert_close(latents.kl_per_layer()[:, 0], torch.tensor(expected["kl"]),
                               rtol=1e-5, atol=1e-6)
    assert json.loads(probe.source["options"])["encoder"].endswith("test_adapters.TrustedEncoder>")


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_rate_and_spectrum_on_third_party_formats(tmp_path, capsys):
    from vaeprobe.cli import main, parse_options

    assert parse_options(["hparams=cifar10", "image_size=16", "pixel_range=[-1,1]", "ema=false"]) \
        == {"hparams": "cifar10", "image_size": 16, "pixel_range": [-1, 1], "ema": False}
    out = tmp_path / "rate.nc"
    assert main(["rate", str(DIFFUSERS), "--data", "patches16:test", "--n-images", "8",
                 "--format", "diffusers", "--option", "image_size=16", "--posterior", "mean",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "total rate" in capsys.readouterr().out
    saved = vp.open_results(out)
    assert saved.attrs["format"] == "diffusers" and json.loads(saved.attrs["options"]) == {
        "image_size": 16}
    assert json.loads(saved.attrs["parameters"])["posterior"] == "mean"
    assert main(["spectrum", str(PYTHAE), "--data", "digits8:test", "--n-images", "16",
                 "--device", "cpu", "--out", str(tmp_path / "spectrum.nc")]) == 0
    spectrum = vp.open_results(tmp_path / "spectrum.nc")
    assert spectrum.attrs["format"] == "pythae" and "files_sha256" in spectrum.attrs
    assert main(["rate", str(PYTHAE), "--data", "digits8:test", "--option",
                 "hparams=cifar10"]) == 2
    assert "unknown option(s) ['hparams'] for format 'pythae'" in capsys.readouterr().err
    assert main(["iwae", str(DIFFUSERS), "--data", "patches16:test", "-k", "2"]) == 2
    assert "no likelihood" in capsys.readouterr().err
