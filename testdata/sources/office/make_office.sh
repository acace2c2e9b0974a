#!/usr/bin/env bash
# Makes testdata/office/ from real text with real producers: pandoc (DOCX, PPTX) and
# LibreOffice (ODT, RTF, ODP, XLSX, XLS, ODS). Needs `pandoc` and `libreoffice-nogui` (Debian).
# The committed files are the test inputs; this script documents how they were made.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../../office" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
soffice() { command soffice -env:UserInstallation="file://$tmp/profile" --headless "$@" >/dev/null; }

# Word: the on-call runbook (headings, a table, lists) through pandoc, then LibreOffice's own
# ODT and RTF writers from that DOCX.
pandoc "$here/../../corpus/incident-runbook.md" -o "$out/runbook.docx"
soffice --convert-to odt --outdir "$out" "$out/runbook.docx"
soffice --convert-to rtf --outdir "$out" "$out/runbook.docx"

# Slides with speaker notes: pandoc's PPTX writer, then LibreOffice Impress's ODP.
pandoc "$here/release-review.md" -o "$out/release-review.pptx"
soffice --convert-to odp --outdir "$out" "$out/release-review.pptx"

# A workbook with two sheets (strings, numbers, dates) in three formats.
cp "$here/offices.fods" "$tmp/offices.fods"
soffice --convert-to xlsx --outdir "$out" "$tmp/offices.fods"
soffice --convert-to xls --outdir "$out" "$tmp/offices.fods"
soffice --convert-to ods --outdir "$out" "$tmp/offices.fods"
# Its first sheet as the CSV a German-locale spreadsheet writes (semicolons) and as TSV.
soffice --convert-to 'csv:Text - txt - csv (StarCalc):59,34,76,1,,0,false,true,true' --outdir "$tmp" "$tmp/offices.fods"
mv "$tmp/offices.csv" "$out/offices.csv"
soffice --convert-to 'csv:Text - txt - csv (StarCalc):9,34,76,1,,0,false,true,true' --outdir "$tmp" "$tmp/offices.fods"
mv "$tmp/offices.csv" "$out/offices.tsv"
ls -l "$out"
