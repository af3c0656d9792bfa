"""The ``.vpbb`` file of :func:`vaeprobe.compress`: a coded file that proves itself.

Layout (format version 2): the magic line ``VAEPROBE-BITS-BACK``, a little-endian uint32 header
length, the JSON header, the little-endian uint32 CRC32 of the header's bytes, then the ANS
stack's little-endian uint32 words (the payload).

The header names everything decoding needs and everything it checks:

- ``model_sha256``, ``ema``, ``model_format``, ``load_options`` (the options the model was
  opened with, e.g. a pythae model's ``sigma``) and ``image_shape`` (after fitting the model to
  the data's size): decoding with another model, other weights or other options is refused,
  naming what differs;
- ``n_images``, ``latent_bits``, ``precision``, ``initial_words``, ``payload_words``: bounds-
  checked before any allocation or loop (:func:`check_header`);
- ``payload_sha256``: the payload's sha256, checked before decoding (a truncated or flipped file
  is refused, never decoded into garbage);
- ``images_sha256``: the sha256 of the images coded (uint8, N x C x H x W, in coding order),
  checked after decoding and before anything is returned or written (:func:`images_digest`).

Files of format version 1 (no checksums) are refused: compress the images again.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np

from vaeprobe import io

MAGIC = b"VAEPROBE-BITS-BACK\n"
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; more is damage
MAX_IMAGES = 1 << 20  # images in one file (each is decoded in turn, on one CPU thread)
MAX_IMAGE_ELEMENTS = 1 << 26  # C * H * W of one image
MAX_DECODED_BYTES = 1 << 33  # n_images * C * H * W: the decoded images held in memory
_PREFIX = len(MAGIC) + 4


class CompressedFileError(ValueError):
    """A compressed file that is not ours, of another version, damaged, or for another model."""


def images_digest(images) -> str:
    """sha256 (hex) of uint8 images (N, C, H, W) in coding order: their shape and bytes."""
    array = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def payload_digest(words: np.ndarray) -> str:
    """sha256 (hex) of the payload's little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(words, dtype="<u4").tobytes()).hexdigest()


def write_compressed(path, header: dict, words: np.ndarray) -> Path:
    """Write a ``.vpbb`` file atomically: magic, header length, JSON header, its CRC32, words.

    ``payload_words`` and ``payload_sha256`` are filled in here from ``words``."""
    words = np.ascontiguousarray(words, dtype="<u4")
    header = dict(header, format_version=FORMAT_VERSION, payload_words=int(words.size),
                  payload_sha256=payload_digest(words))
    text = json.dumps(header, sort_keys=True).encode()
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + struct.pack("<I", len(text)) + text)
            handle.write(struct.pack("<I", zlib.crc32(text)))
            handle.write(words.tobytes())
    return Path(path)


def _read_header(path: Path, handle, size: int) -> dict:
    """The header, its length and checksum checked before it is parsed."""
    prefix = handle.read(_PREFIX)
    if len(prefix) < _PREFIX or not prefix.startswith(MAGIC):
        raise CompressedFileError(f"{path} is not a vaeprobe compressed file (written by "
                                  f"vp.compress / vaeprobe compress)")
    (length,) = struct.unpack("<I", prefix[len(MAGIC):])
    if length > MAX_HEADER_BYTES or _PREFIX + length + 4 > size:
        raise CompressedFileError(
            f"{path} is truncated or damaged: its header says {length} bytes and the file has "
            f"{size} bytes in all; compress the images again")
    text = handle.read(length)
    (crc,) = struct.unpack("<I", handle.read(4))
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if zlib.crc32(text) != crc or not isinstance(header, dict):
        version = header.get("format_version") if isinstance(header, dict) else None
        if version == 1:
            _old_version(path)
        raise CompressedFileError(f"{path}: its header is damaged (its CRC32 does not match "
                                  f"its bytes; an edited or corrupted file); compress the "
                                  f"images again")
    if header.get("format_version") != FORMAT_VERSION:
        _old_version(path, header.get("format_version"))
    return header


def _old_version(path: Path, version=1):
    raise CompressedFileError(f"{path} has format version {version!r}; this vaeprobe reads "
                              f"version {FORMAT_VERSION} (checksummed files): compress the "
                              f"images again with this vaeprobe")


# the header's numbers: (type, lowest, highest); image_shape and the strings are checked apart
_BOUNDS = {"n_images": (1, MAX_IMAGES), "latent_bits": (1, 16), "initial_words": (1, 1 << 40),
           "payload_words": (1, 1 << 40), "ema": (-1, 1)}
_TEXT = ("model_sha256", "payload_sha256", "images_sha256", "model_format")


def check_header(header: dict, path, precision: int) -> None:
    """Every field decoding reads, typed and bounded, before any allocation or loop. Raises
    :class:`CompressedFileError` naming the field, its value and the accepted range."""
    def bad(key, expected):
        raise CompressedFileError(f"{path}: header field {key}={header.get(key)!r} is invalid "
                                  f"(expected {expected}); the file is damaged or was edited: "
                                  f"compress the images again")

    for key, (low, high) in _BOUNDS.items():
        value = header.get(key)
        if type(value) is not int or not low <= value <= high:
            bad(key, f"an integer in {low}..{high}")
    if header.get("precision") != precision:
        bad("precision", f"{precision}, the coder's probability precision")
    for key in _TEXT:
        if not isinstance(header.get(key), str) or not header[key]:
            bad(key, "a non-empty string")
    if not isinstance(header.get("load_options"), dict):
        bad("load_options", "a JSON object of the options the model was opened with")
    shape = header.get("image_shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(type(side) is int and side >= 1 for side in shape)
            or shape[0] * shape[1] * shape[2] > MAX_IMAGE_ELEMENTS):
        bad("image_shape", f"[C, H, W] of positive integers, at most {MAX_IMAGE_ELEMENTS} "
            f"elements")
    if header["n_images"] * shape[0] * shape[1] * shape[2] > MAX_DECODED_BYTES:
        bad("n_images", f"at most {MAX_DECODED_BYTES} bytes of decoded images in all")
    if header["initial_words"] > header["payload_words"]:
        bad("initial_words", f"at most payload_words={header['payload_words']}")


def read_compressed(path, precision: int = 24) -> tuple[dict, np.ndarray]:
    """(header, words) of a ``.vpbb`` file, checked: magic, version, header CRC32 and fields
    (:func:`check_header`), the payload's length and sha256. Raises
    :class:`CompressedFileError` saying what is wrong; nothing is decoded from a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = _read_header(path, handle, size)
        check_header(header, path, precision)
        expected = header["payload_words"] * 4
        have = size - handle.tell()
        if have != expected:
            state = "is truncated" if have < expected else "has bytes past its end"
            raise CompressedFileError(
                f"{path} {state}: its payload is {have} bytes, its header says {expected}; "
                f"compress the images again (or copy the file whole)")
        words = np.frombuffer(handle.read(expected), dtype="<u4").astype(np.uint32)
    if payload_digest(words) != header["payload_sha256"]:
        raise CompressedFileError(f"{path}: its payload is damaged (its sha256 differs from "
                                  f"the header's {header['payload_sha256'][:16]}...); nothing "
                                  f"was decoded: compress the images again")
    return header, words


def check_model(header: dict, identity: dict, image_shape, path) -> None:
    """Refuse a model other than the file's: another sha256, the other of EMA / raw weights,
    another format or load options, another image shape; the message says what differs."""
    differ = [f"{key} {header.get(key)!r} (this model: {identity.get(key)!r})"
              for key in ("model_sha256", "ema", "model_format", "load_options")
              if header.get(key) != identity.get(key)]
    if list(image_shape) != header["image_shape"]:
        differ.append(f"image_shape {header['image_shape']} (this model: {list(image_shape)})")
    if differ:
        raise CompressedFileError(
            f"{path} was coded with another model or other load options: {'; '.join(differ)}; "
            f"decode it with the model it was coded with, opened with the same options (the "
            f"file's options are used when the model is given as a path)")


def check_images(header: dict, images, path) -> None:
    """The decoded images against the digest the encoder stored, before they are returned."""
    digest = images_digest(images)
    if digest != header["images_sha256"]:
        raise CompressedFileError(
            f"{path}: the decoded images do not match the file's digest (sha256 "
            f"{digest[:16]}... vs {header['images_sha256'][:16]}...): the decoder's PMFs "
            f"differ from the encoder's (another torch or CPU kernel set: coded with torch "
            f"{header.get('torch')} on {header.get('cpu_capability')}) or the file was "
            f"edited; nothing was written: decode where it was coded")
