"""Hostile files for the memory tests: a gzip bomb bundle, a CSV over the row limit, a forged .npy.

Each is built by streaming, so making a 512 MiB bomb costs the test process no more than a chunk.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from numpy.lib import format as npy_format

BOMB_MEMBER_BYTES = 512 << 20


def write_archive(path: Path, members: Sequence[tuple[str, bytes | int]]) -> Path:
    """A .tar.gz of ``members``; an int stands for that many spaces, streamed rather than held."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    chunk = b" " * (1 << 20)
    with path.open("wb") as out:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            out.write(compressor.compress(info.tobuf(format=tarfile.USTAR_FORMAT)))
            if isinstance(content, bytes):
                out.write(compressor.compress(content))
            else:
                for start in range(0, content, len(chunk)):
                    out.write(compressor.compress(chunk[:min(len(chunk), content - start)]))
            out.write(compressor.compress(bytes(-info.size % 512)))
        out.write(compressor.compress(bytes(1024)))  # the end-of-archive blocks
        out.write(compressor.flush())
    return path


def write_gzip_bomb(path: Path) -> Path:
    """Issue 14's bomb: 509 KiB that hold a 512 MiB ``manifest.json`` (deflate tops out near 1032:1),
    which took ``bundle inspect`` and ``agent install`` to 1.2 GB of RSS before they refused it."""
    return write_archive(path, [("manifest.json", BOMB_MEMBER_BYTES)])


def spaces_sha256(size: int) -> str:
    digest = hashlib.sha256()
    chunk = b" " * (1 << 20)
    for start in range(0, size, len(chunk)):
        digest.update(chunk[:min(len(chunk), size - start)])
    return digest.hexdigest()


def csv_over_the_row_limit(rows: int = 350_000, width: int = 3, *, header: bool = False) -> bytes:
    """About 4 MiB of numeric CSV: thirty-five times the default 10,000-row limit."""
    line = ",".join(["1.5"] * width) + "\n"
    names = ",".join(f"f{i}" for i in range(width)) + "\n" if header else ""
    return (names + line * rows).encode()


def forged_npy(shape: tuple[int, ...] = (2**40, 2**40)) -> bytes:
    """A .npy of a few hundred bytes whose header claims ``shape`` float64 values."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(200)
