"""The model families vaeprobe trains and audits, and their registry
(:mod:`vaeprobe.models.families`: builder, stored config and its check per family)."""

from vaeprobe.models.hvae import HVAE, PRESETS, HVAEConfig, preset
from vaeprobe.models.two_stage import TwoStageVAE, secondary_config


def __getattr__(name: str):
    if name == "PRESET_TABLE":  # deprecated (a DeprecationWarning names the new homes)
        from vaeprobe.models import hvae

        return hvae.PRESET_TABLE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HVAE", "HVAEConfig", "PRESETS", "TwoStageVAE", "preset", "secondary_config"]
