"""The hostile-file fuzzer: mutated save pairs of an MLP and a CNN, each loaded in a forked child
with 2 GiB of address space and 5 s, sorted into verdicts.

Damaged files (byte flips, truncation, special files, pairs from two saves) are loaded as they
are: the digests must catch them. Hostile files (JSON field mutations, `.npz` member mutations,
byte flips of the `.npz`) are signed again as a hostile author would, so that the checks behind
the digests are what is tested; a hostile file that loads a different graph is fine if that
graph runs or is refused with a GraphcError at its first call.

CI runs a bounded seeded campaign; GRAPHC_FUZZ_CASES=N (and GRAPHC_FUZZ_SEED=S) runs a long one:
    GRAPHC_FUZZ_CASES=3000 python3 -m pytest -q -s tests/test_io_fuzz.py
"""
from __future__ import annotations

import collections
import json
import os
import resource
import select
import signal
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import OPS, evaluate
from tests.test_io import write_signed

CASES = int(os.environ.get("GRAPHC_FUZZ_CASES", "240"))
SEED = int(os.environ.get("GRAPHC_FUZZ_SEED", "0"))
MEMORY = 2 << 30          # bytes of address space a child may add
SECONDS = 5               # per phase (load, first call), wall and CPU
BAD = ("other exception", "hang", "memory limit exceeded", "loaded silently different")


# the models and their saved pairs -------------------------------------------------------

def models():
    """name -> (graph, feeds by placeholder name): MLP and CNN training steps, as built and
    as optimized (fused and dense nodes)."""
    rng = np.random.default_rng(0)
    out = {}
    for kind in ("mlp", "cnn"):
        if kind == "mlp":
            x = gc.placeholder((None, 6), "float32", "x")
            model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(3)], seed=0)
            xv = rng.normal(size=(4, 6)).astype("float32")
        else:
            x = gc.placeholder((None, 1, 8, 8), "float32", "x")
            model = nn.Sequential([nn.Conv2D(2, 3, activation="relu"), nn.MaxPool2D(2),
                                   nn.Flatten(), nn.Dropout(0.2), nn.Dense(3)], seed=0)
            xv = rng.normal(size=(4, 1, 8, 8)).astype("float32")
        y = gc.placeholder((None,), "int64", "y")
        loss = gc.mean(gc.softmax_cross_entropy(model(x), y))
        graph = gc.Graph([loss], nn.Adam(1e-2).updates(loss, model.params))
        feeds = {"x": xv, "y": np.arange(4) % 3}
        out[kind] = (graph, feeds)
        step = gc.function([x, y], loss, updates=list(graph.updates))
        out[kind + "_opt"] = (step.graph, feeds)
    return out


def run_graph(graph, feeds: dict) -> list[np.ndarray]:
    """Outputs and new variable values of one step (reference interpreter, variables kept)."""
    placeholders = {n.name: n for n in graph.placeholders}
    roots = list(graph.outputs) + [u for _, u in graph.updates]
    return evaluate(roots, {placeholders[k]: v for k, v in feeds.items()})


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype
                                    and np.array_equal(x, y, equal_nan=True)
                                    for x, y in zip(a, b))


# mutations ------------------------------------------------------------------------------

HOSTILE = [None, True, False, 0, 1, -1, 2, 3, 7, 2**31, 2**32 + 1, 2**62 + 1, 2**63, 2**64,
           -2**63, 1e308, float("inf"), float("nan"), -0.0, 0.5, "", "x", "1", "float16",
           "object", "a" * 300, [], [0], [1, 1], [2**63, 1], [[1]], [-1, -1], [None], [0] * 40,
           {"graph": {}}, {"a": 1}]


def hostile_value(rng, old):
    """A replacement for `old`: a hostile constant, or old nudged (ints, lists of ints)."""
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        return int(rng.choice([old + 1, old - 1, old * 2, -old, old + 2**62, 2**63 - old]))
    if isinstance(old, list) and old and rng.random() < 0.5:
        new = list(old)
        i = int(rng.integers(len(new)))
        new[i] = hostile_value(rng, new[i])
        return new
    return HOSTILE[int(rng.integers(len(HOSTILE)))]


def records_of(nodes: list) -> list[dict]:
    """Every record, those inside fused bodies too."""
    out = []
    for r in nodes:
        out.append(r)
        body = r["attrs"].get("body")
        if isinstance(body, dict):
            out += records_of(body["graph"]["nodes"])
    return out


def mutate_document(rng, doc: dict) -> str:
    records = records_of(doc["nodes"])
    roll = rng.random()
    if roll < 0.05:
        key = str(rng.choice(["outputs", "updates", "form"]))
        doc[key] = hostile_value(rng, doc[key])
        return f"json {key}"
    with_attrs = [r for r in records if r["attrs"]]
    if roll < 0.55 and with_attrs:
        r = with_attrs[int(rng.integers(len(with_attrs)))]
        k = sorted(r["attrs"])[int(rng.integers(len(r["attrs"])))]
        if k != "body":
            r["attrs"][k] = hostile_value(rng, r["attrs"][k])
            return f"json {r['op']}.{k}"
    r = records[int(rng.integers(len(records)))]
    key = str(rng.choice(["op", "inputs", "shape", "shape", "dtype", "grad_of", "name",
                          "attrs"]))
    if key == "op":
        r["op"] = str(rng.choice(sorted(OPS)))
    elif key == "dtype":
        r["dtype"] = str(rng.choice(["float16", "float64", "int64", "bool", "uint8"]))
    else:
        r[key] = hostile_value(rng, r[key])
    return f"json {r['op'] if isinstance(r['op'], str) else '?'}.{key}"


def npy(array_or_header, data: bytes = b"") -> bytes:
    if isinstance(array_or_header, np.ndarray):
        import io
        f = io.BytesIO()
        np.lib.format.write_array(f, array_or_header, allow_pickle=False)
        return f.getvalue()
    header = repr(array_or_header).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def bomb(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of a .npy header and `size` zero bytes, and its crc32 (cached)."""
    if size not in BOMBS:
        head = npy({"descr": "<f4", "fortran_order": False, "shape": (size // 4,)})
        z, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
        stream, crc = [z.compress(head)], zlib.crc32(head)
        for _ in range(size >> 20):
            stream.append(z.compress(chunk))
            crc = zlib.crc32(chunk, crc)
        BOMBS[size] = (b"".join(stream) + z.flush(), crc, len(head) + size)
    return BOMBS[size]


BOMBS: dict[int, tuple] = {}


def write_zip(path, members: list[tuple]) -> None:
    """A zip written by hand: (name, data, method) members stored or deflated, or
    (name, raw stream, method, crc, size) members whose stream is already compressed."""
    body, directory = b"", b""
    for member in members:
        name = member[0].encode()
        if len(member) == 3:
            _, data, method = member
            crc, size = zlib.crc32(data), len(data)
            if method == zipfile.ZIP_DEFLATED:
                z = zlib.compressobj(6, zlib.DEFLATED, -15)
                data = z.compress(data) + z.flush()
        else:
            _, data, method, crc, size = member
        fields = (20, 0, method, 0, 0, crc, len(data), min(size, 2**32 - 1), len(name), 0)
        local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *fields) + name
        directory += (b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, *fields, 0, 0,
                                                    0, 0, len(body)) + name)
        body += local + data
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members),
                                        len(directory), len(body), 0)
    open(path, "wb").write(body + directory + end)


def mutate_npz(rng, doc: dict, npz_path) -> str:
    """Rewrite one member of the .npz (the document may change to match it)."""
    with zipfile.ZipFile(npz_path) as z:
        members = [(i.filename, z.read(i), zipfile.ZIP_STORED) for i in z.infolist()]
    stored = [r for r in doc["nodes"] if r["op"] in ("variable", "constant")]
    i = int(rng.integers(len(members)))
    name, data, method = members[i]
    how = str(rng.choice(["bomb", "bomb-declared", "header", "header", "truncate", "extend",
                          "object", "method", "drop", "flip"]))
    if how in ("bomb", "bomb-declared"):
        stream, crc, size = bomb(1 << 30)
        lie = size if rng.random() < 0.5 else int(rng.integers(1, 4096))
        if how == "bomb-declared" and stored:          # the document declares it too
            r = stored[int(rng.integers(len(stored)))]
            r.update(shape=[(1 << 30) // 4], dtype="float32")
            name = f"n{doc['nodes'].index(r)}.npy"
            members = [m for m in members if m[0] != name] + [None]
            i = len(members) - 1
        members[i] = (name, stream, zipfile.ZIP_DEFLATED, crc, lie)
        write_zip(npz_path, members)
        return f"npz {how}"
    if how == "header":
        start = 10 + int.from_bytes(data[8:10], "little")       # where the data begins
        old = eval(data[10:start].decode("latin1"))               # our own file: a dict
        shape = hostile_value(rng, list(old["shape"])) if rng.random() < 0.6 else old["shape"]
        if not (isinstance(shape, (list, tuple))
                and all(isinstance(d, int) and d >= 0 for d in shape)):
            shape = (2**40, 2**40)
        header = {"descr": str(rng.choice(["<f4", "<f8", ">f4", "|O", "<c8", "|V8", "<i8",
                                           old["descr"]])),
                  "fortran_order": bool(rng.random() < 0.5), "shape": tuple(shape)}
        members[i] = (name, npy(header, data[start:]), method)
    elif how == "truncate":
        members[i] = (name, data[:int(rng.integers(len(data)))], method)
    elif how == "extend":
        members[i] = (name, data + bytes(int(rng.integers(1, 5000))), method)
    elif how == "object":
        members[i] = (name, npy({"descr": "|O", "fortran_order": False, "shape": (3,)},
                                b"\x80\x04N."), method)
    elif how == "method":
        members[i] = (name, data, int(rng.choice([zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])))
    elif how == "drop":
        del members[i]
    write_zip(npz_path, members)
    if how == "flip":
        flip_bytes(rng, npz_path)
    return f"npz {how}"


def flip_bytes(rng, path, count: int | None = None) -> None:
    data = bytearray(open(path, "rb").read())
    for _ in range(count or int(rng.integers(1, 4))):
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    open(path, "wb").write(bytes(data))


def special_file(rng, path) -> str:
    os.remove(path)
    kind = str(rng.choice(["fifo", "zero", "urandom", "dir", "empty", "dangling"]))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("zero", "urandom"):
        os.symlink(f"/dev/{kind}", path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "empty":
        open(path, "wb").close()
    else:
        os.symlink(str(path) + ".nowhere", path)
    return kind


def make_case(rng, base: str, folder, other_npz: bytes) -> tuple[str, bool]:
    """Mutate the pair `base` in `folder`; (what was done, whether it is hostile)."""
    json_path, npz_path = folder / f"{base}.json", folder / f"{base}.npz"
    which = str(rng.choice(["json", "npz"]))
    path = json_path if which == "json" else npz_path
    roll = rng.random()
    if roll < 0.2:
        flip_bytes(rng, path)
        return f"flip {which}", False
    if roll < 0.3:
        data = path.read_bytes()
        path.write_bytes(data[:int(rng.integers(len(data)))])
        return f"truncate {which}", False
    if roll < 0.38:
        return f"special {which} {special_file(rng, path)}", False
    if roll < 0.42:
        npz_path.write_bytes(other_npz)                 # a torn pair: another save's arrays
        return "mixed pair", False
    doc = json.loads(json_path.read_text())
    if roll < 0.75:
        what = mutate_document(rng, doc)
    else:
        what = mutate_npz(rng, doc, npz_path)
    write_signed(json_path, doc)
    return what, True


# running one case in a child ------------------------------------------------------------

def child(json_path, graph, feeds, want, listing, hostile, out) -> None:
    """Load (and maybe run) in this forked process; report on the pipe `out`."""
    def say(**kw):
        os.write(out, (json.dumps(kw) + "\n").encode())
    limit = mapped() + MEMORY                  # 2 GiB more than the forked process maps
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (SECONDS, 3 * SECONDS + 1))
    try:
        loaded = gc.load(json_path)
    except gc.GraphcError as e:
        cause = e.__cause__
        if cause is None:
            return say(verdict="GraphcError", detail=str(e)[-160:])
        return say(verdict="memory limit exceeded" if isinstance(cause, MemoryError)
                   else "other exception", detail=f"wrapped {type(cause).__name__}: {cause}")
    except MemoryError:
        return say(verdict="memory limit exceeded", detail="MemoryError")
    except BaseException as e:
        return say(verdict="other exception", detail=f"{type(e).__name__}: {str(e)[:160]}")
    say(phase="loaded")
    resource.setrlimit(resource.RLIMIT_CPU, (3 * SECONDS, 3 * SECONDS + 1))   # cumulative
    try:
        check_loaded(loaded, feeds, want, listing, hostile, say)
    except BaseException as e:
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        say(verdict="other exception", detail=f"after loading: {type(e).__name__}: "
            f"{str(e)[:160]} at {os.path.basename(where.filename)}:{where.lineno}")


def check_loaded(loaded, feeds, want, listing, hostile, say) -> None:
    if not isinstance(loaded, gc.Graph):
        loaded = gc.Graph(loaded if isinstance(loaded, list) else [loaded])
    try:
        have = run_graph(loaded, feeds) if str(loaded) == listing else None
    except Exception:
        have = None
    if have is not None and same(have, want):
        return say(verdict="ok-same")
    if not hostile:
        return say(verdict="loaded silently different")
    try:
        placeholders = loaded.placeholders
        step = gc.function(placeholders, list(loaded.outputs), updates=list(loaded.updates))
        step(*[feeds.get(p.name, np.zeros(0)) for p in placeholders])
        say(verdict="ok-different")
    except gc.GraphcError as e:
        say(verdict="refused at first call", detail=str(e)[:160])
    except MemoryError:
        say(verdict="memory limit exceeded", detail="at first call")
    except Exception as e:
        say(verdict="other exception", detail=f"first call: {type(e).__name__}: {str(e)[:160]}")


def mapped() -> int:
    """Bytes of address space this process maps now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmSize:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return 0


def run_case(json_path, graph, feeds, want, listing, hostile) -> tuple[str, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child
        os.close(read)
        try:
            child(json_path, graph, feeds, want, listing, hostile, write)
        finally:
            os._exit(0)
    os.close(write)
    lines, buffer, phase = [], b"", "load"
    deadline = time.monotonic() + SECONDS
    while True:
        ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hang", f"during {phase}"
        chunk = os.read(read, 65536)
        if not chunk:
            break
        buffer += chunk
        *done, buffer = buffer.split(b"\n")
        for line in done:
            msg = json.loads(line)
            if msg.get("phase") == "loaded":
                phase, deadline = "first call", time.monotonic() + 2 * SECONDS
            lines.append(msg)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    verdicts = [m for m in lines if "verdict" in m]
    if not verdicts:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        if sig == signal.SIGXCPU:
            return "hang", f"CPU limit during {phase}"
        return "other exception", f"child died (status {status}) during {phase}"
    return verdicts[-1]["verdict"], verdicts[-1].get("detail", "")


def campaign(folder, cases: int, seed: int):
    rng = np.random.default_rng(seed)
    bases = models()
    originals = {}
    for name, (graph, feeds) in bases.items():
        gc.save(graph, folder / "orig" / name)
        want = run_graph(graph, feeds)
        for v in graph.variables:            # the other save of a torn pair: other values
            v.value = v.value + 1
        gc.save(graph, folder / "other" / name)
        for v in graph.variables:
            v.value = v.value - 1
        originals[name] = (graph, feeds, want, str(gc.load(folder / "orig" / name)))
    counts, examples = collections.Counter(), collections.defaultdict(list)
    for i in range(cases):
        name = sorted(bases)[i % len(bases)]
        graph, feeds, want, listing = originals[name]
        work = folder / f"case{i % 4}"
        for p in (work / f"{name}.json", work / f"{name}.npz"):
            if p.is_dir() and not p.is_symlink():
                os.rmdir(p)
            elif os.path.lexists(p):
                os.remove(p)
        work.mkdir(exist_ok=True)
        for ext in ("json", "npz"):
            (work / f"{name}.{ext}").write_bytes((folder / "orig" / f"{name}.{ext}")
                                                 .read_bytes())
        what, hostile = make_case(rng, name, work,
                                  (folder / "other" / f"{name}.npz").read_bytes())
        verdict, detail = run_case(work / f"{name}.json", graph, feeds, want, listing,
                                   hostile)
        counts[verdict] += 1
        if len(examples[verdict]) < 5:
            examples[verdict].append(f"{name} {what}: {detail}")
    return counts, examples


def test_hostile_files_never_crash_hang_blow_up_or_load_wrong(tmp_path):
    (tmp_path / "orig").mkdir()
    (tmp_path / "other").mkdir()
    counts, examples = campaign(tmp_path, CASES, SEED)
    print(f"\nfuzz campaign: {CASES} cases, seed {SEED}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items())))
    for verdict in BAD + ("refused at first call",):
        for line in examples.get(verdict, []):
            print(f"  {verdict}: {line}")
    assert sum(counts.values()) == CASES
    assert counts["GraphcError"] > 0 and counts["ok-same"] >= 0
    bad = {k: counts[k] for k in BAD if counts[k]}
    assert not bad, f"bad verdicts {bad}: {dict(examples)}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")
def test_special_files_are_refused_quickly(tmp_path):
    x = gc.placeholder((2,), name="x")
    gc.save(x * gc.variable(np.ones(2, "float32"), name="w"), tmp_path / "g")
    os.rename(tmp_path / "g.json", tmp_path / "good.json")
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    os.symlink("/dev/urandom", tmp_path / "urandom.json")
    for name in ("fifo", "zero", "urandom"):
        started = time.monotonic()
        with pytest.raises(gc.GraphcError, match="is not a regular file"):
            gc.load(tmp_path / name)
        assert time.monotonic() - started < 2
