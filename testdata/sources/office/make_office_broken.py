"""Makes the Office files of testdata/broken/ that must fail with a clear reason (and one that
must not), from the files of testdata/office/:

  encrypted.xlsx  offices.xlsx with a password (msoffcrypto-tool: `pip install msoffcrypto-tool`)
  bomb.docx       runbook.docx whose word/document.xml unpacks to 512 MiB of spaces
  huge-range.xlsx a sheet with one cell in A1 and one in XFD1048576 (a 1.7e10-cell range)
  runbook.doc     runbook.docx saved by LibreOffice as a Word 97-2003 file (refused: legacy)
  macros.docm     runbook.docx as a macro-enabled document with a VBA project (must ingest; the
                  macros are never run)

Run from anywhere: python3 testdata/sources/office/make_office_broken.py
"""

import io
import os
import shutil
import subprocess
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OFFICE = os.path.join(HERE, "..", "..", "office")
BROKEN = os.path.join(HERE, "..", "..", "broken")


def rewrite(src, dst, replace=None, add=None):
    """Copies the ZIP package src to dst, replacing or adding parts."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = replace.get(item.filename, None)
            if data is None:
                data = zin.read(item.filename)
            zout.writestr(item.filename, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        for name, data in (add or {}).items():
            zout.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def bomb():
    body = b'<?xml version="1.0"?><w:document xmlns:w="x"><w:body>' + b" " * (1 << 29) + b"</w:body></w:document>"
    rewrite(os.path.join(OFFICE, "runbook.docx"), os.path.join(BROKEN, "bomb.docx"),
            replace={"word/document.xml": body})


def macros():
    src = os.path.join(OFFICE, "runbook.docx")
    with zipfile.ZipFile(src) as z:
        types = z.read("[Content_Types].xml").decode()
        rels = z.read("word/_rels/document.xml.rels").decode()
    types = types.replace(
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
        "application/vnd.ms-word.document.macroEnabled.main+xml",
    ).replace(
        "</Types>",
        '<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/></Types>',
    )
    rels = rels.replace(
        "</Relationships>",
        '<Relationship Id="rIdVba" Type="http://schemas.microsoft.com/office/2006/relationships/vbaProject" Target="vbaProject.bin"/></Relationships>',
    )
    # A compound file header and a module source that would run on open; it is never looked at.
    vba = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + b'Sub AutoOpen()\r\n  Shell "calc.exe"\r\nEnd Sub\r\n'
    rewrite(src, os.path.join(BROKEN, "macros.docm"),
            replace={"[Content_Types].xml": types, "word/_rels/document.xml.rels": rels},
            add={"word/vbaProject.bin": vba})


def huge_range():
    src = os.path.join(OFFICE, "offices.xlsx")
    with zipfile.ZipFile(src) as z:
        names = [n for n in z.namelist() if n.startswith("xl/worksheets/sheet")]
    sheet = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<dimension ref="A1:XFD1048576"/><sheetData>'
        '<row r="1"><c r="A1" t="inlineStr"><is><t>top left</t></is></c></row>'
        '<row r="1048576"><c r="XFD1048576" t="inlineStr"><is><t>bottom right</t></is></c></row>'
        "</sheetData></worksheet>"
    )
    rewrite(src, os.path.join(BROKEN, "huge-range.xlsx"), replace={n: sheet for n in names})


def encrypted():
    import msoffcrypto.format.ooxml

    with open(os.path.join(OFFICE, "offices.xlsx"), "rb") as f, open(os.path.join(BROKEN, "encrypted.xlsx"), "wb") as out:
        msoffcrypto.format.ooxml.OOXMLFile(f).encrypt("secret", out)


def legacy_doc():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["soffice", f"-env:UserInstallation=file://{tmp}/profile", "--headless",
             "--convert-to", "doc", "--outdir", tmp, os.path.join(OFFICE, "runbook.docx")],
            check=True, stdout=subprocess.DEVNULL,
        )
        shutil.copy(os.path.join(tmp, "runbook.doc"), os.path.join(BROKEN, "runbook.doc"))


if __name__ == "__main__":
    bomb()
    macros()
    huge_range()
    encrypted()
    legacy_doc()
