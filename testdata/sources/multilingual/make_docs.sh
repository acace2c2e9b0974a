#!/usr/bin/env bash
# Build testdata/multilingual/docs/ from Debian's translated manual pages
# (manpages-l10n 4.18.1-1, manpages-zh 1.6.4.0-1 and manpages-ja
# 0.5.0.0.20221215+dfsg-1, Debian 12 "bookworm").
#
# For each of 10 languages, 4 manual pages are rendered to plain UTF-8 text
# (no overstrikes, no ANSI codes, no hyphenation, ragged-right, 80 columns).
# Every page appears in the set in exactly ONE language, so a fact in it can
# only be found in that language.
#
# Idempotent: the .deb files are cached in $WORKDIR (default /tmp/mlset) and
# checked against the pinned sha256 sums below; the output directory
# testdata/multilingual/docs/<lang>/ is rewritten from scratch each run.
#
# Requirements: apt-get (or curl as fallback), dpkg-deb, man-db (man), groff,
# col (bsdextrautils), iconv, sha256sum. The committed output was rendered with
# man-db 2.11.2 and groff 1.22.4 (Debian 12); other versions may wrap lines or
# render a few escapes differently.
#
# Cuts: a page whose rendering exceeds MAX_BYTES (40000) is cut at a top-level
# section boundary: whole sections are kept from the start while they fit,
# everything from the first section that does not fit onward is dropped (the
# script prints which sections were dropped). In this set only
# de/ssh-keygen.1 is cut (54469 -> 39551 bytes): it keeps BEZEICHNUNG,
# ÜBERSICHT, BESCHREIBUNG, MODULI-ERSTELLUNG and ZERTIFIKATE; dropped are
# FIDO-AUTHENTIFIKATOR, SCHLÜSSELSPERRLISTEN, ERLAUBTE SIGNIERER,
# UMGEBUNGSVARIABLEN, DATEIEN, SIEHE AUCH, AUTOREN and ÜBERSETZUNG.
set -euo pipefail

WORKDIR=${MLSET_WORKDIR:-/tmp/mlset}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(cd "$HERE/../.." && pwd)/multilingual/docs
MAX_BYTES=40000

# lang  package         version      deb file name                         sha256                                                            source package
PKGS="
de    manpages-de     4.18.1-1     manpages-de_4.18.1-1_all.deb            37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978  manpages-l10n
es    manpages-es     4.18.1-1     manpages-es_4.18.1-1_all.deb            d21e9f85e487f149ae45b5c525b2b1a70ae7fd38d4b05b47c8753042c66f4c2b  manpages-l10n
fr    manpages-fr     4.18.1-1     manpages-fr_4.18.1-1_all.deb            ec29759cc0e4a44dc7719c1e32869d0060667049e584f09556f0d982b969ea33  manpages-l10n
it    manpages-it     4.18.1-1     manpages-it_4.18.1-1_all.deb            4b18e87cc1b6a930d40949ddc86fb8e84b50da1a862cd17e2a504eeb8e3b4e48  manpages-l10n
nl    manpages-nl     4.18.1-1     manpages-nl_4.18.1-1_all.deb            c1ac0e9fb2ff88a8d7f796042ce7d876fa8918e5d3367521c7f09dd885eb3b2d  manpages-l10n
pl    manpages-pl     1:4.18.1-1   manpages-pl_1%3a4.18.1-1_all.deb        31e518ea8331b5204d4fd0032037f96af1ba94a5afa4f0585dca1996b270cdf9  manpages-l10n
pt-br manpages-pt-br  4.18.1-1     manpages-pt-br_4.18.1-1_all.deb         da971a7bc0107f7b74b4ae592d1d7cc6424fa7e77cc1808f5c110a07edaf3890  manpages-l10n
ru    manpages-ru     4.18.1-1     manpages-ru_4.18.1-1_all.deb            5d5821dad5840652ba9c1c6b85bdc785c1fc52148a71c18fab6658c9659244c0  manpages-l10n
zh    manpages-zh     1.6.4.0-1    manpages-zh_1.6.4.0-1_all.deb           81bae29495f6445db290e3f329f1203eb19b651c2a7ea165b74ebdc853a32ac1  manpages-zh
ja    manpages-ja     0.5.0.0.20221215+dfsg-1 manpages-ja_0.5.0.0.20221215+dfsg-1_all.deb 4d270e9a1e83be4de0c072a110892a17dc9caa4b501257324006ac28d82c5743  manpages-ja
"

# lang: pages (name.section). No page name may appear under two languages.
PAGES="
de:    crontab.5 gzip.1 timedatectl.1 ssh-keygen.1
fr:    xargs.1 tree.1 su.1 nano.1
es:    logrotate.8 netstat.8 hosts.5 touch.1
it:    fstab.5 xinit.1 locale.5 time.1
nl:    grep.1 file.1 ping.8 date.1
pl:    iwconfig.8 modprobe.8 e2fsck.8 update-rc.d.8
pt-br: chmod.1 localectl.1 df.1 cp.1
ru:    getent.1 tmpfs.5 ls.1 iconv.1
zh:    tar.1 sed.1 at.1 ifconfig.8
ja:    dd.1 shutdown.8 diff.1 du.1
"

mkdir -p "$WORKDIR"
cd "$WORKDIR"

# --- 1. download and verify ------------------------------------------------
echo "== packages"
while read -r lang pkg ver file sum src; do
  [ -n "$lang" ] || continue
  if [ ! -f "$file" ] || ! echo "$sum  $file" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$file"
    apt-get download "$pkg=$ver" >/dev/null 2>&1 || true
    if [ ! -f "$file" ]; then
      # fallback: Debian pool, then snapshot.debian.org
      for url in "https://deb.debian.org/debian/pool/main/m/$src/$file" \
                 "https://snapshot.debian.org/archive/debian/20230601T000000Z/pool/main/m/$src/$file"; do
        curl -fsSL -o "$file" "$url" && break || rm -f "$file"
      done
    fi
  fi
  echo "$sum  $file" | sha256sum -c --quiet - || { echo "sha256 mismatch for $file" >&2; exit 1; }
  echo "$pkg $ver sha256=$(sha256sum "$file" | cut -d' ' -f1)"
  if [ ! -d "x/$lang/usr/share/man" ]; then
    rm -rf "x/$lang"; mkdir -p "x/$lang"; dpkg-deb -x "$file" "x/$lang"
  fi
done <<< "$PKGS"

# --- 2. render ---------------------------------------------------------------
# keep whole top-level sections (lines starting in column 0) while they fit
cut_sections() {  # in out max
  LC_ALL=C awk -v max="$3" -v out="$2" '
    function flush() { if (!stop && total + length(block) <= max) { printf "%s", block > out; total += length(block) }
                       else { if (!stop) stop = 1; if (name != "") dropped = dropped " [" name "]" } }
    /^[^ ]/ { if (started) flush(); block = ""; name = $0; sub(/ +$/, "", name); started = 1 }
    { block = block $0 "\n" }
    END { flush(); if (dropped != "") print "   cut; dropped sections:" dropped }' "$1"
}

echo "== documents"
total=0
while IFS=: read -r lang pages; do
  [ -n "$lang" ] || continue
  dir=$lang; [ "$lang" = pt-br ] && dir=pt_BR; [ "$lang" = zh ] && dir=zh_CN
  mkdir -p "$OUT/$lang"
  rm -f "$OUT/$lang"/*.txt
  for page in $pages; do
    sec=${page##*.}
    src="x/$lang/usr/share/man/$dir/man$sec/$page.gz"
    dst="$OUT/$lang/$page.$lang.txt"
    tmp="$WORKDIR/render.tmp"
    env -u MANOPT -u MANPAGER -u PAGER -u MANROFFOPT LANG=C.UTF-8 LC_ALL=C.UTF-8 MANWIDTH=80 \
      man --nh --nj -E UTF-8 -l "$src" 2>>"$WORKDIR/render.log" | col -bx > "$tmp"
    size=$(stat -c %s "$tmp")
    if [ "$size" -gt "$MAX_BYTES" ]; then
      echo "$lang/$page: $size bytes > $MAX_BYTES"
      cut_sections "$tmp" "$dst" "$MAX_BYTES"
    else
      cp "$tmp" "$dst"
    fi
    # sanity: valid UTF-8, no backspaces, no escape sequences
    iconv -f UTF-8 -t UTF-8 "$dst" >/dev/null
    if grep -q $'[\b\e]' "$dst"; then echo "control characters in $dst" >&2; exit 1; fi
    s=$(stat -c %s "$dst"); total=$((total + s))
    printf '%-40s %6d  %s\n' "$lang/$(basename "$dst")" "$s" "$(sha256sum "$dst" | cut -c1-16)"
  done
done <<< "$PAGES"
rm -f "$WORKDIR/render.tmp"
echo "total bytes: $total"
