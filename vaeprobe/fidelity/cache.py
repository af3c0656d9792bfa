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
from vaeprobe import distributed
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
    cached = _read(path, key, len(indices))
    # under torchrun the ranks agree first (one reads the entry only if all can), then each
    # featurises its block and rank 0 writes the whole
    if distributed.all_true(cached is not None):
        return cached, True
    local = distributed.shard(indices, device)
    features = featurise(vdata.iterate_batches(dataset, batch_size, local, device=device),
                         extractor, device,
                         progress_bar(len(local), f"reference {extractor.name}", progress))
    features = distributed.cat(features).to(features.device)
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"features": features, "key": key,
                        "sha256": _digest(features)}, tmp)
    return features, False


def _digest(features: torch.Tensor) -> str:
    """sha256 of the features' float32 bytes: a cache entry proves its contents."""
    return hashlib.sha256(features.detach().float().cpu().contiguous().numpy().tobytes()
                          ).hexdigest()


def _read(path: Path, key: str, n: int) -> torch.Tensor | None:
    """The features of a cache entry; None (then recomputed) when missing, damaged, of
    another key or count, or when its bytes do not match the sha256 written with them (an
    entry zeroed or edited on disk; entries of older versions carry no digest)."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        features = entry["features"]
        if entry.get("key") != key or len(features) != n or entry.get("sha256") != \
                _digest(features):
            return None
        return features
    except (RuntimeError, OSError, KeyError, EOFError, AttributeError, TypeError, ValueError):
        return None


def featurise(batches, extractor: Extractor, device, bar) -> torch.Tensor:
    """Features of every batch; ``bar`` (see _analysis.progress_bar) counts the images."""
    parts = []
    for x in batches:
        parts.append(extractor(x.to(device)))
        bar.update(len(x))
    bar.close()
    return torch.cat(parts)
