#!/usr/bin/env bash
# Makes testdata/scans: pages of real PDFs rendered at 150 dpi (gray, as an office scanner
# makes them) and put back into image-only PDFs with img2pdf, so the PDFs' own text layer is
# the ground truth OCR is measured against; the same pages as PNG, JPEG and a multi-page TIFF;
# a PDF of one text page and one scanned page; and a 30,000 x 30,000 PNG that OCR must refuse.
#
# English: testdata/corpus/gzip-manual.pdf. German: the German manual page of gzip from
# Debian's manpages-de 4.18.1 (GPL-3+), set as a PDF with groff.
#
# Needs (Debian): poppler-utils, img2pdf, groff, libtiff-tools; apt-get download manpages-de.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=$root/testdata/scans
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# The German source PDF.
apt-get download manpages-de=4.18.1-1 >/dev/null
dpkg-deb --fsys-tarfile manpages-de_*.deb | tar -x ./usr/share/man/de/man1/gzip.1.gz
zcat usr/share/man/de/man1/gzip.1.gz | groff -k -man -Tpdf -P-pa4 > gzip-de.pdf

scan() { # scan SRC FIRST LAST NAME: image-only PDF of pages FIRST..LAST, and their text
  local src=$1 first=$2 last=$3 name=$4
  pdftoppm -r 150 -gray -f "$first" -l "$last" "$src" "$name"
  img2pdf --output "$out/$name.pdf" "$name"-*.pgm
  pdftotext -enc UTF-8 -f "$first" -l "$last" "$src" "$out/$name.txt"
}
scan "$root/testdata/corpus/gzip-manual.pdf" 1 3 gzip-manual-scan
scan gzip-de.pdf 1 3 gzip-de-scan

# Images of one page, and a two-page TIFF.
pdftoppm -r 150 -gray -f 2 -l 2 -singlefile -png "$root/testdata/corpus/gzip-manual.pdf" "$out/gzip-manual-page"
pdftoppm -r 150 -gray -f 2 -l 2 -singlefile -jpeg -jpegopt quality=85 "$root/testdata/corpus/gzip-manual.pdf" "$out/gzip-manual-page"
pdftoppm -r 150 -gray -f 4 -l 5 -tiff -tiffcompression lzw gzip-de.pdf de
tiffcp -c lzw de-*.tif "$out/gzip-de-pages.tiff"

# One page with a text layer, then one scanned.
pdftoppm -r 150 -gray -f 5 -l 5 -singlefile "$root/testdata/corpus/gzip-manual.pdf" p5
img2pdf --output p5.pdf p5.pgm
pdfseparate -f 4 -l 4 "$root/testdata/corpus/gzip-manual.pdf" p4.pdf
pdfunite p4.pdf p5.pdf "$out/gzip-manual-mixed.pdf"
pdftotext -enc UTF-8 -f 5 -l 5 "$root/testdata/corpus/gzip-manual.pdf" "$out/gzip-manual-mixed-page2.txt"

# 30,000 x 30,000 pixels of white, 1 bit deep: a small file, 900 million pixels.
python3 - "$root/testdata/broken/huge-image.png" <<'PY'
import struct, sys, zlib
w = h = 30000
row = b"\x00" + b"\xff" * (w // 8)
z = zlib.compressobj(9)
data = b"".join(z.compress(row) for _ in range(h)) + z.flush()
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
ls -la "$out" "$root/testdata/broken/huge-image.png"
