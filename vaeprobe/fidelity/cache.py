"""Reference features, cached on disk under a key of everything they depend on.

The key covers the reference images' content hash and indices, n, resolution, extractor, its
weights hash and the protocol, so a stale entry can never be returned. Entries are written
atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vaeprobe import data as vdata
from vaeprobe._analysis import progress_bar
from vaeprobe.fidelity.extractors import Extractor
from vaeprobe.fidelity.metrics import PROTOCOL
from vaeprobe.io import atomic_path


def reference_key(identity: str, indices: torch.Tensor, n: int, resolution, extractor: str,
                  weights_sha256: str) -> str:
    """Cache key: changes with the images, n, resolution, extractor or weights."""
    digest = hashlib.sha256(json.dumps(dict(
        identity=identity, n=int(n), resolution=list(resolution), extractor=extractor,
        weights=weights_sha256, protocol=PROTOCOL), sort_keys=True).encode())
    digest.update(indices.numpy().tobytes())
    return digest.hexdigest()[:32]


def _cache_path(key: str) -> Path:
    return vdata.cache_dir() / "fidelity" / f"reference-{key}.pt"


def reference_features(dataset, indices, extractor: Extractor, batch_size: int, device,
                       progress: bool) -> tuple[torch.Tensor, bool]:
    """(features, came_from_cache) of the reference images, cached by :func:`reference_key`."""
    identity = vdata.dataset_identity(dataset)
    key = reference_key(identity, indices, len(indices), tuple(dataset[0].shape[1:]),
                        extractor.name, extractor.weights_sha256)
    path = _cache_path(key)
    if path.exists():
        try:
            return torch.load(path, weights_only=True)["features"], True
        except (RuntimeError, OSError, KeyError, EOFError):
            pass  # damaged entry: recompute
    features = featurise(vdata.iterate_batches(dataset, batch_size, indices), extractor, device,
                         progress_bar(len(indices), f"reference {extractor.name}", progress))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"features": features}, tmp)
    return features, False


def featurise(batches, extractor: Extractor, device, bar) -> torch.Tensor:
    """Features of every batch; ``bar`` (see _analysis.progress_bar) counts the images."""
    parts = []
    for x in batches:
        parts.append(extractor(x.to(device)))
        bar.update(len(x))
    bar.close()
    return torch.cat(parts)
