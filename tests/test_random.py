"""vaeprobe.random: Philox4x32-10 against Random123's known answers and a scalar reference,
the transforms' moments, and the layout's batch-, chunk- and device-independence."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

import vaeprobe as vp
from vaeprobe import random as vr

# Random123's tests/kat_vectors for philox4x32_10: (counter, key, output)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def reference_philox(counter, key, rounds=10):
    """Philox4x32 as the paper writes it, on Python integers (no tensors, no overflow)."""
    c, k = list(counter), list(key)
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1],
             p0 & 0xFFFFFFFF]
        k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
    return tuple(c)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in vr.philox4x32(counter, key)) == expected
    assert reference_philox(counter, key) == expected


def test_vectorised_philox_equals_the_scalar_reference():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2 ** 32, size=(200, 4), dtype=np.uint64)
    key = (0xDEADBEEF, 0x01234567)
    words = vr.philox4x32([torch.tensor(counters[:, j].astype(np.int64)) for j in range(4)], key)
    ours = torch.stack(words, 1).numpy()
    expected = np.array([reference_philox([int(v) for v in row], key) for row in counters])
    np.testing.assert_array_equal(ours, expected)


def test_uniforms_are_the_words_scaled_and_laid_out_as_documented():
    seed, stream, slot, image, position = 2 ** 40 + 7, 1, 3, 9, 5
    values = vr.counter_draws("uniform", seed, stream, slot, [image], [position], (10,),
                              dtype=torch.float64)[0]
    key = (seed & 0xFFFFFFFF, seed >> 32)
    words = [w for block in range(3)
             for w in reference_philox((block, slot + 2 ** 16 * stream, position, image), key)]
    np.testing.assert_array_equal(values.numpy(), np.array(words[:10]) / 2.0 ** 32)
    single = vr.counter_draws("uniform", seed, stream, slot, [image], [position], (10,))[0]
    np.testing.assert_array_equal(single.numpy(),
                                  (np.array(words[:10]) >> 8).astype(np.float32) / 2 ** 24)
    first, second = words[0], words[1]  # normals: Box-Muller on word pairs
    normal = vr.counter_draws("normal", seed, stream, slot, [image], [position], (2,),
                              dtype=torch.float64)[0].numpy()
    radius = math.sqrt(-2 * math.log((first + 1) / 2 ** 32))
    angle = 2 * math.pi * second / 2 ** 32
    np.testing.assert_allclose(normal, [radius * math.cos(angle), radius * math.sin(angle)],
                               rtol=1e-12)


def test_normal_and_uniform_moments():
    n = vr.counter_draws("normal", 0, 0, 0, range(50), range(40), (101,), dtype=torch.float64)
    z = n.flatten().numpy()  # 202,000 draws
    se = 1 / math.sqrt(z.size)
    assert abs(z.mean()) < 4 * se and abs(z.var() - 1) < 4 * math.sqrt(2) * se
    assert abs(stats.skew(z)) < 4 * math.sqrt(6) * se
    assert abs(stats.kurtosis(z)) < 4 * math.sqrt(24) * se
    assert stats.kstest(z, "norm").pvalue > 1e-3
    u = vr.counter_draws("uniform", 0, 1, 0, range(50), range(40), (101,)).flatten().numpy()
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-3
    # neighbouring draws, images and layers are uncorrelated
    grid = n.reshape(50, 40, 101)
    for a, b in ((grid[:, :-1], grid[:, 1:]), (grid[:-1], grid[1:])):
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 5 * se * 1.5
    other_layer = vr.counter_draws("normal", 0, 0, 1, range(50), range(40), (101,))
    assert abs(np.corrcoef(z, other_layer.flatten().numpy())[0, 1]) < 5 * se


def test_streams_do_not_depend_on_batch_or_chunk():
    shapes = [(2, 1, 1), (3, 4, 4)]
    whole = vr.per_image_noise(shapes, vr.image_streams(5, [3, 8, 11]), 7, "cpu")
    streams = vr.image_streams(5, [3, 8, 11])
    chunks = [vr.per_image_noise(shapes, streams, k, "cpu") for k in (3, 3, 1)]
    alone = [vr.per_image_noise(shapes, vr.image_streams(5, [i]), 7, "cpu") for i in (3, 8, 11)]
    for layer in range(2):
        by_chunks = torch.cat([c[layer].reshape(3, -1, *shapes[layer]) for c in chunks], 1)
        torch.testing.assert_close(by_chunks.reshape(21, *shapes[layer]), whole[layer],
                                   rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([a[layer] for a in alone]), whole[layer],
                                   rtol=0, atol=0)
    one_layer = vr.per_image_noise(shapes[:1], vr.image_streams(5, [3, 8, 11]), 7, "cpu")
    torch.testing.assert_close(one_layer[0], whole[0], rtol=0, atol=0)
    rows = vr.per_row_random(torch.rand, (6, 5), vr.image_streams(1, [0, 4], stream=1), "cpu")
    again = vr.per_row_random(torch.rand, (3, 5), vr.image_streams(1, [4], stream=1), "cpu")
    torch.testing.assert_close(rows[3:], again, rtol=0, atol=0)
    assert not torch.equal(rows[:3], again)


def test_streams_state_replays_and_keys_differ():
    streams = vr.image_streams(0, [1, 2])
    state = streams.get_state()
    first = vr.per_row_random(torch.randn, (2, 8), streams, "cpu")
    streams.set_state(state)
    torch.testing.assert_close(vr.per_row_random(torch.randn, (2, 8), streams, "cpu"), first,
                               rtol=0, atol=0)
    assert not torch.equal(vr.per_row_random(torch.randn, (2, 8), streams, "cpu"), first)
    for other in (vr.image_streams(1, [1, 2]), vr.image_streams(0, [1, 2], stream=3)):
        assert not torch.equal(vr.per_row_random(torch.randn, (2, 8), other, "cpu"), first)
    with pytest.raises(ValueError, match="split evenly"):
        vr.per_row_random(torch.rand, (3, 2), streams, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU/CUDA "
                    "agreement of the draws is checked where one is present")
def test_same_draws_on_cpu_and_cuda():
    words_cpu = vr.philox4x32((torch.arange(4096), 7, 3, 11), (1, 2))
    words_gpu = vr.philox4x32((torch.arange(4096, device="cuda"), 7, 3, 11), (1, 2))
    for a, b in zip(words_cpu, words_gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=0)
    for kind in ("normal", "uniform"):
        cpu = vr.counter_draws(kind, 3, 1, 2, range(8), range(4), (3, 16, 16))
        gpu = vr.counter_draws(kind, 3, 1, 2, range(8), range(4), (3, 16, 16), device="cuda")
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


class RandomOps(TorchDispatchMode):
    """Counts the calls of torch's random-number kernels."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_iwae_draws_in_o_layers_calls(monkeypatch):
    from vaeprobe.adapters.native import probe_for
    from vaeprobe.models import HVAE, preset

    torch.manual_seed(0)
    probe = probe_for(HVAE(preset("tiny-8")), "cpu")
    calls = []
    original = vr.counter_draws
    monkeypatch.setattr(vr, "counter_draws",
                        lambda *a, **k: calls.append(a) or original(*a, **k))
    with RandomOps() as ops:
        vp.iwae(probe, "digits8:test", k=64, n_images=16, batch_size=16, progress=False)
        chunks = len(calls) // len(probe.layers)
        vp.iwae(probe, "digits8:test", k=64, n_images=16, batch_size=16, chunk=16,
                progress=False)
    # one randperm (the seeded subset), then 4 chunks x 3 layers of counter-based draws; the
    # legacy per-image generators made 16 x 64 x 3 + 1 = 3,073 random-number calls
    assert ops.count == 2 and len(calls) == (chunks + 4) * len(probe.layers)
    assert 1 + chunks * len(probe.layers) <= 200  # the default chunk's count
    with RandomOps() as legacy:
        probe.encode(torch.zeros((2, 1, 8, 8), dtype=torch.uint8), 3,
                     vr.image_generators(0, [0, 1]))
    assert legacy.count == 2 * 3 * len(probe.layers)  # the counter counts
