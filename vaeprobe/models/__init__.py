"""The model family vaeprobe trains and audits, registered by name."""

from __future__ import annotations

from torch import nn

from vaeprobe.models.hvae import HVAE, PRESETS, HVAEConfig, preset
from vaeprobe.models.two_stage import TwoStageVAE, secondary_config
from vaeprobe.registry import Registry

families = Registry("model family")


@families.register("hvae")
def _build_hvae(config: dict) -> HVAE:
    return HVAE(HVAEConfig.from_dict(config))


@families.register("two_stage")
def _build_two_stage(config: dict) -> TwoStageVAE:
    if set(config) != {"primary", "secondary"}:
        raise ValueError(f"a two_stage config has keys 'primary' and 'secondary', got "
                         f"{sorted(config)}")
    return TwoStageVAE(HVAEConfig.from_dict(config["primary"]),
                       HVAEConfig.from_dict(config["secondary"]))


def build(family: str, config: dict) -> nn.Module:
    """Build a registered model family from its JSON-able config."""
    return families.get(family)(config)


def family_of(model: nn.Module) -> str:
    if isinstance(model, TwoStageVAE):
        return "two_stage"
    if isinstance(model, HVAE):
        return "hvae"
    raise TypeError(f"not a vaeprobe model: {type(model).__name__}")


def decoder_head(model: nn.Module):
    """The likelihood head that makes the model's p(x | z): a two-stage model's secondary's."""
    return (model.secondary if isinstance(model, TwoStageVAE) else model).head


def decoder_facts(model: nn.Module) -> dict:
    """Provenance of the decoder likelihood: its kind and the shared sigma it evaluates with
    (NaN for per-pixel and mixture heads)."""
    head = decoder_head(model)
    return dict(decoder_likelihood=head.kind, decoder_sigma=head.shared_sigma())


def config_of(model: nn.Module) -> dict:
    return model.config if isinstance(model, TwoStageVAE) else model.config.to_dict()


__all__ = ["HVAE", "HVAEConfig", "PRESETS", "TwoStageVAE", "build", "config_of", "decoder_facts",
           "decoder_head", "families", "family_of", "preset", "secondary_config"]
