"""The model family vaeprobe trains and audits. Their registry (builder, stored config, Probe
class per family) is the checkpoint format's: :mod:`vaeprobe.adapters.native`."""

from vaeprobe.models.hvae import HVAE, PRESET_TABLE, PRESETS, HVAEConfig, preset
from vaeprobe.models.two_stage import TwoStageVAE, secondary_config

__all__ = ["HVAE", "HVAEConfig", "PRESETS", "PRESET_TABLE", "TwoStageVAE", "preset",
           "secondary_config"]
