"""The audit draws its images once (vaeprobe.audit.subset): the plan holds them, every section
reads them from there (the shared pass all, a costly section the first k drawn), and the
audit's fingerprint records them, so a resumed audit never mixes sections of other images."""

import contextlib

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import data as vdata
from vaeprobe.audit import AuditMismatchError
from vaeprobe.audit import run as audit_run
from vaeprobe.audit.registry import sections
from vaeprobe.audit.subset import ImageSubset, choose_subset

DATA = "digits8:test"
pytestmark = pytest.mark.usefixtures("offline_weights")


def test_the_first_k_drawn_are_what_select_gives_for_k():
    dataset = vdata.load(DATA)
    for n_images in (40, None, 10_000):  # a part, all of them, more than there are
        with pytest.warns(UserWarning, match="has only 297") if n_images == 10_000 else \
                contextlib.nullcontext():
            subset = choose_subset(dataset, n_images, seed=5)
        assert torch.equal(subset.indices, vdata.select(dataset, len(subset), 5))
        for k in (1, 2, 7, len(subset) - 1, len(subset)):
            first = subset.first(k)
            assert torch.equal(first, vdata.select(dataset, k, 5)), (n_images, k)
            assert set(first.tolist()) <= set(subset.first(k + 1).tolist())  # nested
    assert len(choose_subset(dataset, None, 5)) == len(dataset)


def test_the_digest_follows_the_order_and_repeats_are_refused():
    a, b = ImageSubset(torch.tensor([4, 1, 9]), 0), ImageSubset(torch.tensor([1, 4, 9]), 0)
    assert torch.equal(a.indices, b.indices) and a.digest != b.digest  # same images, other k
    assert a.digest == ImageSubset(torch.tensor([4, 1, 9]), 0).digest
    assert a.first(2).tolist() == [1, 4] and b.first(2).tolist() == [1, 4]
    assert a.first(1).tolist() == [4] and b.first(1).tolist() == [1]
    with pytest.raises(ValueError, match="each dataset index once"):
        ImageSubset(torch.tensor([3, 3]), 0)


@pytest.fixture
def counted(resolutions):
    """Calls of the audit's subset chooser (and what it chose), of data.select, of as_probe
    (the model) and of fit_probe (the images at the model's size)."""
    resolutions["choose"] = []

    def choose(dataset, n_images, seed):
        resolutions["choose"].append(choose_subset(dataset, n_images, seed))
        return resolutions["choose"][-1]

    resolutions.monkeypatch.setattr(audit_run, "choose_subset", choose)
    resolutions.track("select", (vdata, "select"))
    return resolutions


def test_one_draw_per_audit_and_every_section_reads_it(tiny_run, counted):
    settings = {"likelihood": {"k": 2, "n_images": 5}, "progressive": {"n_images": 50},
                "information": {"hierarchical_images": 4},
                "precision": {"dtypes": ["bfloat16"], "cpu_slowdown_limit": 1e9}}
    report = vp.audit(tiny_run, DATA, n_images=12, seed=3, progress=False, settings=settings,
                      sections=list(sections()),
                      feature_extractor="random-convnet-TEST-ONLY")
    assert len(counted["choose"]) == 1  # one draw for the whole audit
    subset = counted["choose"][0]
    assert counted["select"] == 0  # no section drew images of its own
    assert counted["as_probe"] == counted["fit_probe"] == 1  # nor resolved the model again
    assert all(ds.attrs["status"] == "ok" for ds in report.values()), \
        {name: ds.attrs.get("error") for name, ds in report.items()}
    np.testing.assert_array_equal(report["reconstructions"]["image"], subset.indices)
    np.testing.assert_array_equal(report["likelihood"]["image"], subset.first(5))
    assert int(report["progressive"].attrs["n_images"]) == 12  # never above the audit's
    assert report.attrs["subset_sha256"] == subset.digest
    # each costly section on its own, on the images select gives, equals its audit section
    alone = vp.iwae(tiny_run, DATA, k=2, n_images=5, seed=3, progress=False)
    np.testing.assert_array_equal(alone["log_likelihood"], report["likelihood"]["log_likelihood"])


def test_a_resumed_audit_refuses_another_subset_of_the_same_images(tiny_run, tmp_path,
                                                                   monkeypatch):
    options = dict(n_images=6, seed=1, sections=["model_card", "bits"], progress=False)
    vp.audit(tiny_run, DATA, out=tmp_path / "a", **options)

    def reversed_order(dataset, n_images, seed):  # the same six images, drawn in another order
        drawn = choose_subset(dataset, n_images, seed)
        return ImageSubset(drawn.order.flip(0), seed)

    monkeypatch.setattr(audit_run, "choose_subset", reversed_order)
    with pytest.raises(AuditMismatchError, match="subset_sha256"):
        vp.audit(tiny_run, DATA, out=tmp_path / "a", **options)


def test_a_new_section_with_a_core_gets_the_first_images_drawn(tiny_run, counted):
    import xarray as xr

    from vaeprobe.audit import registry

    seen = []

    def core(evaluation, *, progress=True, scale=1.0):
        seen.append(evaluation)
        return xr.Dataset({"n": ((), len(evaluation.indices) * scale)}, attrs={"status": "ok"})

    def public(probe, data, *, n_images=4, seed=0, progress=True, scale=1.0):
        raise AssertionError("the audit calls the core, not the public function")

    section = registry.Section(name="toy_core", title="Toy core", order=96,
                               summary=lambda ds: "", compute=public, core=core,
                               image_limit=lambda probe, options: 3, default=False)
    registry.register(section)
    try:
        report = vp.audit(tiny_run, DATA, sections=["toy_core"], n_images=10, seed=2,
                          settings={"toy_core": {"scale": 2.0}}, progress=False)
    finally:
        registry._REGISTRY.pop("toy_core")
    assert float(report["toy_core"]["n"]) == 6.0
    subset = counted["choose"][0]
    assert torch.equal(seen[0].indices, subset.first(3)) and seen[0].n_images == 3
    assert seen[0].seed == 2 and counted["select"] == 0
    with pytest.raises(ValueError, match="give compute= .* too"):
        registry.Section(name="x", title="x", order=1, summary=str, core=core,
                         accumulator=object)
