"""Damaged index files and crashes during save (issue 6, "Hardening").

1. Byte-flip sweep: small indexes (f32 / f16 / sq8 / sq4; lists empty and not; default and custom
   ids; an empty index) are saved, then every byte of the header, centroids, codec parameters,
   directory and footer, and a strided plus random sample of the list data, is flipped. Each
   damaged file is loaded with mmap and verify on and off. What must happen is exact, from the
   "File safety" rules in cpp/src/ivf_io.cpp: a byte the loader always checks raises a clear
   ValueError in every mode; list data (codes, ids, the zero gaps between lists) raises with
   verify=True and loads with verify=False, and that index must then be safe to use (search in
   both modes, reconstruct, list sizes, add, save and reload).
2. Forged sweep: the same flips, then every checksum recomputed (corrupt_helpers.reseal), so that
   the damage reaches the structural checks: those reject it, or the index is valid and safe.
3. Truncation sweep and other non-index inputs: each load raises a clear error.
4. Crash during save: a child process saves an index to P over and over; it is stopped mid-write
   (the temporary file exists and is partly written), P is read, then the child is killed with
   SIGKILL, SIGTERM or SIGINT. P must be byte-identical to what it was, load, and leave nothing
   behind that confuses the next save.

All sweeps run in-process: a loader crash would kill pytest, which is the point (it must not).
``-m slow`` runs the exhaustive variants: every byte of every file, with all eight single-bit
masks and 0xFF on the always-checked regions and three masks on the list data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import corrupt_helpers as ch
import numpy as np
import pytest
from mudg_fast import IVFIndex
from mudg_fast._arrays import magnitude_limit

MODES = [(True, True), (True, False), (False, True), (False, False)]  # (mmap, verify)
CLEAR = re.compile(r"corrupted|truncated|damaged|invalid|inconsistent|not a mudg_fast|empty|newer|"
                   r"not a regular")
MASKS = (0xFF, 0x01, 0x80, 0x10, 0x40, 0x04, 0x20, 0x02, 0x08)
DATA_MASKS = (0x01, 0x80, 0xFF)  # exhaustive sweep of the list data (the bulk of each file)
PAYLOAD_STRIDE, PAYLOAD_RANDOM = 7, 12  # default sample of each list-data region

COUNTS: Counter = Counter()
KILLED: list = []  # (signal, bytes written when stopped, final size)


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Prints how many damaged files were tried (the closing note of issue 6 quotes these)."""
    yield
    if not COUNTS:
        return
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [(f"corrupt files: {COUNTS['corruptions']} corruptions tried "
              f"({COUNTS['bitflip']} byte flips, {COUNTS['forged']} forged with valid checksums), "
              f"{COUNTS['loads']} loads, {COUNTS['safe_loads']} damaged files loaded and used safely; "
              f"{COUNTS['truncations']} truncations / extensions tried; "
              f"{COUNTS['kills']} saves killed mid-write")]
    kinds = sorted(k for k in COUNTS if isinstance(k, tuple))
    lines.append("  by region: " + ", ".join(f"{a}/{b}={COUNTS[(a, b)]}" for a, b in kinds))
    if KILLED:
        lines.append("  saves killed at (signal, bytes of the temporary written / final size): "
                     + ", ".join(f"{s} {w}/{f}" for s, w, f in KILLED))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if tr is not None:
            tr.write("\n")  # after the progress dots
        for line in lines:
            print(line) if tr is None else tr.write_line(line)


@pytest.fixture
def fast_dir(tmp_path):
    """A scratch folder in memory (/dev/shm) where available: the sweeps write thousands of small
    files, and fsync on a real disk would dominate their time."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="mudg_corrupt_", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


# ---------------------------------------------------------------------------------------------
# the indexes under test


def make_index(codec: str, kind: str) -> IVFIndex:
    """kind: "mixed" (odd dim, some lists empty, custom ids including huge ones; ids are never negative),
    "seq" (default ids, lists of several blocks), "empty" (trained, no vectors)."""
    rng = np.random.default_rng(["mixed", "seq", "empty"].index(kind) * 10 + ch.CODEC_NAMES.index(codec))
    if kind == "mixed":
        dim, nlist, n = 5, 6, 37
        strong = rng.standard_normal((3, dim)).astype(np.float32)
        weak = 1e-3 * rng.standard_normal((nlist - 3, dim)).astype(np.float32)  # never nearest
        cent = np.vstack([strong, weak])
        x = (strong[rng.integers(0, 3, n)] * 3 + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
        ids = rng.choice(np.array([2**40 + 7, 2**50, 2**62, 2**63 - 1], np.int64), 4, replace=False)
        ids = np.concatenate([ids, rng.choice(10**12, n - 4, replace=False).astype(np.int64)])
    elif kind == "seq":
        dim, nlist, n = 8, 4, 70
        cent = rng.standard_normal((nlist, dim)).astype(np.float32)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        ids = None
    else:
        dim, nlist, n = 3, 2, 0
        cent = rng.standard_normal((nlist, dim)).astype(np.float32)
        x = rng.standard_normal((8, dim)).astype(np.float32)
        ids = None
    ix = IVFIndex(dim, nlist, codec=codec).set_centroids(cent)
    ix.train_codec(x)
    if kind == "mixed":  # an extension record (user metadata) in the file
        ix.set_metadata({"kind": kind, "note": "caf\u00e9", "ids": [1, 2, 3]})
    if n:
        ix.add(x, ids)
    sizes = ix.list_sizes()
    if kind == "mixed":
        assert (sizes == 0).any() and (sizes > 0).any()
    if kind == "seq":
        assert (sizes > 16).any()  # a list of more than one block
    return ix


CASES = [(codec, kind) for kind in ("mixed", "seq", "empty") for codec in ch.CODEC_NAMES]


def case_id(case):
    return f"{case[0]}-{case[1]}"


# ---------------------------------------------------------------------------------------------
# checking one load


def check_error(e: BaseException, path: Path, what: str) -> None:
    assert isinstance(e, (ValueError, OSError)), f"{what}: {type(e).__name__}: {e}"
    assert CLEAR.search(str(e)), f"{what}: the message does not name the problem: {e}"
    assert path.name in str(e), f"{what}: the message does not name the file: {e}"


class Victim:
    """A saved index file and its undamaged reference; loads damaged versions of it in place."""

    def __init__(self, ix: IVFIndex, folder: Path, threads: int | None = 1):
        self.threads = threads  # one thread: tiny searches would mostly time thread start-up
        self.folder = folder
        self.path = folder / "victim.ivf"
        ix.save(self.path)
        self.data = self.path.read_bytes()
        self.regions = ch.regions(self.data)
        self.h = ch.header(self.data)
        self.q = np.random.default_rng(7).standard_normal((5, ix.dim)).astype(np.float32)
        self.k = 6
        ref = IVFIndex.load(self.path, mmap=False)
        self.ref_search = ref.search(self.q, self.k, nprobe=ref.nlist, mode="per_query")
        self.ref_ids = [ref.list_ids(l) for l in range(ref.nlist)]
        self.ref_sizes = ref.list_sizes()
        self.resave = folder / "resaved.ivf"

    def write(self, content: bytes) -> None:
        """Overwrites the file in place (same length: an index never sees its file shrink)."""
        assert len(content) == len(self.data)
        with open(self.path, "r+b") as f:
            f.write(content)

    def load_all_modes(self, expect: dict, what: str, check=None) -> None:
        """Loads in every (mmap, verify) mode. expect[verify] is "raise", "load" or "either"."""
        for mmap, verify in MODES:
            COUNTS["loads"] += 1
            label = f"{what}, mmap={mmap}, verify={verify}"
            try:
                ix = IVFIndex.load(self.path, mmap=mmap, verify=verify, num_threads=self.threads)
            except Exception as e:  # noqa: BLE001 - checked right here
                assert expect[verify] != "load", f"{label}: should load, raised {type(e).__name__}: {e}"
                check_error(e, self.path, label)
                continue
            assert expect[verify] != "raise", f"{label}: the damage was not detected"
            if check is not None:
                check(ix, label)
            self.exercise(ix, label)
            COUNTS["safe_loads"] += 1
            del ix  # before the file changes again

    def exercise(self, ix: IVFIndex, label: str) -> None:
        """Every read path of a loaded index, plus add and save: nothing may crash."""
        n, dim = ix.ntotal, ix.dim
        sizes = ix.list_sizes()
        assert sizes.shape == (ix.nlist,) and sizes.min() >= 0 and sizes.sum() == n, label
        ids = np.concatenate([ix.list_ids(l) for l in range(ix.nlist)])
        assert len(ids) == n, label
        for mode in ("per_query", "list_major"):
            s, i = ix.search(self.q, self.k, nprobe=ix.nlist, mode=mode)
            assert s.shape == i.shape == (len(self.q), self.k) and s.dtype == np.float32, label
            assert np.isin(i[i != -1], ids).all(), f"{label}: search returned ids that are not stored"
        if n:
            rec = ix.reconstruct(ids[:20])
            assert rec.shape == (min(20, n), dim) and rec.dtype == np.float32, label
        ix.save(self.resave)
        again = IVFIndex.load(self.resave, mmap=False, verify=True)
        assert again.ntotal == n and np.array_equal(again.list_sizes(), sizes), label
        for l in range(ix.nlist):
            assert np.array_equal(again.list_ids(l), ix.list_ids(l)), label
        ix.add(self.q[:2])
        assert ix.ntotal == n + 2 and ix.list_sizes().sum() == n + 2, label

    def same_as_reference(self, ix: IVFIndex, label: str) -> None:
        s, i = ix.search(self.q, self.k, nprobe=ix.nlist, mode="per_query")
        assert np.array_equal(i, self.ref_search[1]) and np.array_equal(s, self.ref_search[0]), label
        assert all(np.array_equal(ix.list_ids(l), r) for l, r in enumerate(self.ref_ids)), label

    def ids_unchanged(self, ix: IVFIndex, label: str) -> None:
        assert all(np.array_equal(ix.list_ids(l), r) for l, r in enumerate(self.ref_ids)), label

    def sizes_unchanged(self, ix: IVFIndex, label: str) -> None:
        assert np.array_equal(ix.list_sizes(), self.ref_sizes), label


# ---------------------------------------------------------------------------------------------
# what each damaged region must do


def flip_plan(regions, exhaustive: bool, seed: int):
    """(offset, mask, region) triples: every byte of the always-checked regions (header,
    centroids, parameters, directory, gaps, footer) and, by default, a strided plus random
    sample of each list-data region including its first and last byte, one mask per byte (the
    masks rotate, so every bit position is hit). Exhaustive: every byte, every single-bit mask
    and 0xFF on the always-checked regions, three masks on the list data."""
    rng = np.random.default_rng(seed)
    plan, i = [], 0
    for r in regions:
        if exhaustive or r.checked == "always":
            offs = range(r.start, r.stop)
        else:
            picks = set(range(r.start, r.stop, PAYLOAD_STRIDE)) | {r.start, r.stop - 1}
            picks |= set(rng.integers(r.start, r.stop, min(len(r), PAYLOAD_RANDOM)).tolist())
            offs = sorted(picks)
        for off in offs:
            if exhaustive:
                masks = MASKS if r.checked == "always" else DATA_MASKS
            else:
                masks = (MASKS[i % len(MASKS)],)
            for mask in masks:
                plan.append((off, mask, r))
            i += 1
    return plan


def bitflip_expect(region):
    """Plain damage: the always-checked regions are caught in every mode; list data only by
    verify (verify=False does not read it, by design)."""
    if region.checked == "always":
        return {True: "raise", False: "raise"}
    return {True: "raise", False: "load"}


def params_valid(h: dict, content: bytes) -> bool:
    d, codec = h["dim"], h["codec"]
    p = np.frombuffer(content, np.float32, h["params_count"], h["params_offset"])
    if not np.isfinite(p).all():
        return False
    # decoded values must stay within the magnitude limit of every float32 input
    limit = magnitude_limit(d)
    if codec == 2:  # sq8: vmin[d], step[d] > 0
        vmin, step = p[:d].astype(np.float64), p[d:].astype(np.float64)
        return bool((step > 0).all() and (np.abs(vmin) <= limit).all()
                    and (np.abs(vmin + 255 * step) <= limit).all())
    if codec == 3:  # sq4: 16 sorted levels per dimension (and the residual form's list scales)
        return ch.sq4_state_valid(content, limit)
    return True


def forged_expect(victim: Victim, region, off: int, content: bytes):
    """Damage under valid checksums: exactly what the structural checks must decide."""
    k = ch.kind(region)
    h = victim.h
    both = lambda v: {True: v, False: v}
    if k == "header":
        field = region.name.split(".", 1)[1]
        new_codec = ch.header(content)["codec"]
        if field == "codec" and h["ntotal"] == 0 and {h["codec"], new_codec} <= {0, 1}:
            return both("load")  # f32 <-> f16 of an index without vectors: the same file layout
        return both("raise")
    if k == "centroids":
        a = off - (off - h["centroids_offset"]) % 4
        return both("load" if np.isfinite(np.frombuffer(content, np.float32, 1, a)[0]) else "raise")
    if k == "params":
        return both("load" if params_valid(h, content) else "raise")
    if k == "extensions":
        valid = ch.extensions_valid(content) and ch.sq4_state_valid(content, magnitude_limit(h["dim"]))
        return both("load" if valid else "raise")
    if region.name == "meta_padding":
        return both("load")  # dead bytes, covered only by the (here forged) meta checksum
    if k in ("directory", "footer"):
        return both("raise")
    if k == "padding":
        return {True: "raise", False: "load"}
    return both("load")  # codes, ids: any bytes make a valid (if different) index


def extra_check(victim: Victim, region):
    """What undetected damage may and may not change (list data with verify=False)."""
    k = ch.kind(region)
    if k == "padding":
        return victim.same_as_reference  # gaps carry no data
    if k == "codes":
        return victim.ids_unchanged
    if k == "ids":
        return victim.sizes_unchanged
    return None


def run_sweep(victim: Victim, exhaustive: bool, forged: bool, seed: int) -> int:
    tried = 0
    label = "forged" if forged else "bitflip"
    for off, mask, region in flip_plan(victim.regions, exhaustive, seed):
        b = bytearray(victim.data)
        b[off] ^= mask
        content = ch.reseal(bytes(b)) if forged else bytes(b)
        if content == victim.data:
            continue  # a flip of a checksum field that resealing undid
        victim.write(content)
        what = f"{label} {region.name} @{off} ^{mask:#04x}"
        expect = forged_expect(victim, region, off, content) if forged else bitflip_expect(region)
        victim.load_all_modes(expect, what, extra_check(victim, region))
        tried += 1
        COUNTS[(label, ch.kind(region))] += 1
    victim.write(victim.data)
    COUNTS["corruptions"] += tried
    COUNTS[label] += tried
    return tried


def hit_kinds(victim: Victim) -> set:
    return {ch.kind(r) for r in victim.regions}


def always_checked_bytes(victim: Victim) -> int:
    return sum(len(r) for r in victim.regions if r.checked == "always")


# ---------------------------------------------------------------------------------------------
# 1-2. byte flips and forged damage


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_byte_flips_are_detected_or_harmless(case, fast_dir):
    victim = Victim(make_index(*case), fast_dir)
    tried = run_sweep(victim, exhaustive=False, forged=False, seed=1)
    expected_kinds = {"header", "centroids", "directory", "footer"}
    if victim.h["ntotal"]:
        expected_kinds |= {"codes", "ids"}
    assert expected_kinds <= hit_kinds(victim)
    assert tried >= always_checked_bytes(victim)  # every byte of those, plus the list-data sample


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forged_damage_is_rejected_or_safe(case, fast_dir):
    victim = Victim(make_index(*case), fast_dir)
    assert ch.reseal(victim.data) == victim.data  # the Python checksum matches the native one
    tried = run_sweep(victim, exhaustive=False, forged=True, seed=2)
    assert tried >= always_checked_bytes(victim) - 24  # less the three checksum fields resealing undoes


@pytest.mark.slow
@pytest.mark.parametrize("forged", [False, True], ids=["bitflip", "forged"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_byte_every_mask(case, forged, fast_dir):
    victim = Victim(make_index(*case), fast_dir)
    run_sweep(victim, exhaustive=True, forged=forged, seed=3)


def forge_fields(data: bytes, **fields) -> bytes:
    """Sets header fields (8-byte ones as raw u64) and reseals: a hostile, self-consistent file."""
    b = bytearray(data)
    for name, value in fields.items():
        off, fmt = next((o, f) for n, o, f in ch.HEADER_FIELDS if n == name)
        width = struct.calcsize(fmt)
        struct.pack_into("<Q" if width == 8 else "<I", b, off, value % (1 << (8 * width)))
    return ch.reseal(bytes(b))


def forge_dir(data: bytes, l: int, codes=None, size=None, ids=None, **fields) -> bytes:
    b = bytearray(forge_fields(data, **fields)) if fields else bytearray(data)
    h = ch.header(data)
    off = h["directory_offset"] + ch.DIR_ENTRY * l
    c0, s0, i0 = struct.unpack_from("<QqQ", b, off)
    struct.pack_into("<QQQ", b, off, (c0 if codes is None else codes) % 2**64,
                     (s0 if size is None else size) % 2**64, (i0 if ids is None else ids) % 2**64)
    return ch.reseal(bytes(b))


def test_hostile_values_with_valid_checksums(fast_dir):
    """Values chosen to overflow 64-bit offset arithmetic or to allocate huge amounts. Before the
    loader checked them, a huge codes, ids or directory offset, or a list size whose byte counts
    wrap around 2^64 (with ntotal raised to match), made load() or the first search segfault."""
    victim = Victim(make_index("sq8", "seq"), fast_dir)
    h, d = victim.h, victim.data
    big = [2**64 - 8, 2**64 - 64, 2**63, 2**63 - 1, 2**62, 2**40, 2**31, 2**24]
    files = []
    for v in big:
        files += [forge_dir(d, 0, codes=v), forge_dir(d, 0, ids=v), forge_dir(d, 1, size=v)]
        files += [forge_fields(d, **{name: v}) for name in (
            "directory_offset", "data_offset", "dim", "nlist", "ntotal", "params_count",
            "params_offset", "file_size")]
        # a list size whose byte counts wrap to small numbers, with ntotal raised to match
        files.append(forge_dir(d, 0, size=v, ntotal=h["ntotal"] - ch.directory(d)[0][1] + v))
    files += [forge_fields(d, dim=-1), forge_fields(d, nlist=0), forge_fields(d, ntotal=-1),
              forge_fields(d, codec=7), forge_fields(d, metric=1), forge_fields(d, version=0),
              forge_fields(d, header_size=64), forge_fields(d, centroids_offset=0)]
    for content in files:
        victim.write(content)
        victim.load_all_modes({True: "raise", False: "raise"}, "hostile header/directory value")
        COUNTS["corruptions"] += 1
        COUNTS["forged"] += 1
    # non-finite centroids and codec parameters under valid checksums
    for off, value in [(h["centroids_offset"], np.nan), (h["centroids_offset"] + 4, np.inf),
                       (h["params_offset"], np.nan), (h["params_offset"] + 4 * h["dim"], 0.0),
                       (h["params_offset"] + 4 * h["dim"], -1.0)]:
        b = bytearray(d)
        struct.pack_into("<f", b, off, value)
        victim.write(ch.reseal(bytes(b)))
        victim.load_all_modes({True: "raise", False: "raise"}, f"value {value} @{off}")
        COUNTS["corruptions"] += 1
        COUNTS["forged"] += 1


def test_damaged_version_field_is_not_reported_as_newer_format(fast_dir):
    victim = Victim(make_index("f32", "seq"), fast_dir)
    b = bytearray(victim.data)
    b[9] ^= 0x10  # version 2 -> 4098, checksum no longer matches
    victim.write(bytes(b))
    with pytest.raises(ValueError, match="corrupted .* or was written by a newer"):
        IVFIndex.load(victim.path)
    victim.write(forge_fields(victim.data, version=3))  # a consistent newer header
    with pytest.raises(ValueError, match="version 3, newer than this mudg_fast supports .*upgrade"):
        IVFIndex.load(victim.path)


def test_undetected_damage_with_verify_false_is_confined_to_the_list_data(fast_dir):
    """The documented trade-off, shown once end to end: a flipped id loads with verify=False
    and shows up as that id; verify=True refuses the same file."""
    victim = Victim(make_index("f32", "mixed"), fast_dir)
    ids_region = next(r for r in victim.regions if ch.kind(r) == "ids")
    b = bytearray(victim.data)
    b[ids_region.start] ^= 0x01
    victim.write(bytes(b))
    with pytest.raises(ValueError, match="list data checksum"):
        IVFIndex.load(victim.path, verify=True)
    ix = IVFIndex.load(victim.path, verify=False)
    l = int(ids_region.name[4:].split(".")[0])
    got, want = ix.list_ids(l), victim.ref_ids[l]
    assert got[0] == want[0] ^ 1 and np.array_equal(got[1:], want[1:])


# ---------------------------------------------------------------------------------------------
# 3. truncation, extension, other files


def expect_load_error(path: Path, what: str, modes=MODES, exc=(ValueError, OSError)):
    for mmap, verify in modes:
        COUNTS["loads"] += 1
        with pytest.raises(exc) as info:
            IVFIndex.load(path, mmap=mmap, verify=verify)
        check_error(info.value, path, f"{what}, mmap={mmap}, verify={verify}")


def test_truncation_at_every_offset(fast_dir):
    victim = Victim(make_index("f16", "mixed"), fast_dir)
    data, p = victim.data, fast_dir / "cut.ivf"
    for n in range(len(data)):
        p.write_bytes(data[:n])
        expect_load_error(p, f"truncated to {n} of {len(data)} bytes")
        COUNTS["truncations"] += 1


def test_truncation_and_torn_tails_of_a_bigger_index(fast_dir):
    ix = make_index("f32", "seq")
    rng = np.random.default_rng(5)
    ix.add(rng.standard_normal((6000, ix.dim)).astype(np.float32))
    path = fast_dir / "big.ivf"
    ix.save(path)
    data = path.read_bytes()
    bounds = {b for r in ch.regions(data) for b in (r.start, r.stop)}
    cuts = set(range(0, len(data), 997))
    cuts |= {x + e for x in bounds for e in (-1, 0, 1) if 0 <= x + e < len(data)}
    p = fast_dir / "cut.ivf"
    for n in sorted(cuts):
        p.write_bytes(data[:n])
        expect_load_error(p, f"truncated to {n}", modes=[(True, False), (False, False)])
        # a torn write: the right length, but zeros from n on (what a crash mid-write can leave)
        COUNTS["truncations"] += 1
        if any(data[n:]):
            p.write_bytes(data[:n] + bytes(len(data) - n))
            expect_load_error(p, f"zeroed from {n}", modes=[(True, False), (False, True)])
            COUNTS["truncations"] += 1


def test_appended_bytes_are_refused(fast_dir):
    victim = Victim(make_index("sq8", "mixed"), fast_dir)
    data, p = victim.data, fast_dir / "long.ivf"
    rng = np.random.default_rng(0)
    tails = [b"\0", bytes(8), data[-16:], rng.bytes(4096), data]
    for tail in tails:
        p.write_bytes(data + tail)
        expect_load_error(p, f"{len(tail)} bytes appended")
        COUNTS["truncations"] += 1


def test_files_that_are_not_indexes(fast_dir):
    empty = fast_dir / "empty.ivf"
    empty.write_bytes(b"")
    expect_load_error(empty, "empty file")
    npy = fast_dir / "x.npy"
    np.save(npy, np.zeros((10, 4), np.float32))
    expect_load_error(npy, ".npy file")
    txt = fast_dir / "notes.ivf"
    txt.write_text("MUDG is not an index\n" * 20)
    expect_load_error(txt, "text file")
    magic_only = fast_dir / "magic.ivf"
    magic_only.write_bytes(b"MUDGIVF\0")
    expect_load_error(magic_only, "magic only")
    for mmap in (True, False):
        with pytest.raises(IsADirectoryError, match="folder"):
            IVFIndex.load(fast_dir, mmap=mmap)
        with pytest.raises(FileNotFoundError):
            IVFIndex.load(fast_dir / "missing.ivf", mmap=mmap)
        with pytest.raises(NotADirectoryError):
            IVFIndex.load(empty / "x.ivf", mmap=mmap)
    if os.path.exists("/dev/null"):
        expect_load_error(Path("/dev/null"), "a device")
    # links: to an index it loads; dangling and looping links are OSErrors
    good = fast_dir / "good.ivf"
    make_index("f32", "seq").save(good)
    (fast_dir / "link.ivf").symlink_to(good)
    assert IVFIndex.load(fast_dir / "link.ivf").ntotal == 70
    (fast_dir / "dangling.ivf").symlink_to(fast_dir / "nowhere.ivf")
    with pytest.raises(FileNotFoundError):
        IVFIndex.load(fast_dir / "dangling.ivf")
    (fast_dir / "loop.ivf").symlink_to(fast_dir / "loop.ivf")
    with pytest.raises(OSError) as info:
        IVFIndex.load(fast_dir / "loop.ivf")
    assert info.value.errno == errno.ELOOP


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO for reading blocks until a writer appears: the loader used to hang forever.
    Run in a child with a timeout, so that a regression fails instead of hanging the suite."""
    fifo = tmp_path / "pipe.ivf"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        from mudg_fast import IVFIndex
        for mmap in (True, False):
            try:
                IVFIndex.load({str(fifo)!r}, mmap=mmap)
            except ValueError as e:
                assert "not a regular file" in str(e), e
            else:
                raise SystemExit("loaded a FIFO")
        print("refused")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and "refused" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------
# 4. crash during save

SAVER = textwrap.dedent("""
    import sys
    from mudg_fast import IVFIndex
    a, b, target = sys.argv[1:4]
    versions = [IVFIndex.load(a), IVFIndex.load(b)]
    print("ready", flush=True)
    i = 0
    try:
        while True:
            versions[i % 2].save(target)
            i += 1
    except KeyboardInterrupt:
        print("interrupted", i, flush=True)
        sys.exit(3)
""")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Two indexes with identical layout (so identical size) and different bytes: A, and A with
    other ids. Large enough (~25 MB) that a save takes a while."""
    d = tmp_path_factory.mktemp("versions")
    rng = np.random.default_rng(11)
    dim, nlist, n = 64, 32, 96_000
    x = rng.standard_normal((n, dim)).astype(np.float32)
    cent = rng.standard_normal((nlist, dim)).astype(np.float32)
    paths = []
    for shift in (0, 10**9):
        ix = IVFIndex(dim, nlist, codec="f32").set_centroids(cent)
        ix.add(x, np.arange(n, dtype=np.int64) + shift)
        paths.append(d / f"v{shift}.ivf")
        ix.save(paths[-1])
    assert paths[0].stat().st_size == paths[1].stat().st_size
    return paths, {sha(p): p for p in paths}


def stop_mid_write(proc, tmp: Path, want_bytes: int, timeout: float = 60.0) -> int:
    """Polls until the temporary file of a running save holds at least want_bytes, then stops the
    child (SIGSTOP) and makes sure the temporary still exists, i.e. the save has not renamed it
    yet. Returns the temporary's size at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            size = os.stat(tmp).st_size
        except FileNotFoundError:
            continue
        if size < want_bytes:
            continue
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)
        try:
            return os.stat(tmp).st_size
        except FileNotFoundError:  # renamed between the poll and the stop: try the next save
            os.kill(proc.pid, signal.SIGCONT)
    raise AssertionError("never caught a save in progress")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("sig, fraction", [
    ("SIGKILL", 0.0), ("SIGKILL", 0.3), ("SIGKILL", 0.7), ("SIGKILL", 1.0),
    ("SIGTERM", 0.5), ("SIGINT", 0.0), ("SIGINT", 0.6),
])
def test_killed_mid_save_keeps_the_previous_file(two_versions, tmp_path, sig, fraction):
    (a, b), by_hash = two_versions
    final = a.stat().st_size
    target = tmp_path / "index.ivf"
    shutil.copyfile(a, target)
    tmp = tmp_path / ".index.ivf.tmp"  # the documented temporary name
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(a), str(b), str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        caught = stop_mid_write(proc, tmp, int(fraction * final))
        before = sha(target)
        assert before in by_hash, "the target must always hold a complete version"
        os.kill(proc.pid, getattr(signal, sig))
        if sig != "SIGKILL":
            os.kill(proc.pid, signal.SIGCONT)  # the pending signal is delivered on resume
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    COUNTS["kills"] += 1
    KILLED.append((sig, caught, final))
    assert caught <= final
    assert sha(target) == before, f"{sig} at {caught}/{final} bytes changed the previous file"
    for mmap in (True, False):
        loaded = IVFIndex.load(target, mmap=mmap, verify=True)
        assert loaded.ntotal == 96_000
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "index.ivf")
    if sig == "SIGINT":
        assert proc.returncode == 3 and out.startswith("interrupted"), err
        assert leftovers == [], "Ctrl-C must remove the temporary file"
    else:
        assert proc.returncode == -getattr(signal, sig)
        assert leftovers in ([], [tmp.name]), leftovers  # only the documented, reusable name
    # the next save works, takes the leftover over, and leaves only the target
    replacement = make_index("f32", "seq")
    replacement.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.ivf"]
    assert IVFIndex.load(target).ntotal == replacement.ntotal


def test_atomic_write_fsyncs_the_file_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    """The order that makes a rename durable: data on disk, then the rename, then the folder."""
    from mudg_fast.train._io import atomic_write as train_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino))
        real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.stat(a).st_ino))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "x.ivf"
    for save in (lambda: make_index("f32", "seq").save(target),
                 lambda: train_write(target, lambda f: f.write(b"checkpoint"))):
        events.clear()
        save()
        file_ino, dir_ino = target.stat().st_ino, tmp_path.stat().st_ino
        assert events[-3:] == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)], events
        assert ("fsync", file_ino) in events[:-2]


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    which, target, n_chunks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def chunks(write):
        for i in range(n_chunks):
            write(b"x" * 1000)
            print("chunk", i, flush=True)
            time.sleep(0.01)
    if which == "index":  # manifests, build work files, pipeline outputs, reports
        from mudg_fast.index import atomic_write
        def by_path(tmp):
            with open(tmp, "wb") as f:
                chunks(lambda b: (f.write(b), f.flush()))
        atomic_write(target, by_path)
    else:  # training checkpoints and logs
        from mudg_fast.train._io import atomic_write
        atomic_write(target, lambda f: chunks(lambda b: (f.write(b), f.flush())))
    print("done", flush=True)
""")


def start_slow_writer(which: str, target: Path, until_chunk: int, n_chunks: int = 1000):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, which, str(target), str(n_chunks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == f"chunk {until_chunk}":
            return proc
    raise AssertionError(proc.stderr.read())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("which", ["index", "train"])
def test_killed_mid_write_other_atomic_writers(which, tmp_path):
    """The other writers users rely on (build manifests and work files, pipeline manifests,
    training checkpoints) go through the same two atomic_write functions."""
    from mudg_fast.index import atomic_write as index_write
    from mudg_fast.train._io import atomic_write as train_write

    target = tmp_path / "manifest.json"
    target.write_text('{"old": true}')
    proc = start_slow_writer(which, target, until_chunk=5)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    COUNTS["kills"] += 1
    assert target.read_text() == '{"old": true}'
    leftover = tmp_path / ".manifest.json.tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == [leftover.name, target.name]
    assert leftover.stat().st_size >= 6000  # it really was killed mid-write
    if which == "index":
        index_write(target, lambda t: Path(t).write_text('{"new": 1}'))
    else:
        train_write(target, lambda f: f.write(b'{"new": 1}'))
    assert target.read_text() == '{"new": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # leftover taken over


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_save_while_another_process_saves_the_same_path(tmp_path):
    """The temporary file of a live save is locked: a second save to the same path must not take
    it over (that would tear the first one), but use a unique name; both complete."""
    from mudg_fast.index import atomic_write

    target = tmp_path / "manifest.json"
    proc = start_slow_writer("index", target, until_chunk=3, n_chunks=60)
    try:
        atomic_write(target, lambda t: Path(t).write_text("second"))
        assert target.read_text() == "second"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".manifest.json.tmp", "manifest.json"]
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.rstrip().endswith("done"), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert target.read_bytes() == b"x" * 60_000  # the first save completed intact, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
