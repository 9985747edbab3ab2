"""nn.save_params / nn.load_params: names as data, mode, all-or-nothing loads, bounded reads."""
from __future__ import annotations

import os
import stat
import zipfile

import numpy as np
import pytest

import graphc as gc
from graphc import nn


def variables(*names, seed=0):
    rng = np.random.default_rng(seed)
    return [gc.variable(rng.normal(size=(2, 3)).astype("float32"), name=n) for n in names]


def test_any_name_round_trips_even_numpy_keywords(tmp_path):
    names = ("allow_pickle", "file", "args", "kwds", "compress", "a/b", "x.npy")
    saved, loaded = variables(*names, seed=1), variables(*names, seed=2)
    nn.save_params(saved, tmp_path / "p.npz")
    nn.load_params(loaded, tmp_path / "p.npz")
    for s, t in zip(saved, loaded):
        np.testing.assert_array_equal(t.value, s.value)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as npz:    # a plain .npz
        assert sorted(npz.files) == sorted(names)
        np.testing.assert_array_equal(npz["file"], saved[1].value)


def test_file_mode_is_0644_like_gc_save(tmp_path):
    nn.save_params(variables("w"), tmp_path / "p.npz")
    gc.save(variables("w")[0] * 2.0, tmp_path / "g")
    for name in ("p.npz", "g.json", "g.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644


def test_a_failing_load_changes_no_variable(tmp_path):
    nn.save_params(variables("a", "b", "c", seed=1), tmp_path / "p.npz")
    a, b, c = variables("a", "b", "c", seed=2)
    wrong = gc.variable(np.zeros((3, 2), "float32"), name="c")       # c has another shape
    before = [a.value.copy(), b.value.copy()]
    with pytest.raises(gc.GraphcError, match="'c' has shape \\[2, 3\\], expected \\[3, 2\\]"):
        nn.load_params([a, b, wrong], tmp_path / "p.npz")
    for v, old in zip((a, b), before):
        np.testing.assert_array_equal(v.value, old)
    np.testing.assert_array_equal(wrong.value, 0)
    ints = gc.variable(np.zeros((2, 3), "int32"), name="c")           # float into int: refused
    with pytest.raises(gc.GraphcError, match="'c' has dtype float32, which does not fit"):
        nn.load_params([a, b, ints], tmp_path / "p.npz")
    np.testing.assert_array_equal(a.value, before[0])


def test_damaged_member_is_a_graphc_error_and_changes_nothing(tmp_path):
    path = tmp_path / "p.npz"
    saved = variables("a", "b", seed=1)
    nn.save_params(saved, path)
    data = bytearray(path.read_bytes())
    start = data.index(saved[1].value.tobytes())   # flip a byte of b's data: the CRC fails
    data[start + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    a, b = variables("a", "b", seed=2)
    old = a.value.copy()
    with pytest.raises(gc.GraphcError, match="cannot read parameters: .*'b' cannot be read"):
        nn.load_params([a, b], path)
    np.testing.assert_array_equal(a.value, old)


def zip_with(path, members: dict[str, tuple[bytes, int]]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, (data, method) in members.items():
            z.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def npy_bytes(array) -> bytes:
    import io
    f = io.BytesIO()
    np.lib.format.write_array(f, array, allow_pickle=False)
    return f.getvalue()


def test_members_of_no_variable_are_never_decompressed(tmp_path, monkeypatch):
    w = variables("w", seed=3)[0]
    bomb = np.zeros(1 << 28, "uint8")                    # 256 MiB of zeros, deflated
    path = tmp_path / "p.npz"
    zip_with(path, {"w.npy": (npy_bytes(w.value), zipfile.ZIP_DEFLATED),
                    "junk.npy": (npy_bytes(bomb), zipfile.ZIP_DEFLATED)})
    assert os.path.getsize(path) < 1 << 20
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    target = variables("w", seed=4)[0]
    nn.load_params([target], path)
    np.testing.assert_array_equal(target.value, w.value)
    assert opened == ["w.npy"]


def test_a_member_larger_than_its_variable_is_refused_before_inflating(tmp_path):
    path = tmp_path / "p.npz"
    zip_with(path, {"w.npy": (npy_bytes(np.zeros(1 << 28, "uint8")), zipfile.ZIP_DEFLATED)})
    target = variables("w")[0]
    with pytest.raises(gc.GraphcError, match="'w' .* is larger than its declared shape"):
        nn.load_params([target], path)


@pytest.mark.parametrize("junk", [b"not a zip", b"PK\x03\x04" + bytes(60), b""])
def test_junk_files_are_graphc_errors(tmp_path, junk):
    (tmp_path / "p.npz").write_bytes(junk)
    with pytest.raises(gc.GraphcError, match="cannot read parameters"):
        nn.load_params(variables("w"), tmp_path / "p.npz")


def test_special_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    for path in (tmp_path / "fifo.npz", "/dev/zero", tmp_path):
        with pytest.raises(gc.GraphcError, match="is not a regular file"):
            nn.load_params(variables("w"), path)


def test_leftover_temp_files_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "p.npz"
    leftover = tmp_path / "p.npz.graphc-tmp-0123abcd"       # what a killed save leaves
    leftover.write_bytes(b"x" * 1000)
    other = tmp_path / "q.npz.graphc-tmp-0123abcd"          # another target's: kept
    other.write_bytes(b"x")
    nn.save_params(variables("w"), path)
    assert sorted(os.listdir(tmp_path)) == ["p.npz", "q.npz.graphc-tmp-0123abcd"]
