"""Big and non-square images: folder resize modes, the sizes a Probe takes, native-size data."""

import json
from pathlib import Path

import numpy as np
import pytest
import realworld
import torch
import torch.nn.functional as F

import vaeprobe as vp
from vaeprobe import data
from vaeprobe.adapters.diffusers import AutoencoderKL, AutoencoderKLConfig, AutoencoderKLProbe

DIFFUSERS = Path(__file__).parent / "fixtures" / "diffusers" / "tiny_vae"


def _gradient(width, height, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path)


def _box(pixels, size_hw, box=None):
    """The oracle: PIL's box filter on the crop box, as (C, H, W)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if box is not None:
        image = image.crop(box)
    resized = np.array(image.resize(size_hw[::-1], Image.BOX))
    return torch.from_numpy(resized).permute(2, 0, 1)


def test_folder_resize_modes(tmp_path):
    wide = _gradient(30, 20)  # W x H = 30 x 20
    _save(tmp_path / "a.png", wide)
    crop = data.load(f"folder:{tmp_path}", size=8)  # default: centre crop
    torch.testing.assert_close(crop[0], _box(wide, (8, 8), (5, 0, 25, 20)))
    wide_crop = data.load(f"folder:{tmp_path},resize=crop", size=(8, 16))  # aspect 1:2
    torch.testing.assert_close(wide_crop[0], _box(wide, (8, 16), (0, 2, 30, 17)))
    squash = data.load(f"folder:{tmp_path},resize=squash", size=(8, 8))
    torch.testing.assert_close(squash[0], _box(wide, (8, 8)))
    native = data.load(f"folder:{tmp_path},resize=none", size=8)
    torch.testing.assert_close(native[0], torch.from_numpy(wide).permute(2, 0, 1))
    assert data.dataset_name(native) == f"folder:{tmp_path},resize=none"
    assert data.dataset_name(crop) == f"folder:{tmp_path}"


def test_native_size_needs_one_size_or_one_orientation(tmp_path):
    wide, tall = _gradient(30, 20, 0), _gradient(20, 30, 1)
    _save(tmp_path / "a.png", wide)
    _save(tmp_path / "b.png", tall)
    with pytest.raises(ValueError, match=r"a\.png is 20x30 and b\.png is 30x20 \(HxW\); add "
                                         r",orient=landscape"):
        data.load(f"folder:{tmp_path},resize=none")
    turned = data.load(f"folder:{tmp_path},resize=none,orient=landscape")
    assert turned.images.shape == (2, 3, 20, 30)
    # a quarter turn counter-clockwise, as np.rot90
    torch.testing.assert_close(turned[1], torch.from_numpy(
        np.ascontiguousarray(np.rot90(tall))).permute(2, 0, 1))
    assert data.load(f"folder:{tmp_path},resize=none,orient=portrait").images.shape[2:] == (30, 20)


def test_folder_options_are_checked(tmp_path):
    _save(tmp_path / "a.png", _gradient(8, 8))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['size'\].*options: resize, "
                                         r"orient, filter"):
        data.load(f"folder:{tmp_path},size=3")
    with pytest.raises(ValueError, match="resize must be one of crop, squash, none, got 'fit'"):
        data.load(f"folder:{tmp_path},resize=fit")
    with pytest.raises(ValueError, match=r"npz:PATH takes no options"):
        data.load(f"npz:{tmp_path}/x.npz,resize=none")
    assert data.split_options("dir,x/a.png") == ("dir,x/a.png", {})  # a comma in a path


def test_squash_with_bilinear_is_how_mnist_was_resized_to_32(tmp_path):
    """``resize=squash,filter=bilinear`` reproduces ../shared/realworld's MNIST at 32x32 (PIL
    bilinear, as disentangling-vae and JointVAE trained) from the 28x28 digits."""
    from PIL import Image

    digits = np.load(realworld.path("mnist", "mnist_test.npz"))["images"][:5, 0]
    for index, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / f"{index}.png")
    name = f"folder:{tmp_path},resize=squash,filter=bilinear"
    resized = data.as_dataset(name, image_shape=(1, 32, 32))
    expected = np.load(realworld.path("mnist", "mnist_test_32.npz"))["images"][:5]
    np.testing.assert_array_equal(resized.images.numpy(), expected)
    assert data.dataset_name(resized) == name


def test_probes_say_which_sizes_they_take(tiny_run):
    diffusers = vp.load(DIFFUSERS, device="cpu")
    assert diffusers.downsampling == 2 and diffusers.size_multiple == 2
    assert diffusers.accepted_sizes() == "any height and width divisible by 2"
    assert diffusers.at_image_size(24, 40).layers[0].resolution == (12, 20)
    hvae = vp.load(tiny_run, device="cpu")
    side = hvae.image_shape[1]
    assert hvae.size_multiple is None and hvae.at_image_size(side, side) is hvae
    assert hvae.downsampling == side // min(info.resolution[0] for info in hvae.layers)
    with pytest.raises(ValueError, match=rf"takes only {side}x{side} \(HxW\) images, not "
                                         rf"{side}x{2 * side}.*resize=crop"):
        hvae.at_image_size(side, 2 * side)
    with pytest.raises(ValueError, match=r"expects \(.*\) \(C, H, W\) \(only"):
        vp.rate(hvae, torch.zeros((2, hvae.image_shape[0], side, 2 * side), dtype=torch.uint8))
    fixtures = Path(__file__).parent / "fixtures"
    vdvae = vp.load(fixtures / "vdvae" / "latest-model-ema.th",
                    hparams=str(fixtures / "vdvae" / "hparams.json"), device="cpu")
    assert vdvae.size_multiple is None
    assert vdvae.downsampling == vdvae.image_shape[1] // vdvae.layers[0].resolution[0]
    pythae = vp.load(fixtures / "pythae" / "vae", device="cpu")  # flat latents
    assert pythae.size_multiple is None and pythae.downsampling is None
    assert pythae.accepted_sizes() == "only 8x8 (HxW) images"


def test_a_convolutional_probe_takes_the_data_size():
    probe = vp.load(DIFFUSERS, device="cpu")  # sample_size 16
    x = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    ds = vp.rate(probe, x, progress=False)
    assert json.loads(ds.attrs["image_size"]) == [24, 40]
    assert list(ds.layer_resolution.values) == ["12x20"]
    sized = vp.rate(vp.load(DIFFUSERS, device="cpu", image_size=[24, 40]), x, progress=False)
    np.testing.assert_allclose(ds.rate.values, sized.rate.values, rtol=1e-6)
    with pytest.raises(ValueError, match=r"25x40 \(HxW\).*divisible by 2.*nearest valid sizes: "
                                         r"24x40, 26x40.*pad='reflect'"):
        vp.rate(probe, torch.zeros((1, 3, 25, 40), dtype=torch.uint8), progress=False)


def test_reflect_padding_is_cropped_back():
    probe = vp.load(DIFFUSERS, device="cpu", pad="reflect").at_image_size(25, 41)
    assert probe.layers[0].resolution == (13, 21) and probe.source["padded_size"] == "[26, 42]"
    x = torch.randint(0, 256, (2, 3, 25, 41), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    mean = probe.decode(probe.encode(x, posterior="mean")).mean
    # the oracle: pad by hand, reconstruct at the padded size, crop
    padded = vp.load(DIFFUSERS, device="cpu").at_image_size(26, 42)
    x11 = F.pad(x.float() / 127.5 - 1, (0, 1, 0, 1), mode="reflect")
    with torch.no_grad():
        z, _ = padded.model.moments(x11)
        expected = ((padded.model.decode(z) + 1) / 2).clamp(0, 1)[:, :, :25, :41]
    torch.testing.assert_close(mean, expected, rtol=0, atol=1e-6)
    ds = vp.rate(probe, x, progress=False)
    assert ds.attrs["pad"] == "reflect" and ds.mse.attrs["units"]


def _f8_vae() -> AutoencoderKLProbe:
    """A small random AutoencoderKL with SD's downsampling (f = 8) and no attention: cheap at
    768x512."""
    config = AutoencoderKLConfig(block_out_channels=(4, 4, 4, 4), norm_num_groups=2,
                                 down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                                 mid_block_add_attention=False)
    torch.manual_seed(0)
    return AutoencoderKLProbe(AutoencoderKL(config), (32, 32), "cpu", {"checkpoint": "f8"})


def test_kodak_at_native_768x512():
    from PIL import Image

    kodak = realworld.path("kodak")
    name = f"folder:{kodak},resize=none,orient=landscape"
    ds = vp.rate(_f8_vae(), name, n_images=2, seed=0, batch_size=1, posterior="mean",
                 progress=False)
    assert json.loads(ds.attrs["image_size"]) == [512, 768]
    assert list(ds.layer_resolution.values) == ["64x96"] and ds.attrs["dataset"] == name
    # the oracle: the same images read by hand (portraits turned), through the model at 512x768
    chosen = data.select(range(24), 2, seed=0).tolist()
    files = sorted(kodak.glob("*.png"))
    pixels = []
    for index in chosen:
        array = np.array(Image.open(files[index]).convert("RGB"))
        pixels.append(np.rot90(array) if array.shape[0] > array.shape[1] else array)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(pixels))).permute(0, 3, 1, 2)
    expected = vp.rate(_f8_vae().at_image_size(512, 768), x.contiguous(), batch_size=1,
                       posterior="mean", progress=False)
    np.testing.assert_allclose(ds.rate.values, expected.rate.values, rtol=1e-6)
    np.testing.assert_allclose(ds.distortion.values, expected.distortion.values, rtol=1e-6)


def test_taef2_reconstructs_kodim01_at_native_size_as_measured_independently(tmp_path):
    """TAEF2 (a tiny autoencoder, f = 8) on kodim01 at its full 768x512: 27.2 dB, the PSNR
    measured with its own code (../shared/realworld/README.md)."""
    (tmp_path / "kodim01.png").symlink_to(realworld.path("kodak", "kodim01.png"))
    probe = vp.load(realworld.path("models", "taef2"), device="cpu")  # image_size 512
    assert probe.size_multiple == 8 and probe.downsampling == 8
    ds = vp.spectrum(probe, f"folder:{tmp_path},resize=none", n_images=1, batch_size=1,
                     n_preview=1, progress=False)
    assert json.loads(ds.attrs["image_size"]) == [512, 768]
    assert -10 * np.log10(float(ds.mse.values[0])) == pytest.approx(27.2, abs=0.05)
