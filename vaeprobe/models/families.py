"""The model families vaeprobe trains and audits, one registry entry each: the model class,
its builder from a stored config, the config a checkpoint stores, and the check of a stored
config (types, ranges, and the sizes a memory estimate needs).

The trainer reads families from here. Loading a checkpoint into a model is
:func:`vaeprobe.checkpoint.load_model`'s job, and the layer that wraps models in Probes registers
its Probe class per family name on its side: this package knows nothing of either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from vaeprobe import validate
from vaeprobe.models.hvae import HVAE, HVAEConfig
from vaeprobe.models.two_stage import TwoStageVAE
from vaeprobe.registry import Registry


@dataclass(frozen=True)
class Family:
    """One model family: how to build it from a stored config, what config it stores, and how
    a stored config is checked before anything is built.

    ``check_config(config, path) -> (latent values per image, widest activation per image)``
    raises :class:`~vaeprobe.validate.ConfigError` naming the file and the key; the two sizes
    feed the memory estimate (:func:`check_stored_config`)."""

    model_class: type[nn.Module]
    build: Callable[[dict], nn.Module]
    config_of: Callable[[nn.Module], dict]
    check_config: Callable[[dict, str], tuple[int, int]]


def _check_family(name: str, family) -> None:
    if not isinstance(family, Family):
        raise TypeError(f"model family {name!r} must be registered as a Family, got "
                        f"{type(family).__name__}")
    if not (isinstance(family.model_class, type) and issubclass(family.model_class, nn.Module)):
        raise TypeError(f"model family {name!r}: model_class must be an nn.Module subclass")
    for part in ("build", "config_of", "check_config"):
        if not callable(getattr(family, part)):
            raise TypeError(f"model family {name!r}: {part} must be callable")


families = Registry("model family", check=_check_family)


# key -> (kind, low, high): an HVAE config as a checkpoint stores it (bounds far above every
# preset; the memory estimate guards the combinations)
HVAE_SPEC = {
    "image_channels": ("int", 1, 3), "image_size": ("int", 1, 1 << 14),
    "width": ("int", 1, 1 << 16), "bottleneck": ("int", 1, 1 << 16),
    "latent_channels": ("int", 1, 1 << 14), "encoder_blocks": ("int", 0, 256),
    "merge": ("str", None, None), "likelihood": ("str", None, None),
    "sigma": ("float", 1e-12, None), "n_mixtures": ("int", 1, 1024),
    "condition_channels": ("int", 0, 64), "residual": ("bool", None, None),
    "residual_gain": ("float", 0.0, None),
}
MAX_LATENT_LAYERS = 4096


def _check_hvae_config(config, where: str) -> tuple[int, int]:
    """Types and ranges of a stored HVAE config; returns (latent values per image, widest
    activation per image)."""
    validate.check_fields(config, HVAE_SPEC, where)
    layers = config.get("layers", ())
    if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in layers):
        raise validate.ConfigError(f"{where}: layers must be a non-empty list of [resolution, "
                                   f"count] pairs, got {layers!r}"[:300])
    for pair in layers:
        validate.check_value(list(pair), "ints", where, "layers", 1, 1 << 14)
    if sum(count for _, count in layers) > MAX_LATENT_LAYERS:
        raise validate.ConfigError(f"{where}: layers {layers} declare more than "
                                   f"{MAX_LATENT_LAYERS} latent layers")
    latent = config.get("latent_channels", 16)
    latents = sum(count * latent * resolution ** 2 for resolution, count in layers)
    return latents, config.get("width", 128) * config.get("image_size", 32) ** 2


def _check_two_stage_config(config, path) -> tuple[int, int]:
    if not isinstance(config, dict) or set(config) != {"primary", "secondary"}:
        raise validate.ConfigError(f"{path}: a two_stage config has keys 'primary' and "
                                   f"'secondary'")
    sizes = [_check_hvae_config(config[name], f"{path} (config.{name})")
             for name in ("primary", "secondary")]
    return sum(latents for latents, _ in sizes), max(widest for _, widest in sizes)


def _build_two_stage(config: dict) -> TwoStageVAE:
    if set(config) != {"primary", "secondary"}:
        raise ValueError(f"a two_stage config has keys 'primary' and 'secondary', got "
                         f"{sorted(config)}")
    return TwoStageVAE(HVAEConfig.from_dict(config["primary"]),
                       HVAEConfig.from_dict(config["secondary"]))


families.register("hvae", Family(HVAE, lambda config: HVAE(HVAEConfig.from_dict(config)),
                                 lambda model: model.config.to_dict(),
                                 lambda config, path: _check_hvae_config(config,
                                                                         f"{path} (config)")))
families.register("two_stage", Family(TwoStageVAE, _build_two_stage,
                                      lambda model: model.config, _check_two_stage_config))


def build(family: str, config: dict) -> nn.Module:
    """Build a registered model family from its JSON-able config."""
    return families.get(family).build(config)


def family_of(model: nn.Module) -> str:
    """The registered family name of one of vaeprobe's own models."""
    for name in families.names():
        if type(model) is families.get(name).model_class:
            return name
    raise TypeError(f"not a vaeprobe model: {type(model).__name__}; registered families: "
                    f"{', '.join(families.names())}")


def config_of(model: nn.Module) -> dict:
    """The JSON-able config a checkpoint stores for ``model``."""
    return families.get(family_of(model)).config_of(model)


def check_stored_config(family: str, config: dict, path) -> None:
    """A checkpoint's family and config checked (types, ranges) and its memory estimated, all
    before the network is built (:mod:`vaeprobe.validate`); errors name the file and the key."""
    entry = families.get(family)  # an unknown family: a KeyError listing the registered ones
    latents, widest = entry.check_config(config, path)
    try:
        parameters = validate.count_parameters(lambda: build(family, config))
    except (TypeError, ValueError) as error:
        raise validate.ConfigError(f"{path}: its config does not describe a {family} model: "
                                   f"{error}") from None
    validate.check_budget(parameters=parameters, activations=6 * widest + 6 * latents,
                          file=path, key=f"the stored {family} config")
