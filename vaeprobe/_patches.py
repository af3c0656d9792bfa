"""The embedded default datasets of :mod:`vaeprobe.data`: ``patchesN`` cut from the colour
photographs scikit-image ships, cached under :func:`cache_dir` with a content hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from vaeprobe.cache import cache_dir

# The colour photographs scikit-image ships. The split is by photograph: no test patch comes
# from a training photograph. The motorcycle pair is one stereo scene, so both stay in train.
PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "ihc",
    "motorcycle_left", "motorcycle_right", "retina", "rocket",
)
TEST_PHOTOS = ("chelsea", "coffee")
PATCH_SCALES = (1, 2, 4)  # area-downsampling factors
PATCH_STRIDES = {16: 8, 32: 12, 64: 24}  # pixels between patch corners, per patch size
_PATCH_RECIPE_VERSION = 1


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    loader = {"ihc": "immunohistochemistry"}.get(name, name)
    return getattr(skimage.data, loader)()


def _area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an HWC uint8 image (crops the remainder)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _cut_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All ``size x size`` patches of an HWC image at ``stride``, as NCHW uint8."""
    if image.shape[0] < size or image.shape[1] < size:
        return np.zeros((0, image.shape[2], size, size), np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
    windows = windows[::stride, ::stride]  # (nh, nw, C, size, size)
    return np.ascontiguousarray(windows.reshape(-1, *windows.shape[2:]))


def _patch_recipe(size: int, split: str) -> dict:
    photos = [p for p in PHOTOS if (p in TEST_PHOTOS) == (split == "test")]
    return dict(version=_PATCH_RECIPE_VERSION, size=size, split=split, photos=photos,
                scales=list(PATCH_SCALES), stride=PATCH_STRIDES[size])


def build_patches(size: int, split: str) -> np.ndarray:
    """Cut the embedded patches (deterministic; no cache). Returns uint8 ``(N, 3, size, size)``."""
    recipe = _patch_recipe(size, split)
    parts = [
        _cut_patches(_area_downsample(_load_photo(photo), factor), size, recipe["stride"])
        for photo in recipe["photos"] for factor in recipe["scales"]
    ]
    return np.concatenate(parts)


def _recipe_key(recipe: dict) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for photo in recipe["photos"]:  # a changed source photograph changes the key
        digest.update(_load_photo(photo).tobytes())
    return digest.hexdigest()[:16]


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def load_patches(size: int, split: str) -> np.ndarray:
    """Embedded patches from the cache, rebuilt when missing or when the content hash differs."""
    if size not in PATCH_STRIDES:
        raise ValueError(f"patch size must be one of {sorted(PATCH_STRIDES)}, got {size}")
    recipe = _patch_recipe(size, split)
    path = cache_dir() / f"patches{size}-{split}-{_recipe_key(recipe)}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                images, sha = stored["images"], str(stored["sha256"])
            if _array_sha256(images) == sha:
                return images
        except (OSError, KeyError, ValueError):
            pass  # unreadable or truncated cache entry: rebuild below
    images = build_patches(size, split)
    from vaeprobe.io import atomic_path

    with atomic_path(path, ".npz.tmp") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=images, sha256=_array_sha256(images))
    return images
