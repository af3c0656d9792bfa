import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import vaeprobe as vp
from vaeprobe import atomic, io


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
    write_bytes = Path.write_bytes

    def crash(self, data):  # vp.save writes the encoded bytes to a temporary, then renames
        write_bytes(self, b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_bytes", crash)
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


def test_results_take_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = vp.save(_result(), tmp_path / "r.nc")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
        os.umask(0o027)
        path = vp.save(_result(), tmp_path / "s.nc")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_stale_temporaries_of_killed_writers_are_cleaned_on_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone
    tag = atomic.host_tag()
    orphan = tmp_path / f".r.nc.{tag}-{dead.pid}-abcd1234.nc.tmp"
    old = tmp_path / ".x.nc.k3j_9a2b.nc.tmp"  # the earlier mkstemp naming, an hour old
    live = tmp_path / f".y.nc.{tag}-{os.getpid()}-abcd1234.nc.tmp"  # a writer still running
    recent = tmp_path / ".z.nc.k3j_9a2c.nc.tmp"  # maybe being written now
    mine = tmp_path / ".notes.tmp"  # not one of ours
    for path in (orphan, old, live, recent, mine):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * io.STALE_AFTER_S,) * 2)
    vp.save(_result(), tmp_path / "r.nc")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["r.nc", live.name, recent.name, mine.name])


def test_unwritable_output_is_caught_before_the_work_and_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(io.OutputError, match=f"cannot write --out {blocker}/sub/r.nc"):
        io.check_writable(blocker / "sub" / "r.nc", "--out")
    with pytest.raises(io.OutputError, match="is a directory"):
        io.check_writable(tmp_path, "--out")
    assert io.check_writable(tmp_path / "new" / "r.nc") == tmp_path / "new" / "r.nc"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    ds = _result()
    with pytest.raises(OSError, match=f"could not write {blocker}/r.nc.*still|unchanged"):
        vp.save(ds, blocker / "r.nc")
    assert "rate" in ds  # the result is kept


def test_a_read_only_directory_is_refused(tmp_path, monkeypatch):
    """Root ignores permission bits, so a refused create stands in for a read-only mount."""
    real_open = os.open
    def refuse(path, flags, *args):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(io.OutputError, match=f"{tmp_path / 'ro'} is not writable"):
        io.check_writable(tmp_path / "ro" / "r.nc", "--out")
    with pytest.raises(io.OutputError, match=f"could not write {tmp_path / 'ro' / 'r.nc'}"):
        vp.save(_result(), tmp_path / "ro" / "r.nc")
