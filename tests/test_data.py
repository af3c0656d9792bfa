import hashlib

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import _patches, data


def test_patches32_sizes_and_types():
    test, train = data.load("patches32", split="test"), data.load("patches32:train")
    assert len(test) >= 2000 and len(train) >= 20000
    assert test[0].shape == (3, 32, 32) and test[0].dtype == torch.uint8


@pytest.mark.parametrize("size", [16, 64])
def test_other_patch_sizes(size):
    ds = data.load(f"patches{size}:test")
    assert tuple(ds[0].shape) == (3, size, size) and len(ds) > 100


def test_split_is_by_photograph_and_no_test_patch_is_in_train():
    train_photos = set(_patches._patch_recipe(32, "train")["photos"])
    test_photos = set(_patches._patch_recipe(32, "test")["photos"])
    assert not train_photos & test_photos and train_photos | test_photos == set(_patches.PHOTOS)
    def rows(name):
        return {hashlib.sha1(p.tobytes()).digest() for p in data.load(name).images.numpy()}
    assert not rows("patches32:train") & rows("patches32:test")


def test_build_is_deterministic():
    first = data.build_patches(32, "test")
    np.testing.assert_array_equal(first, data.build_patches(32, "test"))


def test_cache_is_reused_then_rebuilt_when_hash_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path))
    built = data.load_patches(16, "test")
    [cached] = list(tmp_path.glob("patches16-test-*.npz"))
    calls = []
    original = _patches.build_patches  # load_patches lives in vaeprobe._patches
    monkeypatch.setattr(_patches, "build_patches", lambda *a: calls.append(a) or original(*a))
    np.testing.assert_array_equal(data.load_patches(16, "test"), built)
    assert calls == []  # reused
    np.savez(cached, images=built[:5], sha256="0" * 64)  # stored hash no longer matches
    np.testing.assert_array_equal(data.load_patches(16, "test"), built)
    assert len(calls) == 1  # rebuilt


def test_digits8():
    train, test = data.load("digits8"), data.load("digits8:test")
    assert len(train) + len(test) == 1797 and tuple(train[0].shape) == (1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_npz_nhwc_and_nchw(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", images=images)
    np.savez(tmp_path / "nchw.npz", images=images.transpose(0, 3, 1, 2))
    a, b = data.load(f"npz:{tmp_path}/nhwc.npz"), data.load(f"npz:{tmp_path}/nchw.npz")
    assert torch.equal(a.images, b.images) and tuple(a[0].shape) == (3, 8, 8)
    np.savez(tmp_path / "bad.npz", pixels=images)
    with pytest.raises(KeyError, match="'images'"):
        data.load(f"npz:{tmp_path}/bad.npz")


def test_folder_centre_crops_and_resizes(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 30), (0, 0, 255)).save(tmp_path / "sub" / "b.jpg")
    ds = data.load(f"folder:{tmp_path}", size=16)
    assert len(ds) == 2 and tuple(ds[0].shape) == (3, 16, 16)
    assert int(ds[0][0].min()) == 255 and int(ds[0][2].max()) == 0
    with pytest.raises(FileNotFoundError, match="no image files"):
        data.load(f"folder:{tmp_path}/sub/none")


def test_as_dataset_accepts_three_forms_and_labels():
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert len(data.as_dataset(images)) == 5
    assert len(data.as_dataset("digits8:test")) == 297
    pairs = torch.utils.data.TensorDataset(images, torch.arange(5))
    assert torch.equal(data.as_dataset(pairs)[2], images[2])


@pytest.mark.parametrize("bad, message", [
    (torch.rand(4, 3, 8, 8), "to_uint8"),
    (torch.zeros(4, 8, 8, 3, dtype=torch.uint8), "permute"),
    (torch.zeros(4, 2, 8, 8, dtype=torch.uint8), "1 or 3 channels"),
    (torch.zeros(8, 8, dtype=torch.uint8), r"\(N, C, H, W\)"),
    ([1, 2, 3], "dataset name"),
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "empty"),
])
def test_bad_data_is_rejected_with_the_fix(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        data.as_dataset(bad)


def test_image_shape_check_and_unknown_names():
    with pytest.raises(ValueError, match=r"expects \(3, 32, 32\)"):
        data.as_dataset("digits8", image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        data.load("nope")
    with pytest.raises(ValueError, match="split"):
        data.load("digits8", split="valid")


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load("svhn", split="test", root=tmp_path)
    with pytest.raises(ValueError, match="root="):
        data.load("cifar10")


def test_to_uint8_and_selection_is_seeded():
    assert data.to_uint8(torch.tensor([[[[-1.0, 0.502, 2.0]]]]), clip=True).tolist() == \
        [[[[0, 128, 255]]]]
    ds = data.load("digits8:test")
    assert torch.equal(data.select(ds, 10, seed=1), data.select(ds, 10, seed=1))
    assert not torch.equal(data.select(ds, 10, seed=1), data.select(ds, 10, seed=2))
    batches = list(data.iterate_batches(ds, 7, data.select(ds, 10, seed=1)))
    assert [len(b) for b in batches] == [7, 3]
    assert vp.data is data


def test_to_uint8_refuses_floats_outside_0_1_with_the_fix():
    with pytest.raises(ValueError, match="divide by 255"):
        data.to_uint8(torch.tensor([[[[0.0, 128.0, 255.0]]]]))
    with pytest.raises(ValueError, match="clip=True"):
        data.to_uint8(torch.tensor([[[[-0.01, 0.5]]]]))
    with pytest.raises(ValueError, match="nan"):
        data.to_uint8(torch.tensor([[[[float("nan")]]]]))
    assert data.to_uint8(torch.tensor([[[[0.0, 1.0]]]])).tolist() == [[[[0, 255]]]]


def test_more_images_than_the_dataset_is_a_warning():
    ds = data.load("digits8:test")
    with pytest.warns(UserWarning, match="n_images=1000 but 'digits8:test' has only 297"):
        assert len(data.select(ds, 1000)) == 297
    with pytest.raises(ValueError, match=">= 1"):
        data.select(ds, 0)


def test_folder_images_take_the_model_size_and_channels(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    assert tuple(data.as_dataset(f"folder:{tmp_path}")[0].shape) == (3, 64, 64)
    grey = data.as_dataset(f"folder:{tmp_path}", image_shape=(1, 8, 8))
    assert tuple(grey[0].shape) == (1, 8, 8) and int(grey[2][0, 0, 0]) == 120
    rgb = data.as_dataset(f"folder:{tmp_path}", image_shape=(3, 32, 32))
    assert tuple(rgb[0].shape) == (3, 32, 32)
