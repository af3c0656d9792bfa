"""The model families vaeprobe trains and audits, and their registry
(:mod:`vaeprobe.models.families`: builder, stored config and Probe class per family)."""

from vaeprobe.models.hvae import HVAE, PRESET_TABLE, PRESETS, HVAEConfig, preset
from vaeprobe.models.two_stage import TwoStageVAE, secondary_config

__all__ = ["HVAE", "HVAEConfig", "PRESETS", "PRESET_TABLE", "TwoStageVAE", "preset",
           "secondary_config"]
