"""Checks on untrusted input, made before anything is allocated, unpickled or overwritten.

What a hostile or careless file can do to vaeprobe, and where it is stopped:

- **A torch that can be tricked into unpickling.** ``torch.load(weights_only=True)`` has
  published bypasses in old torch (:data:`KNOWN_BYPASSES`); :func:`require_safe_torch` refuses
  to read a torch file with such a torch, naming the CVEs.
- **A config that asks for the machine's memory.** Every format checks its config's keys
  (types, signs, ranges: :func:`check_fields`) and estimates the parameters and the activation
  memory of one image before building the network (:func:`check_budget`); past
  :func:`memory_limit` (``VAEPROBE_MAX_MEMORY``, ``vp.load(max_memory=...)``, CLI
  ``--max-memory``; default :data:`MEMORY_FRACTION` of the available memory) it refuses, naming
  the file, the key and the estimate.
- **Weights that would silently give wrong numbers.** Integer tensors where the network has
  floating-point ones are refused; non-finite values are counted per tensor and refused unless
  ``allow_nonfinite=True`` (:func:`check_weights`).
- **Numbers in arguments.** :func:`finite`, :func:`positive_int` name the argument and the fix.

The checks live in three modules, re-exported here: :mod:`vaeprobe.safety` (torch, weights,
image files), :mod:`vaeprobe.budget` (the memory limit and the load policy) and
:mod:`vaeprobe.checks` (config values, numbers in arguments).
"""

from vaeprobe.budget import (  # noqa: F401
    MEMORY_ENV,
    MEMORY_FRACTION,
    BudgetError,
    allow_nonfinite,
    available_memory,
    check_budget,
    check_file_size,
    count_parameters,
    human_bytes,
    load_policy,
    memory_limit,
    parse_bytes,
)
from vaeprobe.checks import (  # noqa: F401
    ConfigError,
    check_fields,
    check_value,
    finite,
    json_object,
    positive_int,
    temperatures,
)
from vaeprobe.safety import (  # noqa: F401
    IMAGE_PIXELS_ENV,
    KNOWN_BYPASSES,
    MAX_IMAGE_PIXELS,
    TORCH_FLOOR,
    ImageFileError,
    UnsafeTorchError,
    WeightsError,
    check_weights,
    max_image_pixels,
    nonfinite_counts,
    read_image,
    refused_pickle_reason,
    require_safe_torch,
    torch_version,
)

__all__ = ["BudgetError", "ConfigError", "KNOWN_BYPASSES", "MEMORY_ENV", "MEMORY_FRACTION",
           "TORCH_FLOOR", "UnsafeTorchError", "WeightsError", "check_budget", "check_fields",
           "check_value", "check_weights", "finite", "load_policy", "memory_limit",
           "positive_int", "require_safe_torch", "temperatures"]
