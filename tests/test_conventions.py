"""Probe.from_module's conventions, categorical and point layers, binarized data, MNIST from its
own IDX files, and the TAESD / AutoencoderTiny layouts: closed forms on tiny models."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vaeprobe as vp
from vaeprobe.adapters.taesd import TinyAutoencoder
from vaeprobe.probe import (
    UndefinedAnalysisError,
    categorical_draw,
    categorical_kl,
    gaussian_kl,
)

IMAGES = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))


class Packed(torch.nn.Module):
    """A linear VAE whose encoder gives one tensor (mean, scale) packed as asked."""

    def __init__(self, packing: str, scale: str, output: str = "mean"):
        super().__init__()
        torch.manual_seed(1)
        self.enc, self.dec = torch.nn.Linear(16, 6), torch.nn.Linear(3, 16)
        self.packing, self.scale, self.output = packing, scale, output

    def moments(self, x):  # mean, logstd (B, 3)
        out = self.enc(x.flatten(1))
        return out[:, :3], 0.1 * out[:, 3:]

    def encode(self, x):
        mean, logstd = self.moments(x)
        scale = {"logvar": 2 * logstd, "logstd": logstd, "std": logstd.exp()}[self.scale]
        if self.packing == "tuple":
            return mean, scale
        if self.packing == "halves":
            return torch.cat([mean, scale], 1)
        return torch.stack([mean, scale], -1).flatten(1)  # interleaved

    def decode(self, z):
        logits = self.dec(z)
        return logits if self.output == "logits" else torch.sigmoid(logits)


@pytest.mark.parametrize("packing", ["tuple", "halves", "interleaved"])
@pytest.mark.parametrize("scale", ["logvar", "logstd", "std"])
def test_every_packing_and_scale_gives_the_same_posterior(packing, scale):
    model = Packed(packing, scale)
    probe = vp.Probe.from_module(model, (1, 4, 4), encoder_output=packing, scale=scale,
                                 device="cpu")
    draw = probe.encode(IMAGES, posterior="mean").draws[0]
    mean, logstd = model.moments(IMAGES.float() / 255)
    torch.testing.assert_close(draw.q_mean.flatten(1), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(draw.q_logstd.flatten(1), logstd, atol=1e-6, rtol=1e-6)
    zeros = torch.zeros_like(mean)
    torch.testing.assert_close(draw.kl.flatten(1), gaussian_kl(mean, logstd, zeros, zeros),
                               atol=1e-6, rtol=1e-6)


def test_mismatched_conventions_say_which_option_to_use():
    with pytest.raises(TypeError, match="encoder_output='halves' or 'interleaved'"):
        vp.Probe.from_module(Packed("halves", "logvar"), (1, 4, 4), device="cpu")
    with pytest.raises(TypeError, match="encoder_output='tuple'"):
        vp.Probe.from_module(Packed("tuple", "logvar"), (1, 4, 4), encoder_output="halves",
                             device="cpu")
    with pytest.raises(ValueError, match="scale='logvar'.*scale='logstd'.*abs\\(\\)"):
        probe = vp.Probe.from_module(Packed("tuple", "logvar"), (1, 4, 4), scale="std",
                                     device="cpu")
        probe.encode(IMAGES)
    with pytest.raises(ValueError, match="scale must be one of"):
        vp.Probe.from_module(Packed("tuple", "logvar"), (1, 4, 4), scale="var")
    with pytest.raises(ValueError, match="output_range"):
        vp.Probe.from_module(Packed("tuple", "logvar"), (1, 4, 4), decoder_output="logits",
                             output_range=(-1, 1))
    wrong = Packed("tuple", "logvar")
    wrong.dec = torch.nn.Linear(3, 9)
    with pytest.raises(ValueError, match="expected \\(4, 1, 4, 4\\)"):  # a dry run finds it
        vp.Probe.from_module(wrong, (1, 4, 4), device="cpu")


def test_logits_and_probabilities_give_one_bernoulli():
    binary = vp.data.binarize(IMAGES, "threshold")
    binary = torch.stack([binary[i] for i in range(len(IMAGES))])
    by_probability, by_logit = (
        vp.Probe.from_module(Packed("tuple", "logvar", output), (1, 4, 4), device="cpu",
                             likelihood="bernoulli", decoder_output=output)
        for output in ("probabilities", "logits"))
    values = [p.decode(p.encode(binary, posterior="mean")) for p in (by_probability, by_logit)]
    torch.testing.assert_close(values[0].mean, values[1].mean)
    torch.testing.assert_close(values[0].log_prob(binary), values[1].log_prob(binary),
                               atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="binarize"):
        values[0].log_prob(IMAGES)


def test_output_range_minus_one_to_one():
    class Signed(Packed):
        def decode(self, z):
            return 2 * torch.sigmoid(self.dec(z)) - 1

    unit, signed = (vp.Probe.from_module(model, (1, 4, 4), device="cpu", output_range=rng)
                    for model, rng in ((Packed("tuple", "logvar"), (0, 1)),
                                       (Signed("tuple", "logvar"), (-1, 1))))
    torch.testing.assert_close(unit.decode(unit.encode(IMAGES, posterior="mean")).mean,
                               signed.decode(signed.encode(IMAGES, posterior="mean")).mean)


def test_a_deterministic_encoder_is_a_point_posterior():
    class Autoencoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = torch.nn.Linear(16, 3), torch.nn.Linear(3, 16)

        def encode(self, x):
            return self.enc(x.flatten(1))

        def decode(self, z):
            return torch.sigmoid(self.dec(z))

    model = Autoencoder()
    probe = vp.Probe.from_module(model, (1, 4, 4), scale="none", device="cpu")
    assert probe.point_posterior and not probe.prior_is_generative
    latents = probe.encode(IMAGES, n_samples=2)
    draw = latents.draws[0]
    assert draw.distribution == "point" and torch.all(draw.q_logstd == -math.inf)
    torch.testing.assert_close(draw.z.flatten(1)[::2], model.enc(IMAGES.float().flatten(1) / 255))
    assert probe.decode(latents).mean.shape == (10, 1, 4, 4)
    for analysis in (lambda: vp.rate(probe, IMAGES, progress=False),
                     lambda: vp.samples(probe, 2, progress=False),
                     latents.kl_per_layer, latents.log_q):
        with pytest.raises(UndefinedAnalysisError, match="point posterior|deterministic"):
            analysis()
    with pytest.raises(ValueError, match="leave encoder_output='tuple'"):
        vp.Probe.from_module(model, (1, 4, 4), scale="none", encoder_output="halves")


def test_categorical_kl_and_draws():
    logits = torch.randn(4, 5, 1, 1, generator=torch.Generator().manual_seed(2))
    q, p = logits.log_softmax(1), torch.full((4, 5, 1, 1), -math.log(5))
    expected = (q.exp() * (q - p)).sum(1).flatten()  # KL to uniform = log K - H(q)
    torch.testing.assert_close(categorical_kl(q, p).sum(1).flatten(), expected)
    torch.testing.assert_close(expected, math.log(5) + (q.exp() * q).sum(1).flatten())
    mode = categorical_draw(q, torch.zeros_like(q))
    assert torch.equal(mode.argmax(1), q.argmax(1))
    noise = torch.randn(20000, 5, 1, 1, generator=torch.Generator().manual_seed(3))
    draws = categorical_draw(q[:1].expand(20000, -1, -1, -1), noise)
    frequencies = draws.mean(0).flatten()
    assert torch.allclose(frequencies.double(), q[0].exp().flatten().double(), atol=0.015)


def test_binarize_threshold_dynamic_and_by_name():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    threshold = vp.data.binarize(images, "threshold")[0]
    assert torch.equal(threshold.flatten() == 255, torch.arange(256) >= 128)
    dynamic = vp.data.binarize(images.expand(400, -1, -1, -1).contiguous(), "dynamic", seed=1)
    first = torch.stack([dynamic[i] for i in range(400)]).float() / 255
    assert abs(float(first.mean()) - 127.5 / 255) < 0.01  # E[x] = grey / 255
    assert torch.equal(dynamic[7], dynamic[7]) and not torch.equal(dynamic[7], dynamic[8])
    again = vp.data.binarize(images.expand(400, -1, -1, -1).contiguous(), "dynamic", seed=1)
    assert torch.equal(again[5], dynamic[5])  # seeded per image index
    named = vp.data.load("digits8:test,binarize=dynamic")
    assert named.name == "digits8:test,binarize=dynamic(seed=0)" and len(named) == 297
    with pytest.raises(ValueError, match="binarize must be one of"):
        vp.data.binarize(images, "otsu")


def test_mnist_split_from_its_own_idx_files(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    header = np.array([0x803, 3, 28, 28], dtype=">u4").tobytes()
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with gzip.open(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + pixels.tobytes())
    test = vp.data.load("mnist:test", root=tmp_path)
    assert test.name == "mnist:test" and np.array_equal(test.images[:, 0].numpy(), pixels)
    with pytest.raises(FileNotFoundError, match="mnist"):
        vp.data.load("mnist:train", root=tmp_path)


def _tiny_state(seed: int, channels: int, gn: bool):
    torch.manual_seed(seed)
    model = TinyAutoencoder(channels, gn)
    return model, {k: v.half() for k, v in model.encoder.state_dict().items()}, \
        {k: v.half() for k, v in model.decoder.state_dict().items()}


def test_taesd_pair_and_autoencoder_tiny_folder_agree(tmp_path):
    model, encoder, decoder = _tiny_state(0, 4, False)
    pair = tmp_path / "pair"
    pair.mkdir()
    torch.save(encoder, pair / "taesd_encoder.pth")
    torch.save(decoder, pair / "taesd_decoder.pth")
    folder = tmp_path / "tiny"
    folder.mkdir()
    state = {f"encoder.layers.{k}": v for k, v in encoder.items()}
    for key, value in decoder.items():  # diffusers' decoder has no clamp layer: index - 1
        index, _, rest = key.partition(".")
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny",
                                                    "latent_channels": 4}))
    images = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    means = []
    for path in (pair, pair / "taesd_decoder.pth", folder):
        probe = vp.load(path, image_size=(16, 24), device="cpu")
        assert probe.source["format"] == "taesd" and probe.layers[0].resolution == (2, 3)
        means.append(probe.decode(probe.encode(images)).mean)
    for mean in means[1:]:
        torch.testing.assert_close(mean, means[0])
    with pytest.raises(ValueError, match="divisible by 8"):
        vp.load(pair, image_size=20)


def test_taesd_name_and_shapes_must_agree(tmp_path):
    _, encoder, decoder = _tiny_state(0, 16, False)
    torch.save(encoder, tmp_path / "taef2_encoder.pth")
    torch.save(decoder, tmp_path / "taef2_decoder.pth")
    with pytest.raises(vp.io.CheckpointError, match="named taef2"):
        vp.load(tmp_path, image_size=16)


def test_disvae_and_jointvae_folders_at_64x64(tmp_path):
    from vaeprobe.adapters.disvae import GAUSSIAN_SIGMA, BurgessVAE
    from vaeprobe.adapters.jointvae import JointVAE

    torch.manual_seed(0)
    burgess = BurgessVAE((3, 64, 64), 6)
    disvae = tmp_path / "disvae"
    disvae.mkdir()
    torch.save(burgess.state_dict(), disvae / "model.pt")
    specs = {"model_type": "Burgess", "img_size": [3, 64, 64], "latent_dim": 6,
             "rec_dist": "gaussian", "loss": "betaH"}
    (disvae / "specs.json").write_text(json.dumps(specs))
    joint = JointVAE((3, 64, 64), 4, [3, 2])
    jointvae = tmp_path / "jointvae"
    jointvae.mkdir()
    torch.save(joint.state_dict(), jointvae / "model.pt")
    (jointvae / "specs.json").write_text(json.dumps(
        {"dataset": "celeba", "latent_spec": {"cont": 4, "disc": [3, 2]}}))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    probe = vp.load(disvae, device="cpu")
    assert probe.source["format"] == "disvae" and probe.sigma == GAUSSIAN_SIGMA
    packed = burgess.encoder(images.float() / 255).reshape(2, 6, 2)  # interleaved pairs
    torch.testing.assert_close(probe.encode(images).draws[0].q_mean.flatten(1), packed[..., 0])
    other = vp.load(jointvae, device="cpu")
    assert [(layer.name, layer.channels) for layer in other.layers] == [
        ("cont", 4), ("disc0", 3), ("disc1", 2)]
    latents = other.encode(images, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert other.decode(latents).mean.shape == (6, 3, 64, 64)
    prior = other.sample_prior(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.draws[2].z.sum(1).flatten(), torch.ones(5))
    specs["rec_dist"] = "laplace"
    (disvae / "specs.json").write_text(json.dumps(specs))
    assert vp.load(disvae, device="cpu").likelihood_kind == "none"


def test_cifar10_test_split_alone(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": pixels.reshape(4, -1), "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # our stand-in files have other checksums than the real ones
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": None})
    test = vp.data.load("cifar10:test", root=tmp_path)
    assert np.array_equal(test.images.numpy(), pixels)
    with pytest.raises(FileNotFoundError, match="cifar10"):
        vp.data.load("cifar10:train", root=tmp_path)
