"""Lossless bits-back coding with a VAE: the bits the ELBO promises, spent on a real bitstream.

Each image x is coded with the bits-back chain (Townsend et al. 2019; hierarchical latents as in
Bit-Swap, Kingma et al. 2019, and HiLLoC, Townsend et al. 2020) on an ANS stack (the
``constriction`` library's ``AnsCoder``):

1. for each latent layer l, top to bottom: *decode* (pop) the bin of z_l from the stack with the
   posterior q(z_l | z_<l, x) -- this takes bits that earlier images left on the stack;
2. *encode* (push) the pixels with the decoder's PMF p(x | z), channel by channel;
3. for each layer, bottom to top: encode the bin of z_l with the prior p(z_l | z_<l).

The decoder runs the steps backwards and, pushing the posterior bins back, returns the stack to
its state before the image (the bits it got back). The net cost of an image is
-log2 p(x | z) - log2 p(z) + log2 q(z | x) bits: its -ELBO, at the discretization below.

**Discretization** (HiLLoC's, after Bit-Swap): every latent element is cut into K = 2^latent_bits
bins of equal mass under its prior p(z_l | z_<l), so the prior codes each bin with exactly
latent_bits bits; z takes the bin's centre (the prior's quantile (k + 1/2) / K); the posterior
PMF over the bins is its mass in each. Both sides compute the bins from the layers above.

**Determinism.** The decoder must compute bit-identical PMFs. Coding runs on the CPU, on one
thread, one image at a time (the same batch composition on both sides); every PMF is quantised
to integer counts (float64 probabilities times 2^24, floored, at least 1) before it reaches the
coder. The file records torch's version and CPU kernel set; decoding elsewhere is warned about
(other kernels may round differently). The first image's posterior pops need bits on the
stack: the chain starts from ``initial_bits`` seeded random bits (reported separately; they come
back at the end).

File format (``.vpbb``, ``vaeprobe.compressed_file``): a checksummed JSON header (the
model's sha256, format and load options, image shape, number of images, latent bits, the
payload's and the images' sha256) and the ANS stack's words. Decoding refuses a damaged file or
another model before decoding, and checks the decoded images against their digest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from vaeprobe._analysis import Evaluation, evaluation_of, image_dims, resolve_source, result_attrs
from vaeprobe._bits_back import (
    PRECISION,
    Chain,
    decode_all,
    encode_all,
    initial_words,
    one_thread,
)
from vaeprobe.compressed_file import (  # noqa: F401  (re-exported: vaeprobe.compress's API)
    MAGIC,
    CompressedFileError,
    check_header,
    check_images,
    check_model,
    images_digest,
    read_compressed,
    write_compressed,
)
from vaeprobe.data import dataset_name, iterate_batches
from vaeprobe.models.likelihoods import DiscretizedGaussian, DiscretizedLogisticMixture
from vaeprobe.probe import Probe, UndefinedAnalysisError, encode


def _check_probe(probe: Probe, latent_bits: int) -> None:
    if probe.device.type != "cpu":
        raise ValueError(f"vp.compress codes on the CPU (the decoder must reproduce every PMF "
                         f"bit for bit); the model is on {probe.device}: load it with "
                         f"device='cpu'")
    probe.require("vp.compress", likelihood=True, posterior=True)
    if probe.likelihood_kind != "discretized" or probe.n_bits != 8:
        raise UndefinedAnalysisError(
            f"vp.compress is undefined for {probe.name}: it codes 8-bit pixels with the "
            f"decoder's PMF (likelihood_kind='discretized', n_bits=8); this model has "
            f"likelihood_kind={probe.likelihood_kind!r}, n_bits={probe.n_bits}")
    if not isinstance(latent_bits, int) or not 1 <= latent_bits <= 16:
        raise ValueError(f"latent_bits (bins per latent element = 2^latent_bits) must be an "
                         f"integer in 1..16, got {latent_bits!r}")


def _check_likelihood(probe: Probe, chain: Chain) -> None:
    likelihood = probe.decode(probe.sample_prior(1, generator=torch.Generator().manual_seed(0)))
    if not isinstance(likelihood, (DiscretizedGaussian, DiscretizedLogisticMixture)):
        raise UndefinedAnalysisError(
            f"vp.compress is undefined for {probe.name}: its decoder ({type(likelihood).__name__}"
            f") is not a PMF vaeprobe can tabulate (a discretized Gaussian or logistic mixture)")
    latents = encode(probe, chain.blank, 1, None, "mean")
    if any(d.distribution != "gaussian" or d.q_mean is None for d in latents.draws) or \
            not all(latents.kl_analytic):
        raise UndefinedAnalysisError(f"vp.compress is undefined for {probe.name}: its "
                                     f"posteriors are not Gaussian")


def _open_probe(source) -> Probe:
    """The model, opened on the CPU (a Probe as it is)."""
    return resolve_source(source, **({} if isinstance(source, Probe) else {"device": "cpu"}))


def _constriction_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("constriction")
    except PackageNotFoundError:
        return "unknown"


def _platform() -> dict:
    """What the PMFs' floating point depends on beyond the model: torch and the CPU kernels."""
    return dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability())


def model_identity(probe: Probe) -> dict:
    """What a compressed file must be decoded with: the checkpoint's sha256 (or, for a model
    held in memory, the sha256 of its parameters), which weights of it (EMA or raw), its format
    and the options it was opened with (``probe.source``)."""
    sha = probe.source.get("checkpoint_sha256")
    if not sha:
        module = getattr(probe, "model", None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{probe.name} has no checkpoint sha256 to name in a compressed "
                             f"file; open it from a checkpoint (vp.load) to write one")
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        sha = "parameters:" + digest.hexdigest()
    options = probe.source.get("options", "{}")
    return dict(model_sha256=str(sha), ema=int(probe.source.get("ema", -1)),
                model_format=str(probe.source.get("format", "memory")),
                load_options=json.loads(options) if isinstance(options, str) else dict(options))


def compress(source, data, *, n_images: int | None = 100, latent_bits: int = 8, seed: int = 0,
             out=None, verify: bool = True, progress: bool = True,
             overwrite: bool = False) -> xr.Dataset:
    """Code images losslessly with the model (bits-back ANS) and report the real bits.

    Parameters
    ----------
    source : Probe, run directory, checkpoint file or model folder
        Gaussian latents per layer and a discretized 8-bit decoder PMF: vaeprobe's HVAE and
        two-stage models, VDVAE, and any such Probe (hierarchical ones implement
        ``encode_given``). Opened on the CPU.
    data : str, Dataset or uint8 tensor
        The images, coded in one chain in the order of the (sorted) seeded subset.
    n_images : int or None
        A seeded random subset (None: all).
    latent_bits : int
        Bins per latent element: 2^latent_bits of equal prior mass.
    seed : int
        Seeds the subset and the initial random bits.
    out : str or Path, optional
        Also write the compressed file here (``.vpbb``; :func:`decompress` reads it).
        It is checked before any work: never one of the inputs (the model's files, the data),
        and an existing file only replaced when vaeprobe wrote it
        (``vaeprobe.outputs.check_output``).
    verify : bool
        Decode the whole chain again and compare bit for bit (``round_trip``); also times the
        decoder.
    progress : bool
        Progress bars on stderr.
    overwrite : bool
        Replace an existing ``out`` that vaeprobe did not write.

    Returns
    -------
    xarray.Dataset
        Per ``image``: ``coded_bits`` (the net growth of the stack while coding it: bits),
        ``elbo_bits`` (its -ELBO at the same discretization: -log2 p(x | z) at the coded
        latents plus, per layer, KL(Q || uniform) over the bins, Q the posterior's bin masses
        given the coded layers above), ``pixel_bits`` (-log2 p(x | z)), ``symbol_bits`` (the
        information of the symbols actually coded under the quantised PMFs: pixel pushes +
        latent_bits per latent element - the posterior pops); ``layer_bits`` (image, layer:
        each layer's KL term, bits). Scalars: ``coded_bpd`` and ``elbo_bpd`` (bits/dim, means
        over the chain) with ``_se``; ``overhead_fraction`` (sum coded / sum -ELBO - 1: what
        the chain costs beyond the model's promise, from PMF quantisation, the ANS state and
        pops that do not read uniformly random bits), ``coder_overhead_fraction`` (sum coded /
        sum symbol_bits - 1: the ANS coder alone); ``initial_bits`` (the random bits the chain
        starts from, not counted in ``coded_bits``, given back at the end), ``file_bits``
        (initial + coded: the stack's final size), ``encode_images_per_second``,
        ``decode_images_per_second`` (one CPU thread; NaN without ``verify``).
        attrs: ``round_trip`` (1 only when every image decoded exactly and the initial bits
        came back), ``latent_bits``, ``coder``, ``model_sha256``, ``compressed_file``.

    Examples
    --------
    >>> ds = compress("runs/demo", "patches32:test", n_images=50)  # doctest: +SKIP
    >>> float(ds.coded_bpd), float(ds.elbo_bpd), int(ds.attrs["round_trip"])  # doctest: +SKIP
    """
    import constriction  # noqa: F401  (a missing coder is refused before the model opens)

    from vaeprobe import outputs

    if out is not None:
        outputs.check_output(out, "out", inputs=outputs.source_paths(source, data),
                             overwrite=overwrite)
    probe = _open_probe(source)
    _check_probe(probe, latent_bits)
    evaluation = evaluation_of(probe, data, n_images, seed)
    return compress_images(evaluation, latent_bits=latent_bits, out=out, verify=verify,
                           progress=progress)


def compress_images(evaluation: Evaluation, *, latent_bits: int = 8, out=None,
                    verify: bool = True, progress: bool = True) -> xr.Dataset:
    """The core of :func:`compress` on an already resolved model and subset of images.

    Parameters
    ----------
    evaluation : vaeprobe._analysis.Evaluation
        The Probe (on the CPU, fitted to the images), the dataset and the seeded subset,
        coded in one chain in the subset's order; its ``seed`` seeds the initial bits.
    latent_bits, verify, progress
        As in :func:`compress`.
    out : str or Path, optional
        Also write the compressed file here, as given: :func:`compress` checks it against
        the inputs (and an existing file) before it opens the model.

    Returns
    -------
    xarray.Dataset
        What :func:`compress` returns for the same request (the same Dataset).
    """
    import constriction

    probe, dataset, indices = evaluation.probe, evaluation.dataset, evaluation.indices
    n_images, seed = evaluation.n_images, evaluation.seed
    _check_probe(probe, latent_bits)
    chain = Chain(probe, latent_bits)
    images = torch.cat(list(iterate_batches(dataset, 64, indices)))
    with one_thread(), torch.no_grad():
        _check_likelihood(probe, chain)
        initial = initial_words(chain, seed)
        coder = constriction.stream.stack.AnsCoder(initial.copy())
        rows, seconds = encode_all(chain, coder, images, progress)
        words = coder.get_compressed().copy()
        decoded, decode_seconds = None, math.nan
        if verify:
            decoded, decode_seconds, rest = decode_all(chain, words, len(images), progress)
    identity = model_identity(probe) if out is not None else {}
    round_trip = bool(verify and torch.equal(decoded, images) and np.array_equal(rest, initial))
    ds = _compress_dataset(probe, rows, indices, len(initial) * 32, len(words) * 32, seconds,
                           decode_seconds)
    header = dict(**identity, image_shape=list(probe.image_shape),
                  checkpoint=str(probe.source.get("checkpoint", "")),
                  data=dataset_name(dataset), images_sha256=images_digest(images.numpy()),
                  n_images=len(images), latent_bits=latent_bits,
                  initial_words=len(initial), precision=PRECISION,
                  constriction=_constriction_version(), **_platform())
    if out is not None:
        write_compressed(out, header, words)
    parameters = dict(n_images=n_images, latent_bits=latent_bits, seed=seed, verify=verify)
    ds.attrs = result_attrs(
        "compress", parameters, probe, dataset, len(images), seed,
        model_sha256=identity.get("model_sha256", probe.source.get("checkpoint_sha256", "")),
        round_trip=int(round_trip), latent_bits=latent_bits, likelihood_kind="discretized",
        coder=f"bits-back ANS (constriction {header['constriction']}, precision {PRECISION})",
        discretization="equal prior mass bins per latent element (HiLLoC), bin centres",
        threads=1, compressed_file=str(out) if out is not None else "")
    return ds


def _compress_dataset(probe: Probe, rows: list[dict], indices, initial_bits: int,
                      file_bits: int, seconds: float, decode_seconds: float) -> xr.Dataset:
    dims = image_dims(probe)
    coded = np.array([row["coded_bits"] for row in rows], dtype=np.float64)
    layer_bits = np.array([row["layer_bits"] for row in rows], dtype=np.float64)
    pixel_bits = np.array([row["pixel_bits"] for row in rows], dtype=np.float64)
    elbo = pixel_bits + layer_bits.sum(1)
    symbol_bits = np.array([row["symbol_bits"] for row in rows], dtype=np.float64)
    n = len(rows)

    def se(values):
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    bits, bpd, speed = {"units": "bits"}, {"units": "bits/dim"}, {"units": "images/s"}
    return xr.Dataset(
        {
            "coded_bits": ("image", coded, {**bits, "long_name": "net stack growth per image"}),
            "elbo_bits": ("image", elbo, {**bits, "long_name": "-ELBO at the coded bins"}),
            "pixel_bits": ("image", pixel_bits, {**bits, "long_name": "-log2 p(x | z)"}),
            "symbol_bits": ("image", symbol_bits,
                            {**bits, "long_name": "information of the coded symbols under "
                             "the quantised PMFs (pushes - pops)"}),
            "layer_bits": (("image", "layer"), layer_bits,
                           {**bits, "long_name": "log2 q(bin) - log2 p(bin), per layer"}),
            "coded_bpd": ((), float(coded.mean() / dims), bpd),
            "coded_bpd_se": ((), se(coded / dims), bpd),
            "elbo_bpd": ((), float(elbo.mean() / dims), bpd),
            "elbo_bpd_se": ((), se(elbo / dims), bpd),
            "overhead_fraction": ((), float(coded.sum() / elbo.sum() - 1), {"units": "1"}),
            "coder_overhead_fraction": ((), float(coded.sum() / symbol_bits.sum() - 1),
                                        {"units": "1"}),
            "initial_bits": ((), initial_bits, {**bits, "long_name": "random bits the chain "
                                                "starts from (returned at the end)"}),
            "file_bits": ((), file_bits, {**bits, "long_name": "final stack: initial + coded"}),
            "encode_images_per_second": ((), n / seconds, speed),
            "decode_images_per_second": ((), n / decode_seconds, speed),
        },
        coords={"image": indices.numpy(), "layer": np.arange(len(probe.layers)),
                "name": ("layer", [info.name for info in probe.layers])})



def decompress(path, source=None, *, progress: bool = True) -> torch.Tensor:
    """Decode a ``.vpbb`` file written by :func:`compress`: the images, uint8 (N, C, H, W), in
    the order they were coded, checked against the digest the encoder stored.

    Parameters
    ----------
    path : str or Path
        The compressed file. A damaged one (truncated, a flipped bit, an edited header) is
        refused before decoding (``vaeprobe.compressed_file``).
    source : Probe, run directory or checkpoint, optional
        The model it was coded with; default the checkpoint path the file names. A path is
        opened with the format and load options the file records. Another model (a
        different sha256, the other of EMA / raw weights, other load options) is refused,
        naming what differs.
    progress : bool
        A progress bar on stderr.

    Raises
    ------
    ValueError
        (``CompressedFileError``) a damaged file, another model, or decoded images whose
        sha256 is not the file's (PMFs computed differently: another torch or CPU kernels).

    Examples
    --------
    >>> images = decompress("images.vpbb", "runs/demo")  # doctest: +SKIP
    """
    header, words = read_compressed(path, PRECISION)
    probe = _decoding_probe(path, header, source)
    identity = model_identity(probe)
    if probe.size_multiple is not None and list(probe.image_shape) != header["image_shape"] \
            and probe.image_shape[0] == header["image_shape"][0]:
        probe = probe.at_image_size(*header["image_shape"][1:])  # fitted to the data's size
    check_model(header, identity, probe.image_shape, path)
    here = _platform()
    if any(header.get(key, here[key]) != here[key] for key in here):
        import warnings

        warnings.warn(f"{path} was coded with torch {header.get('torch')} on "
                      f"{header.get('cpu_capability')} CPU kernels, this is torch "
                      f"{here['torch']} on {here['cpu_capability']}: the decoder's PMFs must "
                      f"equal the encoder's bit for bit, and other kernels may round "
                      f"differently (the decoded images are checked against their digest)",
                      stacklevel=2)
    chain = Chain(probe, header["latent_bits"])
    with one_thread(), torch.no_grad():
        try:
            images, _, _ = decode_all(chain, words, header["n_images"], progress)
        except (ValueError, RuntimeError, AssertionError) as error:
            raise CompressedFileError(f"{path}: decoding failed ({error}); the file does not "
                                      f"decode with this model: compress the images "
                                      f"again") from None
    check_images(header, images.numpy(), path)
    return images


def _decoding_probe(path, header: dict, source) -> Probe:
    """The model to decode with: ``source`` (a Probe as it is; a path opened with the file's
    format and load options), else the checkpoint the file names."""
    if source is None:
        source = header.get("checkpoint")
        if not source or not Path(source).exists():
            raise FileNotFoundError(f"{path} was coded with {source or 'an unnamed model'}, "
                                    f"which is not here; pass the model (sha256 "
                                    f"{header['model_sha256']})")
    if isinstance(source, Probe):
        return _open_probe(source)
    model_format = header["model_format"]
    return resolve_source(source, None if model_format == "memory" else model_format, device="cpu",
                    **header["load_options"])
