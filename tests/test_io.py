import json

import numpy as np
import pytest
import xarray as xr

import vaeprobe as vp
from vaeprobe import io


def _result():
    ds = xr.Dataset(
        {"rate": (("step", "frequency"), np.arange(6.0).reshape(2, 3), {"units": "nats"})},
        coords={"step": [100, 200], "frequency": [0.0, 0.25, 0.5],
                "checkpoint": ("step", ["a.pt", "b.pt"])},
    )
    ds.attrs = io.provenance("demo", {"window": "hann", "ks": None}, dataset="digits8:test",
                             seed=0, flag=True, nothing=None, nested={"a": [1, 2]},
                             values=[1.5, 2.5])
    return ds


def test_round_trip_keeps_every_attr_and_coordinate(tmp_path):
    ds = _result()
    back = vp.open_results(vp.save(ds, tmp_path / "r.nc"))
    xr.testing.assert_identical(back.drop_attrs(), ds.drop_attrs())
    assert set(back.attrs) == set(ds.attrs)
    for key, value in ds.attrs.items():
        np.testing.assert_array_equal(back.attrs[key], value)
    assert back.attrs["flag"] == 1 and json.loads(back.attrs["nothing"]) is None
    assert json.loads(back.attrs["nested"]) == {"a": [1, 2]}
    assert io.parameters(back) == {"window": "hann", "ks": None}
    assert back["rate"].attrs["units"] == "nats"
    for key in ("vaeprobe_version", "created_at", "analysis"):
        assert key in back.attrs


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    vp.save(_result(), path)
    before = path.read_bytes()
    def crash(self, *args, **kwargs):
        open(args[0], "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(xr.Dataset, "to_netcdf", crash)
    with pytest.raises(KeyboardInterrupt):
        vp.save(_result(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="xarray.Dataset"):
        vp.save({"a": 1}, tmp_path / "x.nc")
    with pytest.raises(FileNotFoundError):
        vp.open_results(tmp_path / "missing.nc")
    with pytest.raises(NotADirectoryError):
        vp.checkpoints(tmp_path / "nope")
