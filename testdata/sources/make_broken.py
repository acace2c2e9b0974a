"""Writes the deliberately broken inputs in testdata/broken/ (plus one good UTF-16 file).

Deterministic (seeded); needs only Python 3 and qpdf (for encrypted.pdf):
    python3 testdata/sources/make_broken.py
"""
import gzip
import random
import struct
import subprocess
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "broken"
CORPUS = ROOT / "corpus"


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def deflate_zeros(total: int) -> bytes:
    """zlib stream of `total` zero bytes, made without holding them in memory."""
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    parts = [z.compress(block) for _ in range(total // len(block))]
    parts.append(z.flush())
    return b"".join(parts)


def bomb_pdf() -> bytes:
    """A one-page PDF whose content stream is deflated twice and expands to 2 GiB of zeros."""
    inner = deflate_zeros(2 << 30)
    stream = zlib.compress(inner, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter [/FlateDecode /FlateDecode] >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = random.Random(20261123)
    (OUT / "empty.txt").write_bytes(b"")
    (OUT / "junk.pdf").write_bytes(rng.randbytes(48 * 1024))
    (OUT / "random.bin").write_bytes(rng.randbytes(16 * 1024))
    good = (CORPUS / "gzip-manual.pdf").read_bytes()
    (OUT / "truncated.pdf").write_bytes(good[: len(good) * 2 // 5])
    subprocess.run(
        ["qpdf", "--encrypt", "reader-secret", "owner-secret", "256", "--", "--static-id",
         str(CORPUS / "onboarding-handbook.pdf"), str(OUT / "encrypted.pdf")],
        check=True,
    )
    (OUT / "bomb.pdf").write_bytes(bomb_pdf())
    text = (CORPUS / "incident-runbook.md").read_bytes()
    (OUT / "compressed.txt").write_bytes(gzip.compress(text, mtime=0))
    (OUT / "image.md").write_bytes(png(64, 48))
    note = (
        "Meeting notes, exported from a Windows editor as UTF-16.\n\n"
        "The Oslo and Tōkyō teams agreed to move the quarterly planning review to the second Tuesday of "
        "each quarter. Attendees: Åse Nordmann, 田中 花子, and Zoë Brontë. Action: publish the agenda "
        "one week ahead in the shared calendar.\n"
    )
    (OUT / "utf16.txt").write_bytes(note.encode("utf-16"))
    # A PDF whose byte offsets are all wrong: 500 bytes of comment inserted after the header
    # (what a tool that prepends to a file does). pdf-extract cannot read it; poppler rebuilds
    # the cross-reference table, so it must ingest through the second engine.
    handbook = (CORPUS / "onboarding-handbook.pdf").read_bytes()
    cut = handbook.index(b"\n") + 1
    (OUT / "damaged-xref.pdf").write_bytes(handbook[:cut] + b"%" + b"x" * 500 + b"\n" + handbook[cut:])


if __name__ == "__main__":
    main()
