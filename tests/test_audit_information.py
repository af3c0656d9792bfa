"""The audit's information section: vp.information on the audit's images, sized for
hierarchical models, in the report's order."""

import numpy as np

import vaeprobe as vp


def test_information_section_is_vp_information_on_the_audit_images(tiny_run, digits_test,
                                                                   tmp_path):
    report = vp.audit(tiny_run, digits_test, n_images=40, sections=["bits", "information"],
                      progress=False, settings={"information": {"hierarchical_images": 12}},
                      out=tmp_path / "audit")
    on_disk = vp.open_results(tmp_path / "audit" / "sections" / "information.nc")
    np.testing.assert_array_equal(on_disk["rate"].values, report["information"]["rate"].values)
    ds = report["information"]
    assert ds.attrs["status"] == "ok"
    assert list(report) == ["bits", "information"]
    from vaeprobe.audit.registry import sections

    assert not sections()["information"].default  # opt-in: N^2 work for hierarchical models
    direct = vp.information(tiny_run, digits_test, n_images=12, seed=0, progress=False)
    np.testing.assert_allclose(ds["total_rate"].values, direct["total_rate"].values, rtol=1e-6)
    # rate (of the same draws) = I + marginal KL, per layer; I is bounded by log N (N = 12)
    np.testing.assert_allclose(ds["rate_sampled"].values,
                               ds["mutual_information"].values + ds["marginal_kl"].values,
                               rtol=1e-4, atol=1e-3)
    assert ds.attrs["identity_holds"] == 1
    assert float(ds["total_mutual_information"]) <= np.log(12) + 1e-6
    assert "I(x; z)" in report.summary()


def test_information_section_skips_a_deterministic_autoencoder():
    import torch

    class Deterministic(torch.nn.Module):
        def encode(self, x):
            return x.flatten(1)[:, :4]

        def decode(self, z):
            return torch.sigmoid(z.sum(1)).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)

    probe = vp.Probe.from_module(Deterministic(), image_shape=(1, 4, 4), scale="none")
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    report = vp.audit(probe, images, n_images=6, sections=["information"], progress=False)
    assert report["information"].attrs["status"] == "skipped"
    assert "deterministic" in report["information"].attrs["skipped"]
