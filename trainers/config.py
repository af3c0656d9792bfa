"""The training config: one frozen dataclass, named presets, and the CLI generated from it."""

import argparse
import dataclasses
from dataclasses import dataclass, field

from vaeprobe.models import PRESETS as MODEL_PRESETS
from vaeprobe.models.hvae import training_defaults

OBJECTIVES = ("elbo", "distortion", "two-stage")


def _help(text: str, default=None):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    preset: str = _help("model preset: " + ", ".join(MODEL_PRESETS), "demo-cpu")
    objective: str = _help("elbo | distortion (Lagrangian, Appendix B.2) | two-stage", "distortion")
    likelihood: str = _help("decoder: fixed | learned | optimal | per_pixel | dmol (empty: "
                            "optimal for distortion and two-stage, whose loss never uses sigma; "
                            "the preset's for elbo)", "")
    sigma: float = _help("decoder sigma on the [0, 1] scale for likelihood=fixed", 1.0)
    merge: str = _help("posterior merge: precision | concat (empty: the preset's)", "")
    gamma: float = _help("distortion target: per-image sum of squared error on [0, 1]", 8.0)
    beta: float = _help("KL weight of the elbo objective (1 = the true ELBO)", 1.0)
    data: str = _help("training data (train split), e.g. patches32, digits8", "patches32")
    data_root: str = _help("directory of a torchvision dataset", "")
    steps: int = _help("optimizer steps in all", 3000)
    batch_size: int = _help("global batch (split across processes)", 32)
    lr: float = _help("Adam learning rate of the model", 2e-4)
    lambda_lr: float = _help("Adam learning rate of the Lagrange multiplier", 2e-4)
    sigma_lr: float = _help("Adam learning rate of a learned decoder log sigma (sigma-VAE): "
                            "a scalar that must travel ~3 nats, so faster than the weights", 1e-2)
    lambda_init: float = _help("initial lambda (0.9999 mimics KL annealing)", 0.9999)
    ema_rate: float = _help("EMA decay of the weights kept for analysis", 0.999)
    grad_clip: float = _help("gradient-norm clipping", 200.0)
    skip_threshold: float = _help("skip updates whose gradient norm exceeds this (or is NaN)",
                                  1000.0)
    max_skip_fraction: float = _help("stop if more of the last 100 updates were skipped", 0.9)
    ckpt_every: int = _help("checkpoint every N steps (plus log-spaced early ones from 100)",
                            1000)
    log_every: int = _help("append to metrics.jsonl every N steps", 10)
    primary: str = _help("two-stage: the primary run directory (its EMA weights, frozen)", "")
    seed: int = _help("seed of weights, data order and noise", 0)
    device: str = _help("cpu | cuda | cuda:N (empty: cuda when available)", "")
    workers: int = _help("loader processes for data decoded per item (image files); tensor "
                         "data (embedded, npz, folders, SVHN/CIFAR/MNIST) stays on the device", 2)
    compile: bool = _help("torch.compile the model (CUDA)", False)
    threads: int = _help("torch intra-op threads per process (0: the OMP_NUM_THREADS environment "
                         "variable if set, else the CPU cores this process may use divided by "
                         "the processes on this node, torchrun's LOCAL_WORLD_SIZE)", 0)
    amp: str = _help("none | bf16 (autocast; CUDA)", "none")
    channels_last: bool = _help("channels_last memory format (CUDA)", False)
    deterministic: bool = _help("deterministic algorithms (bit-identical resume on CPU)", False)
    progress: bool = _help("show a progress bar", True)
    out: str = _help("run directory", "runs/demo")
    resume: bool = _help("continue the run in --out from its latest checkpoint", False)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(MODEL_PRESETS)}")
        if not self.gamma > 0:
            raise ValueError(f"gamma (the distortion target) must be > 0, got {self.gamma}")
        if self.steps < 1 or self.batch_size < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, ckpt_every and log_every must be >= 1")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.objective == "two-stage" and not self.primary:
            raise ValueError("objective two-stage needs --primary RUN_DIR (a trained primary run)")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: automatic), got {self.threads}")
        if not 0 < self.lambda_init < 1:
            raise ValueError(f"lambda_init must be in (0, 1), got {self.lambda_init}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # fields that may change between a run and its resumption
    RESUMABLE_CHANGES = ("resume", "steps", "device", "progress", "threads", "workers",
                         "compile")

    def differs_from(self, stored: dict) -> dict:
        """Fields (other than operational ones) whose values differ from a stored config."""
        mine = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        # a field added after the run was written is read as its default
        return {k: (stored.get(k, defaults[k]), v) for k, v in mine.items()
                if k not in self.RESUMABLE_CHANGES and stored.get(k, defaults[k]) != v}


# Training presets: defaults per model preset, applied under explicit flags (one source:
# vaeprobe.models.hvae.PRESET_TABLE).
PRESETS = {name: training_defaults(name) for name in MODEL_PRESETS}


def parser() -> argparse.ArgumentParser:
    """An argparse parser generated from TrainConfig (defaults None: unset flags stay unset)."""
    result = argparse.ArgumentParser(
        prog="python -m trainers.train", description="Train a vaeprobe VAE.",
        epilog="CPU threads: each process uses --threads intra-op threads; by default "
               "OMP_NUM_THREADS when set, else its usable cores / processes on the node "
               "(torchrun's LOCAL_WORLD_SIZE). On cores shared with other jobs, fewer threads "
               "(OMP_NUM_THREADS=1) can train many times faster. The choice is printed at start "
               "and stored in the run's config.json.")
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        kind = item.type if isinstance(item.type, type) else eval(item.type)  # noqa: S307
        if kind is bool:
            result.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=item.metadata["help"])
        else:
            result.add_argument(flag, type=kind, default=None,
                                help=f"{item.metadata['help']} (default: {item.default})")
    return result


def from_args(argv=None) -> TrainConfig:
    """Config from the command line: dataclass defaults < preset < explicit flags."""
    explicit = {k: v for k, v in vars(parser().parse_args(argv)).items() if v is not None}
    return make(**explicit)


def make(**values) -> TrainConfig:
    """Config from keyword values, with the preset's training defaults underneath."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    preset = values.get("preset", TrainConfig.preset)
    merged = dict(PRESETS.get(preset, {}))
    merged.update(values)
    return TrainConfig(**merged)
