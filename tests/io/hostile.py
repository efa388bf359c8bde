"""Hand-made hostile files: TIFFs whose tags claim what their bytes do not hold."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def raw_tiff(path, width, height, *, tile=None, rows_per_strip=None, n_chunks=1, chunk=None,
             compression=8, bigtiff=False):
    """A little-endian RGB 8-bit TIFF with the given claimed size and layout, holding ``n_chunks``
    copies of ``chunk`` (default: one zlib-compressed blank 16 x 16 patch) -- whatever the tags say."""
    if chunk is None:
        chunk = zlib.compress(np.full((16, 16, 3), 230, np.uint8).tobytes())
    tags = {256: (4, [width]), 257: (4, [height]), 258: (3, [8, 8, 8]), 259: (3, [compression]),
            262: (3, [2]), 277: (3, [3]), 284: (3, [1])}
    data_start = 16 if bigtiff else 8
    offsets = [data_start + i * len(chunk) for i in range(n_chunks)]
    counts = [len(chunk)] * n_chunks
    if tile:
        tags.update({322: (4, [tile[1]]), 323: (4, [tile[0]]), 324: (4, offsets), 325: (4, counts)})
    else:
        tags.update({273: (4, offsets), 278: (4, [rows_per_strip or height]), 279: (4, counts)})
    body = chunk * n_chunks
    ifd_at = data_start + len(body)
    ifd_at += ifd_at % 2
    fmt_n, fmt_cnt, fmt_off, entry = ("Q", "Q", "Q", 20) if bigtiff else ("H", "I", "I", 12)
    extra_at = ifd_at + (8 if bigtiff else 2) + entry * len(tags) + (8 if bigtiff else 4)
    entries, extra = b"", b""
    inline = 8 if bigtiff else 4
    for code in sorted(tags):
        typ, values = tags[code]
        packed = struct.pack("<" + ("H" if typ == 3 else "I") * len(values), *values)
        if len(packed) <= inline:
            value = packed.ljust(inline, b"\0")
        else:
            value = struct.pack("<" + fmt_off, extra_at + len(extra))
            extra += packed + (b"\0" if len(packed) % 2 else b"")
        entries += struct.pack("<HH" + fmt_cnt, code, typ, len(values)) + value
    ifd = struct.pack("<" + fmt_n, len(tags)) + entries + struct.pack("<" + fmt_off, 0)
    if bigtiff:
        head = b"II+\0" + struct.pack("<HHQ", 8, 0, ifd_at)
    else:
        head = b"II*\0" + struct.pack("<I", ifd_at)
    out = head + body
    out += b"\0" * (ifd_at - len(out))
    with open(path, "wb") as fh:
        fh.write(out + ifd + extra)
    return path
