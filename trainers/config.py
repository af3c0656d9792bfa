"""The training config: one frozen dataclass, named presets, and the CLI generated from it."""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from trainers.objectives import objectives
from vaeprobe.models import PRESETS as MODEL_PRESETS
from vaeprobe.models.likelihoods import LIKELIHOODS

OBJECTIVES = tuple(objectives)  # registration order: the CLI's choices


def _help(text: str, default=None):
    return field(default=default, metadata={"help": text})


def field_type(item: dataclasses.Field) -> tuple[type, bool]:
    """(the declared type, whether None is allowed) of a TrainConfig field: ``str | None``
    gives ``(str, True)``."""
    kind = eval(item.type) if isinstance(item.type, str) else item.type  # noqa: S307
    members = typing.get_args(kind)
    if members:
        return next(member for member in members if member is not type(None)), \
            type(None) in members
    return kind, False


def unset(name: str, value):
    """A stored value as this version reads it: ``""`` in a field whose unset value is None
    (how the config.json of runs trained by earlier versions stored "unset") reads as None."""
    if value == "" and name in OPTIONAL:
        return None
    return value


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's settings, one field per ``python -m trainers.train`` flag.

    A field typed ``str | None`` is None when unset (the flag absent): the preset's or the
    automatic choice, as its help says. An empty string there, as ``--device ""`` or a
    config.json written by an earlier version gives it, reads as None.
    """

    preset: str = _help("model preset: " + ", ".join(MODEL_PRESETS), "demo-cpu")
    objective: str = _help("; ".join(f"{name}: {objectives.get(name).help}"
                                     for name in OBJECTIVES), "distortion")
    likelihood: str | None = _help("decoder: fixed | learned | optimal | per_pixel | dmol "
                                   "(unset: optimal for distortion and two-stage, whose loss "
                                   "never uses sigma; the preset's for elbo)")
    sigma: float = _help("decoder sigma on the [0, 1] scale for likelihood=fixed", 1.0)
    merge: str | None = _help("posterior merge: precision | concat (unset: the preset's)")
    gamma: float = _help("distortion target: per-image sum of squared error on [0, 1]", 8.0)
    beta: float = _help("KL weight of the elbo objective (1 = the true ELBO)", 1.0)
    data: str = _help("training data (train split), e.g. patches32, digits8", "patches32")
    data_root: str | None = _help("directory of a torchvision dataset")
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
    primary: str | None = _help("two-stage: the primary run directory (its EMA weights, "
                                "frozen)")
    seed: int = _help("seed of weights, data order and noise", 0)
    device: str | None = _help("cpu | cuda | cuda:N (unset: cuda when available)")
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
        for name in OPTIONAL:  # "" from an earlier version's config.json: unset
            object.__setattr__(self, name, unset(name, getattr(self, name)))
        self._check_types()
        self._check_numbers()
        if self.objective not in objectives:  # the registry now: one registered after import
            raise ValueError(f"objective must be one of {tuple(objectives)}, got "
                             f"{self.objective!r}")
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(MODEL_PRESETS)}")
        if not self.gamma > 0:
            raise ValueError(f"gamma (the distortion target) must be > 0, got {self.gamma}")
        if self.steps < 1 or self.batch_size < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, ckpt_every and log_every must be >= 1")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        declared = objectives.get(self.objective).fields + \
            tuple(filter(None, [objectives.get(self.objective).target]))
        unknown = [name for name in declared if not hasattr(self, name)]
        if unknown:
            raise ValueError(f"objective {self.objective!r} reads config fields {unknown} that "
                             f"TrainConfig lacks; add them to TrainConfig (trainers/config.py)")
        if objectives.get(self.objective).needs_primary and not self.primary:
            raise ValueError(f"objective {self.objective} needs --primary RUN_DIR (a trained "
                             f"primary run)")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: automatic), got {self.threads}")
        if self.likelihood is not None and self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS} (or None: the "
                             f"preset's), got {self.likelihood!r}")
        if not 0 < self.lambda_init < 1:
            raise ValueError(f"lambda_init must be in (0, 1), got {self.lambda_init}")

    def _check_types(self) -> None:
        """Every field of its declared type (an edited config.json or a Python caller may
        give a string for a number); ints are accepted where floats are declared."""
        for item in dataclasses.fields(self):
            kind, optional = field_type(item)
            value = getattr(self, item.name)
            ok = (optional and value is None) or (isinstance(value, bool) if kind is bool else
                  isinstance(value, (int, float)) and not isinstance(value, bool)
                  if kind is float else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else
                  isinstance(value, kind))
            if not ok:
                raise ValueError(f"{item.name} must be {kind.__name__}, got "
                                 f"{type(value).__name__} {value!r}"[:200])

    # float fields: (low, high, low open, high open); every one must also be finite
    RANGES = {
        "sigma": (0.0, None, True, False), "gamma": (0.0, None, True, False),
        "beta": (0.0, None, False, False), "lr": (0.0, None, True, False),
        "lambda_lr": (0.0, None, True, False), "sigma_lr": (0.0, None, True, False),
        "lambda_init": (0.0, 1.0, True, True), "ema_rate": (0.0, 1.0, False, True),
        "grad_clip": (0.0, None, True, False), "skip_threshold": (0.0, None, True, False),
        "max_skip_fraction": (0.0, 1.0, True, False),
    }

    def _check_numbers(self) -> None:
        """Every float flag finite and in its range, named with its flag."""
        from vaeprobe.validate import finite

        for name, (low, high, low_open, high_open) in self.RANGES.items():
            finite(getattr(self, name), "--" + name.replace("_", "-"), low=low, high=high,
                   low_open=low_open, high_open=high_open)
        for name in ("seed", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # fields that may change between a run and its resumption; ``out`` never counts, so a
    # moved or copied run directory resumes
    RESUMABLE_CHANGES = ("resume", "steps", "device", "progress", "threads", "workers",
                         "compile", "out")

    def differs_from(self, stored: dict) -> dict:
        """Fields (other than operational ones) whose values differ from a stored config."""
        mine = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        # a field added after the run was written is read as its default
        stored = {k: unset(k, stored.get(k, defaults[k])) for k in mine}
        return {k: (stored[k], v) for k, v in mine.items()
                if k not in self.RESUMABLE_CHANGES and stored[k] != v}


# fields whose unset value is None (typed ``str | None``)
OPTIONAL = tuple(item.name for item in dataclasses.fields(TrainConfig)
                 if field_type(item)[1])


# Training presets: the trainer's defaults per model preset (vaeprobe.models.PRESETS), applied
# under explicit flags (TrainConfig field -> value).
PRESETS = {
    "tiny-8": dict(batch_size=32, ckpt_every=100, lambda_lr=1e-2, lr=2e-3, steps=300),
    "tiny-16": dict(batch_size=32, ckpt_every=100, lambda_lr=1e-2, lr=2e-3, steps=300),
    "demo-cpu": dict(batch_size=32, ckpt_every=250, lambda_lr=5e-3, lr=1e-3, steps=2000),
    "paper-svhn": dict(batch_size=32, ckpt_every=10_000, steps=350_000),
    "paper-celeba": dict(batch_size=16, ckpt_every=10_000, steps=350_000),
}


# flags with a fixed set of values: argparse lists them in --help and refuses others
CHOICES = {"objective": OBJECTIVES, "preset": tuple(MODEL_PRESETS), "likelihood": LIKELIHOODS,
           "merge": ("precision", "concat"), "amp": ("none", "bf16")}


def preset_table() -> str:
    """The training defaults each preset sets, as a text table (the --help epilog)."""
    fields = sorted({key for values in PRESETS.values() for key in values},
                    key=[f.name for f in dataclasses.fields(TrainConfig)].index)
    header = ["preset"] + ["--" + name.replace("_", "-") for name in fields]
    rows = [[name] + [f"{values.get(key, getattr(TrainConfig, key)):g}"
                      if isinstance(values.get(key, getattr(TrainConfig, key)), float)
                      else str(values.get(key, getattr(TrainConfig, key))) for key in fields]
            for name, values in PRESETS.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


EPILOG = """\
defaults per --preset (explicit flags win; other flags default as shown above):
{table}

CPU threads: each process uses --threads intra-op threads; by default OMP_NUM_THREADS when set,
else its usable cores / processes on the node (torchrun's LOCAL_WORLD_SIZE). On cores shared
with other jobs, fewer threads (OMP_NUM_THREADS=1) can train many times faster. The choice is
printed at start and logged (metrics.jsonl: threads).

Ctrl-C or SIGTERM saves a checkpoint at the current step and prints how to resume;
--out DIR --resume alone continues a run with its stored config (only --steps, --device,
--progress and --threads may change; a moved or copied run directory resumes).

example:
  python -m trainers.train --preset demo-cpu --objective distortion --gamma 8 \\
      --data patches32 --out runs/my-run
"""


def parser() -> argparse.ArgumentParser:
    """An argparse parser generated from TrainConfig (defaults None: unset flags stay unset).

    The help shows each flag's effective default: the dataclass default, or, for the fields a
    preset sets, the value of the default preset and the table of all presets in the epilog.
    """
    result = argparse.ArgumentParser(
        prog="python -m trainers.train", description="Train a vaeprobe VAE.",
        epilog=EPILOG.format(table=preset_table()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    by_preset = {key for values in PRESETS.values() for key in values}
    default_preset = PRESETS[TrainConfig.preset]
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        kind, _ = field_type(item)
        text = item.metadata["help"]
        if kind is bool:
            result.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{text} (default: {item.default})")
            continue
        if item.name in by_preset:
            default = default_preset.get(item.name, item.default)
            shown = (f"default: from --preset, {default:g} for {TrainConfig.preset}"
                     if isinstance(default, float) else
                     f"default: from --preset, {default} for {TrainConfig.preset}")
        else:
            shown = "default: unset" if item.default is None else f"default: {item.default}"
        choices = CHOICES.get(item.name)
        result.add_argument(flag, type=kind, default=None, choices=choices,
                            metavar="{" + ",".join(choices) + "}" if choices else None,
                            help=f"{text} ({shown})")
    return result


def from_args(argv=None) -> TrainConfig:
    """Config from the command line: dataclass defaults < preset < explicit flags; with
    --resume, the run's stored config < explicit flags."""
    explicit = {k: v for k, v in vars(parser().parse_args(argv)).items() if v is not None}
    return make(**explicit)


def make(**values) -> TrainConfig:
    """Config from keyword values, with the preset's training defaults underneath.

    With ``resume=True`` and a run already in ``out``, the run's stored config is underneath
    instead: ``make(out="runs/demo", resume=True)`` continues it as it was started (a field the
    stored config lacks takes its default; fields that may not change are checked by
    :meth:`TrainConfig.differs_from` when the trainer opens the run).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    stored = _stored_config(values) if values.get("resume") else None
    if stored is not None:
        merged = {k: v for k, v in stored.items() if k in known}
        merged.update(values)
        try:
            return TrainConfig(**merged)
        except ValueError as error:
            raise ValueError(f"{error} (the stored config of "
                             f"{values.get('out', TrainConfig.out)}/config.json with the flags "
                             f"given; was the file edited?)") from None
    preset = values.get("preset", TrainConfig.preset)
    merged = dict(PRESETS.get(preset, {}))
    merged.update(values)
    return TrainConfig(**merged)


def _stored_config(values: dict) -> dict | None:
    """The training config stored in the run directory ``values['out']`` names, or None."""
    from vaeprobe.run import Run

    run = Run(values.get("out", TrainConfig.out))
    try:
        return run.config
    except OSError:
        return None
