"""pythae's saved models (``model.save(dir)``) as Probes, without pythae.

A pythae model folder holds ``model_config.json`` (``"name": "VAEConfig"``, ``input_dim``,
``latent_dim``...), ``model.pt`` (``{"model_state_dict": ...}``, read with
``torch.load(weights_only=True)``) and, when the model was built with custom networks,
``encoder.pkl`` / ``decoder.pkl``: cloudpickles that run code when loaded. vaeprobe never opens
those; pass trusted ``encoder=`` / ``decoder=`` modules instead (pythae's forward contract:
``encoder(x).embedding`` / ``.log_covariance``, ``decoder(z)["reconstruction"]``).

Supported: the Gaussian-posterior families with the prior N(0, I) (VAE, BetaVAE, IWAE, ...;
:data:`FAMILIES`). Their default networks are pythae's MLPs (``Encoder_VAE_MLP``: one hidden
layer of 512 ReLU units, heads ``embedding`` and ``log_var``; ``Decoder_AE_MLP``: 512 ReLU units
then a sigmoid), written here with the same state-dict keys. The latent is flat: one layer
(latent_dim, 1, 1). pythae's data scale is an option (``pixel_range``, default (0, 1)). Its
decoders define no likelihood on 8-bit images (the "mse" loss is a unit-variance Gaussian on
the data scale, up to constants), so by default ``likelihood="none"``; ``likelihood="gaussian"``
with ``sigma`` or ``"bernoulli"`` choose one (see :mod:`vaeprobe.adapters.module`).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from vaeprobe import io, validate
from vaeprobe.adapters._common import file_source, read_tensors
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.adapters.module import ModuleProbe
from vaeprobe.io import check_state_dict

CONFIG, WEIGHTS = "model_config.json", "model.pt"
PICKLED_NETWORKS = ("encoder.pkl", "decoder.pkl")
# config name -> model: the Gaussian-posterior, N(0, I)-prior families whose default networks
# are Encoder_VAE_MLP / Decoder_AE_MLP. The discriminators of FactorVAE, Adversarial_AE and
# VAEGAN are training aids, not part of the VAE: their weights are skipped.
FAMILIES = {
    "VAEConfig": "VAE", "BetaVAEConfig": "BetaVAE", "DisentangledBetaVAEConfig":
    "DisentangledBetaVAE", "BetaTCVAEConfig": "BetaTCVAE", "IWAEConfig": "IWAE",
    "MIWAEConfig": "MIWAE", "PIWAEConfig": "PIWAE", "CIWAEConfig": "CIWAE",
    "MSSSIM_VAEConfig": "MSSSIM_VAE", "INFOVAE_MMD_Config": "INFOVAE_MMD",
    "FactorVAEConfig": "FactorVAE", "Adversarial_AE_Config": "Adversarial_AE",
    "VAEGANConfig": "VAEGAN",
}
SKIPPED_PREFIXES = ("discriminator.",)
HIDDEN = 512  # pythae's default MLP width


class DefaultEncoder(nn.Module):
    """pythae's ``Encoder_VAE_MLP``: flatten -> Linear(D, 512) -> ReLU -> (mean, logvar)."""

    def __init__(self, input_dim: tuple, latent_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(math.prod(input_dim), HIDDEN),
                                                   nn.ReLU())])
        self.embedding = nn.Linear(HIDDEN, latent_dim)
        self.log_var = nn.Linear(HIDDEN, latent_dim)

    def forward(self, x):
        hidden = self.layers[0](x.flatten(1))
        return self.embedding(hidden), self.log_var(hidden)


class DefaultDecoder(nn.Module):
    """pythae's ``Decoder_AE_MLP``: Linear(latent, 512) -> ReLU -> Linear(512, D) -> sigmoid."""

    def __init__(self, input_dim: tuple, latent_dim: int):
        super().__init__()
        self.input_dim = tuple(input_dim)
        self.layers = nn.ModuleList([
            nn.Sequential(nn.Linear(latent_dim, HIDDEN), nn.ReLU()),
            nn.Sequential(nn.Linear(HIDDEN, math.prod(input_dim)), nn.Sigmoid())])

    def forward(self, z):
        return self.layers[1](self.layers[0](z)).reshape(z.shape[0], *self.input_dim)


class PythaeVAE(nn.Module):
    """encode/decode over pythae-style networks (ours by default, or trusted user modules)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, custom: tuple[bool, bool]):
        super().__init__()
        self.encoder, self.decoder, self.custom = encoder, decoder, custom

    def encode(self, x):
        if not self.custom[0]:
            return self.encoder(x)
        out = self.encoder(x)  # pythae's ModelOutput
        return out["embedding"], out["log_covariance"]

    def decode(self, z):
        return self.decoder(z)["reconstruction"] if self.custom[1] else self.decoder(z)


def sniff(path: Path) -> bool:
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


# key -> (kind, low, high): what vaeprobe reads from a pythae model_config.json
CONFIG_SPEC = {"name": ("str", None, None), "input_dim": ("ints", 1, 1 << 24),
               "latent_dim": ("int", 1, 1 << 20), "uses_default_encoder": ("bool", None, None),
               "uses_default_decoder": ("bool", None, None),
               "reconstruction_loss": ("str", None, None)}


def _read_config(path: Path) -> dict:
    """model_config.json, its keys checked (types, ranges) before anything is built."""
    config = validate.json_object(path, "pythae model config")
    validate.check_fields(config, CONFIG_SPEC, path)
    name = config.get("name")
    if name not in FAMILIES:
        raise ValueError(f"{path} describes a pythae {name!r}; vaeprobe reads the Gaussian-"
                         f"posterior families with an N(0, I) prior: {sorted(FAMILIES)}")
    if "input_dim" not in config or "latent_dim" not in config:
        raise ValueError(f"{path} has no input_dim / latent_dim")
    if len(config["input_dim"]) > 4:
        raise validate.ConfigError(f"{path}: input_dim {config['input_dim']} has more than 4 "
                                   f"axes; expected (C, H, W) or a flat (D,)")
    return config


def _check_budget(config: dict, path: Path) -> None:
    """Refuse, before building, default networks too big for the memory limit (both MLPs hold
    a D x 512 matrix, D = prod(input_dim))."""
    dims, latent = math.prod(config["input_dim"]), config["latent_dim"]
    parameters = 2 * dims * HIDDEN + dims + 3 * (HIDDEN * latent + latent) + 2 * HIDDEN
    validate.check_budget(parameters=parameters, activations=3 * dims + 3 * HIDDEN + 3 * latent,
                          file=path, key=f"input_dim={list(config['input_dim'])}, "
                                         f"latent_dim={latent}")


def _image_shape(config: dict, image_shape, path: Path) -> tuple:
    input_dim = tuple(config["input_dim"])
    if image_shape is None:
        if len(input_dim) != 3:
            raise ValueError(f"{path}: input_dim {list(input_dim)} is not (C, H, W); pass "
                             f"image_shape=(C, H, W) with C*H*W = {math.prod(input_dim)}")
        return input_dim
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3 and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in image_shape)):
        raise ValueError(f"image_shape must be (C, H, W) of positive integers, got "
                         f"{image_shape!r}")
    image_shape = tuple(image_shape)
    if math.prod(image_shape) != math.prod(input_dim):
        raise ValueError(f"image_shape {image_shape} does not hold input_dim {list(input_dim)}")
    return image_shape


def _networks(folder: Path, config: dict, encoder, decoder):
    """(encoder, decoder, custom flags): ours for default networks, else the trusted modules."""
    input_dim, latent_dim = tuple(config["input_dim"]), int(config["latent_dim"])
    networks = []
    for role, given, build in (("encoder", encoder, DefaultEncoder),
                               ("decoder", decoder, DefaultDecoder)):
        default = config.get(f"uses_default_{role}", True)
        if given is not None:
            if not isinstance(given, nn.Module):
                raise TypeError(f"{role}= must be an nn.Module, got {type(given).__name__}")
            networks.append((given, True))
        elif default:
            networks.append((build(input_dim, latent_dim), False))
        else:
            raise ValueError(
                f"{folder} was saved with a custom {role}, stored as {folder / (role + '.pkl')}: "
                f"a cloudpickle that runs code when loaded, which vaeprobe never opens. Build "
                f"the {role} yourself from trusted code and pass it: vp.load(path, "
                f"format='pythae', {role}=my_{role})")
    return networks[0][0], networks[1][0], (networks[0][1], networks[1][1])


def open_pythae(path: Path, *, pixel_range=(0.0, 1.0), likelihood: str = "none",
                sigma: float | None = None, image_shape=None, encoder: nn.Module | None = None,
                decoder: nn.Module | None = None, device=None) -> ModuleProbe:
    """Open a pythae model folder (``model_config.json`` + ``model.pt``) as a Probe.

    Parameters
    ----------
    path : Path
        The folder ``model.save`` wrote (or a file in it).
    pixel_range : (low, high)
        The data scale the model was trained on: uint8 0 -> low, 255 -> high.
    likelihood : {"none", "gaussian", "bernoulli"}
        The decoder likelihood (see :func:`vaeprobe.adapters.module.from_module`).
    sigma : float, optional
        The Gaussian's standard deviation on the data scale.
    image_shape : (C, H, W), optional
        Needed when the model's ``input_dim`` is flat (e.g. (784,)); default ``input_dim``.
    encoder, decoder : nn.Module, optional
        Trusted networks for a model saved with custom ones (never read from its ``.pkl``).
    device : str or torch.device, optional
    """
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found: a pythae folder holds {CONFIG} and "
                                    f"{WEIGHTS}")
    config = _read_config(config_path)
    _check_budget(config, config_path)
    encoder, decoder, custom = _networks(folder, config, encoder, decoder)
    model = PythaeVAE(encoder, decoder, custom)
    payload = read_tensors(weights_path)
    if not isinstance(payload, dict) or not isinstance(payload.get("model_state_dict"), dict):
        found = type(payload.get("model_state_dict")).__name__ if isinstance(payload, dict) \
            else type(payload).__name__
        raise io.CheckpointError(f"{weights_path} has no 'model_state_dict' dict of tensors "
                                 f"(found a {found}): not a pythae model.pt (pythae's "
                                 f"model.save writes {{'model_state_dict': {{name: tensor}}}})")
    state = {k: v for k, v in payload["model_state_dict"].items()
             if not k.startswith(SKIPPED_PREFIXES)}
    check_state_dict(model, state, weights_path)
    model.load_state_dict(state)
    source = file_source(weights_path, [config_path, weights_path])
    source.update(pythae_model=FAMILIES[config["name"]],
                  reconstruction_loss=config.get("reconstruction_loss", "unknown"))
    return ModuleProbe(model, _image_shape(config, image_shape, config_path),
                       pixel_range=pixel_range,
                       likelihood=likelihood, sigma=sigma, device=device, source=source)


formats.register("pythae", Format(
    "vaeprobe.adapters.pythae:open_pythae", sniff,
    "a pythae model.save folder: model_config.json + model.pt"))
