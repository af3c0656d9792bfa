"""What the third-party adapters share: safe file reading, strict state dicts, provenance of the
files read, and the decoder output of a model without a likelihood."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vaeprobe import io, validate
from vaeprobe.probe import UndefinedAnalysisError

PICKLE_SUFFIXES = (".pkl", ".pickle")
SPECS, WEIGHTS = "specs.json", "model.pt"  # a research-code results folder (disvae, JointVAE)


def model_folder(path: Path) -> Path:
    """The folder a model's files are in: ``path`` itself, or the folder of a file in it."""
    path = Path(path)
    return path.parent if path.is_file() else path


def sniff_specs(path: Path) -> dict | None:
    """The ``specs.json`` object of a folder (or of its ``model.pt``) that also holds
    ``model.pt``; None when either is missing or the specs are not a JSON object."""
    folder = model_folder(path)
    try:
        specs = json.loads((folder / SPECS).read_text())
    except (OSError, ValueError):
        return None
    return specs if isinstance(specs, dict) and (folder / WEIGHTS).is_file() else None


def read_specs(path: Path, what: str) -> tuple[Path, Path, dict]:
    """(specs path, weights path, specs) of a ``specs.json`` + ``model.pt`` folder; a missing
    file or specs that are not JSON are errors naming the file (``what``: the folder's kind)."""
    folder = model_folder(path)
    specs_path, weights_path = folder / SPECS, folder / WEIGHTS
    for needed in (specs_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: {what} holds {SPECS} and {WEIGHTS}")
    try:
        specs = json.loads(specs_path.read_text())
    except ValueError as error:
        raise io.CheckpointError(f"{specs_path} is not JSON: {error}") from None
    return specs_path, weights_path, specs


MAX_SPEC_INT = 2 ** 31 - 1  # a size field of a specs.json: anything larger is damage


def spec_int(value, key: str, path: Path, *, low: int = 1) -> int:
    """An integer size field of a ``specs.json``, typed and bounded before anything is sized
    from it (a JSON 1.5e6 is accepted as 1500000; 2.5, "ten", true, NaN are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
            float(value).is_integer() or not low <= value <= MAX_SPEC_INT:
        raise validate.ConfigError(f"{path}: {key} must be an integer in {low}..{MAX_SPEC_INT},"
                                   f" got {value!r}; the file is damaged or not this format's")
    return int(value)


def check_size(build, activations: int, path: Path, key: str) -> None:
    """Refuse a model past the memory limit before building it: ``build()`` is counted on the
    meta device (nothing allocated), plus ``activations`` values for one image."""
    validate.check_budget(parameters=validate.count_parameters(build), activations=activations,
                          file=path, key=key)


def refuse_pickles(path: Path, format_name: str) -> None:
    """Refuse files that can only be read by unpickling arbitrary objects (cloudpickles)."""
    if Path(path).suffix in PICKLE_SUFFIXES:
        raise io.CheckpointError(
            f"refused to open {path}: a {Path(path).suffix} file is a pickle that runs code when "
            f"loaded, and vaeprobe never unpickles third-party files ({format_name} format)")


def read_tensors(path: Path) -> dict:
    """A dict of tensors from safetensors, or from a torch file read with weights_only=True.

    A torch file whose unpickling would build other objects (and could run code) is refused
    without running it; the error names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        validate.check_file_size(path)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
            raise io.CheckpointError(f"cannot read safetensors file {path}: corrupt or "
                                     f"truncated ({str(error)[:200]})") from None
    return io.load_torch_file(path, "weights file")


def file_source(checkpoint: Path, files: list[Path]) -> dict:
    """Provenance of the files a model was read from: the main weights file and its sha256,
    and ``files_sha256`` (JSON {file name: sha256}) for every file read."""
    digests = {Path(f).name: io.sha256_file(f) for f in files}
    return dict(checkpoint=str(checkpoint), checkpoint_sha256=digests[Path(checkpoint).name],
                files_sha256=json.dumps(digests, sort_keys=True))


LIKELIHOODS = ("bernoulli", "gaussian", "none")  # the likelihood= option of disvae / jointvae


def gaussian_hint(folder: Path) -> str:
    """How to evaluate a research-format model with a Gaussian likelihood instead."""
    return (f"vp.load({str(folder)!r}, likelihood='gaussian', sigma=S) (command line: --option "
            f"likelihood=gaussian --option sigma=S), S the decoder's standard deviation on "
            f"[0, 1], e.g. 0.1")


def choose_likelihood(likelihood: str | None, sigma, trained: str,
                      trained_sigma: float | None = None) -> tuple[str, float | None]:
    """(likelihood, sigma) of a research-format model: ``likelihood`` None follows the loss
    it was ``trained`` with (sigma ``trained_sigma`` for a Gaussian); "gaussian" needs a
    ``sigma`` > 0 on [0, 1] unless the model was trained with one; others take no sigma."""
    chosen = trained if likelihood is None else likelihood
    if chosen not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS} (or None: as trained, "
                         f"{trained!r}), got {likelihood!r}")
    if chosen != "gaussian":
        if sigma is not None:
            raise ValueError(f"sigma is the Gaussian's standard deviation; likelihood "
                             f"{chosen!r} takes none (add likelihood='gaussian')")
        return chosen, None
    sigma = trained_sigma if sigma is None and trained == "gaussian" else sigma
    if sigma is None:
        raise ValueError(f"likelihood='gaussian' on a model trained with a {trained!r} loss "
                         f"needs sigma=S, its standard deviation on [0, 1] (e.g. sigma=0.1; "
                         f"command line --option sigma=0.1): the model has none of its own")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        sigma = math.nan
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0 (the Gaussian's standard deviation on "
                         f"[0, 1]), got {sigma!r}")
    return chosen, sigma


class MeanOnly:
    """The decoder output of a model without a likelihood: a mean image and nothing to sample
    or evaluate (``likelihood_kind="none"``)."""

    def __init__(self, mean: torch.Tensor, model_name: str):
        self.mean, self.model_name = mean, model_name  # mean: (B, C, H, W) in [0, 1]

    def _refuse(self, what: str):
        raise UndefinedAnalysisError(
            f"{what} is undefined for {self.model_name}: its decoder has no likelihood "
            f"(likelihood_kind='none'); use the decoder mean")

    def sample(self, generator=None) -> torch.Tensor:
        self._refuse("sampling the decoder")

    def log_prob(self, x, kind: str = "discretized", generator=None) -> torch.Tensor:
        self._refuse("log p(x|z)")


# ---- Probe.from_module's dry run -----------------------------------------------------------
def probe_images(image_shape, device) -> torch.Tensor:
    """The dry run's images: black, mid-grey, white and seeded noise (uint8, (4, C, H, W))."""
    noise = torch.randint(0, 256, image_shape, generator=torch.Generator().manual_seed(0)
                          ).to(torch.uint8)
    flat = [torch.full(image_shape, level, dtype=torch.uint8) for level in (0, 128, 255)]
    return torch.stack([*flat, noise]).to(device)


def check_answer(model, value, n: int, what: str) -> None:
    """One tensor of ``encode``'s answer: floating, one row per image of the batch."""
    name = type(model).__name__
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name}.encode(x) gave its {what} as "
                        f"{getattr(value, 'dtype', type(value).__name__)}; it must be a "
                        f"floating tensor (an integer {what} rounds every rate to nothing): "
                        f"return float values (e.g. drop a .long() / .round())")
    if value.ndim == 0 or value.shape[0] != n:
        raise ValueError(f"{name}.encode(x) gave a {what} of shape {tuple(value.shape)} for "
                         f"a batch of {n} images; it must give one row per image (B first): "
                         f"reshape with x.shape[0] (not a fixed batch size), and do not "
                         f"reduce over the batch")
