"""Tools for damaging IVF index files on purpose (tests/test_corrupt_files.py).

``checksum64`` re-implements the file format's checksum (cpp/src/ivf_io.cpp) in Python, so that a
test can *forge* a damaged file whose checksums all match again (``reseal``): such a file reaches
the loader's structural checks, which must reject it or yield an index that is safe to use.
``regions`` splits a saved file into its named parts (header fields, centroids, codec parameters,
directory, each list's padding / codes / ids, footer) so that a sweep can hit every one of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

M64 = (1 << 64) - 1
P1, P2, P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P4, P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5

HEADER_SIZE, FOOTER_SIZE, DIR_ENTRY = 128, 16, 24
# (name, offset, struct format) of every header field, in file order.
HEADER_FIELDS = [
    ("magic", 0, "8s"), ("version", 8, "<I"), ("header_size", 12, "<I"), ("dim", 16, "<q"),
    ("nlist", 24, "<q"), ("ntotal", 32, "<q"), ("codec", 40, "<I"), ("metric", 44, "<I"),
    ("centroids_offset", 48, "<Q"), ("params_offset", 56, "<Q"), ("params_count", 64, "<Q"),
    ("directory_offset", 72, "<Q"), ("data_offset", 80, "<Q"), ("file_size", 88, "<Q"),
    ("meta_checksum", 96, "<Q"), ("data_checksum", 104, "<Q"), ("ext_bytes", 112, "<Q"),
    ("header_checksum", 120, "<Q"),
]
CODEC_NAMES = ("f32", "f16", "sq8", "sq4")
BLOCK_BYTES_PER_DIM = {0: 64, 1: 32, 2: 16, 3: 8}  # per 16-vector block (simd.hpp)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc: int, w: int) -> int:
    return (_rotl((acc + w * P2) & M64, 31) * P1) & M64


def _merge(h: int, v: int) -> int:
    return (((h ^ _round(0, v)) * P1) + P4) & M64


def checksum64(data: bytes, seed: int = 0) -> int:
    """The file format's 64-bit checksum (xxHash64-style lanes), bit for bit as in ivf_io.cpp."""
    data = bytes(data)
    n, p = len(data), 0
    if n >= 32:
        v1, v2, v3, v4 = (seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64
        while p + 32 <= n:
            w = struct.unpack_from("<4Q", data, p)
            v1, v2, v3, v4 = _round(v1, w[0]), _round(v2, w[1]), _round(v3, w[2]), _round(v4, w[3])
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & M64
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, struct.unpack_from("<Q", data, p)[0]), 27) * P1 + P4) & M64
        p += 8
    while p < n:
        h = (_rotl(h ^ ((data[p] * P5) & M64), 11) * P1) & M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


def header(data: bytes) -> dict:
    return {name: struct.unpack_from(fmt, data, off)[0] for name, off, fmt in HEADER_FIELDS}


def directory(data: bytes, h: dict | None = None) -> list[tuple[int, int, int]]:
    """(codes_offset, size, ids_offset) of every list, as stored."""
    h = h or header(data)
    base = h["directory_offset"]
    return [struct.unpack_from("<QqQ", data, base + DIR_ENTRY * l) for l in range(h["nlist"])]


@dataclass(frozen=True)
class Region:
    """Bytes [start, stop) of a file. ``checked``: what protects them at load time --
    "always" (header checksum, meta checksum, or an exact structural check, whatever verify says)
    or "verify" (only verify=True reads and checks them: list codes, list ids, and the zero
    padding between lists)."""

    name: str
    start: int
    stop: int
    checked: str

    def __len__(self):
        return self.stop - self.start


def regions(data: bytes) -> list[Region]:
    """Every byte of a well-formed file, split into named regions (in file order, no gaps)."""
    h = header(data)
    out = []
    for name, off, fmt in HEADER_FIELDS:
        out.append(Region(f"header.{name}", off, off + struct.calcsize(fmt), "always"))
    d, nlist = h["dim"], h["nlist"]
    params_end = h["params_offset"] + 4 * h["params_count"]
    ext_start = (params_end + 7) // 8 * 8
    dir_end = h["directory_offset"] + DIR_ENTRY * nlist
    meta = [("centroids", h["centroids_offset"], h["params_offset"]),
            ("params", h["params_offset"], params_end),
            ("meta_padding", params_end, ext_start),
            ("extensions", ext_start, h["directory_offset"]),
            ("directory", h["directory_offset"], dir_end),
            ("meta_padding", dir_end, h["data_offset"])]
    out += [Region(n, a, b, "always") for n, a, b in meta]
    bbytes = BLOCK_BYTES_PER_DIM[h["codec"]] * d
    pos = h["data_offset"]
    for l, (codes, size, ids) in enumerate(directory(data, h)):
        cbytes = (size + 15) // 16 * bbytes
        out += [Region(f"list{l}.padding", pos, codes, "verify"),
                Region(f"list{l}.codes", codes, codes + cbytes, "verify"),
                Region(f"list{l}.padding", codes + cbytes, ids, "verify"),
                Region(f"list{l}.ids", ids, ids + 8 * size, "verify")]
        pos = ids + 8 * size
    size = len(data)
    out += [Region("footer.magic", size - 16, size - 8, "always"),
            Region("footer.file_size", size - 8, size, "always")]
    out = [r for r in out if len(r) > 0]
    # sanity: the regions tile the file exactly
    assert out[0].start == 0 and out[-1].stop == size
    assert all(a.stop == b.start for a, b in zip(out, out[1:])), "regions must tile the file"
    return out


#: known record tags -> whether the format requires the record to be marked required (META is
#: optional metadata; SQ4R, the sq4 residual form, changes how codes decode and CQTL, the
#: two-level quantizer, how vectors are assigned: both must be required)
KNOWN_RECORDS = {b"META": False, b"SQ4R": True, b"CQTL": True}


def records(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """(tag, flags, payload) of every record of a well-formed extension section."""
    h = header(data)
    pos = (h["params_offset"] + 4 * h["params_count"] + 7) // 8 * 8
    end = pos + h["ext_bytes"]
    out = []
    while pos < end:
        flags, length = struct.unpack_from("<IQ", data, pos + 4)
        out.append((data[pos:pos + 4], flags, data[pos + 16:pos + 16 + length]))
        pos += 16 + (length + 7) // 8 * 8
    return out


def sq4_state_valid(data: bytes, limit: float) -> bool:
    """Whether the sq4 levels (codec parameters) and the SQ4R record's list scales, if any, form
    a codec a reader must accept: levels finite and sorted per dimension; direct form |level| <=
    limit; residual form (record: u32 form 1, u32 0, nlist float32 scales) |level| <= 2 * limit,
    scales finite in [2^-32, 2^32] with scale * max |level| <= 2 * limit, and only with codec sq4.
    ``limit`` is the magnitude limit for the file's dim."""
    import numpy as np  # noqa: PLC0415 - only the sweeps need it

    h = header(data)
    rec = [r for r in records(data) if r[0] == b"SQ4R"]
    if h["codec"] != 3:
        return not rec
    p = np.frombuffer(data, np.float32, h["params_count"], h["params_offset"]).astype(np.float64)
    if not np.isfinite(p).all() or not (np.diff(p.reshape(h["dim"], 16), axis=1) >= 0).all():
        return False
    if not rec:
        return bool((np.abs(p) <= limit).all())
    payload = rec[0][2]
    nlist = h["nlist"]
    if len(payload) != 8 + 4 * nlist or struct.unpack_from("<II", payload) != (1, 0):
        return False
    s = np.frombuffer(payload, np.float32, nlist, 8).astype(np.float64)
    top = np.abs(p).max()
    return bool(np.isfinite(s).all() and (np.abs(p) <= 2 * limit).all() and (s >= 2.0 ** -32).all()
                and (s <= 2.0 ** 32).all() and (s * top <= 2 * limit).all())


def extensions_valid(data: bytes) -> bool:
    """Whether a file's extension section (format version 2) is one a reader must accept: records
    back to back, 16-byte record headers (tag, flags in {0, 1}, length), zero padding to 8 bytes,
    tags strictly increasing, no unknown required record, each known record marked as the format
    says (META optional, SQ4R required). Written from the format description, independently of
    the native reader (the SQ4R payload is judged by ``sq4_state_valid``)."""
    h = header(data)
    start = (h["params_offset"] + 4 * h["params_count"] + 7) // 8 * 8
    pos, end = start, start + h["ext_bytes"]
    prev = None
    while pos < end:
        if end - pos < 16:
            return False
        tag = data[pos:pos + 4]
        flags, length = struct.unpack_from("<IQ", data, pos + 4)
        padded = (length + 7) // 8 * 8
        if flags not in (0, 1) or length > end - pos - 16 or padded > end - pos - 16:
            return False
        key = struct.unpack("<I", tag)[0]
        if prev is not None and key <= prev:
            return False
        if any(data[pos + 16 + length:pos + 16 + padded]):
            return False
        if tag in KNOWN_RECORDS:
            if bool(flags) != KNOWN_RECORDS[tag]:
                return False  # a known record marked against the format
        elif flags == 1:
            return False  # an unknown required record
        prev, pos = key, pos + 16 + padded
    return True


def kind(region: Region) -> str:
    """Coarse class of a region, for counting: header, centroids, params, directory, padding,
    codes, ids, footer."""
    n = region.name
    if n.startswith("header."):
        return "header"
    if n.startswith("footer."):
        return "footer"
    if n.startswith("list"):
        return n.split(".")[1]
    return "padding" if n == "meta_padding" else n


def reseal(data: bytes) -> bytes:
    """Recomputes the data, meta and header checksums of a (possibly damaged) file from its own,
    possibly damaged, header and directory: the result passes every checksum the loader checks
    whenever its offsets are in range. Out-of-range offsets are clamped (the loader must then
    reject the layout anyway)."""
    b = bytearray(data)
    if len(b) < HEADER_SIZE:
        return bytes(b)
    h = header(b)
    codec = h["codec"]
    nlist = h["nlist"]
    if codec in BLOCK_BYTES_PER_DIM and 0 < nlist <= len(b) // DIR_ENTRY and 0 < h["dim"] < 1 << 24:
        bbytes = BLOCK_BYTES_PER_DIM[codec] * h["dim"]
        sums = []
        for l in range(nlist):
            off = h["directory_offset"] + DIR_ENTRY * l
            if off + DIR_ENTRY > len(b):
                break
            codes, size, ids = struct.unpack_from("<QqQ", b, off)
            if not 0 <= size <= len(b):
                break
            sums.append(checksum64(b[codes:codes + (size + 15) // 16 * bbytes]))
            sums.append(checksum64(b[ids:ids + 8 * size]))
        else:
            struct.pack_into("<Q", b, 104, checksum64(struct.pack(f"<{len(sums)}Q", *sums)))
    struct.pack_into("<Q", b, 96, checksum64(b[h["centroids_offset"]:h["data_offset"]]))
    struct.pack_into("<Q", b, 120, checksum64(b[:120]))
    return bytes(b)
