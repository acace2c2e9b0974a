"""Makes testdata/mail/ with Python's email and mailbox packages (the standard library's MIME
writer), from text written for hearth (a fictitious company) and files of testdata/:

  supplier-contract.eml  a multipart/mixed message: a text and an HTML body (alternative), the
                         on-call runbook as a DOCX attachment, the office list as an XLSX
                         attachment, and a PNG logo (not a document: refused with a warning)
  board.mbox             three messages of a mailing list, one of them in German with an
                         ISO-8859-1 body and an encoded subject

Run from anywhere: python3 testdata/sources/mail/make_mail.py
"""

import mailbox
import os
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "..")
OUT = os.path.join(TESTDATA, "mail")


def read(*path):
    with open(os.path.join(TESTDATA, *path), "rb") as f:
        return f.read()


def contract():
    m = EmailMessage()
    m["From"] = "Clara Lindqvist <clara.lindqvist@kestrel-storage.example>"
    m["To"] = "Procurement <procurement@kestrel-storage.example>"
    m["Cc"] = "Ravi Menon <ravi.menon@kestrel-storage.example>"
    m["Subject"] = "Renewal of the Nordlicht Datacenter supplier contract"
    m["Date"] = format_datetime(datetime(2026, 3, 12, 9, 41, tzinfo=timezone.utc))
    m["Message-ID"] = "<contract-renewal-2026@kestrel-storage.example>"
    text = (
        "Hello procurement team,\n\n"
        "the contract with Nordlicht Datacenter for the Lulea colocation site ends on 30 June 2026. "
        "Nordlicht offered a three-year renewal at 18,400 EUR per month, a 6 % increase, with the "
        "power price capped at 0.11 EUR per kWh.\n\n"
        "Legal has reviewed the draft: the notice period drops from six months to ninety days, and "
        "the liability cap stays at twelve months of fees. Please sign before 15 May 2026 so that "
        "the capped power price applies from July.\n\n"
        "The runbook and the office list are attached for the site audit.\n\n"
        "Clara\n"
    )
    m.set_content(text)
    html = "<html><body>" + "".join(f"<p>{p}</p>" for p in text.split("\n\n")) + "</body></html>"
    m.add_alternative(html, subtype="html")
    m.add_attachment(
        read("office", "runbook.docx"),
        maintype="application",
        subtype="vnd.openxmlformats-officedocument.wordprocessingml.document",
        filename="storage-runbook.docx",
    )
    m.add_attachment(
        read("office", "offices.xlsx"),
        maintype="application",
        subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        filename="offices.xlsx",
    )
    m.add_attachment(read("broken", "image.md"), maintype="image", subtype="png", filename="logo.png")
    with open(os.path.join(OUT, "supplier-contract.eml"), "wb") as f:
        f.write(bytes(m))


def board():
    path = os.path.join(OUT, "board.mbox")
    if os.path.exists(path):
        os.remove(path)
    box = mailbox.mbox(path)
    messages = [
        (
            "Amara Okafor <amara.okafor@kestrel-storage.example>",
            "Board meeting moved to 24 April",
            datetime(2026, 4, 2, 16, 5, tzinfo=timezone.utc),
            "The April board meeting moves from the 17th to Friday 24 April, 14:00 CET, in the "
            "Lisbon office. The agenda adds one item: the budget for the Singapore expansion.\n",
            "utf-8",
        ),
        (
            "Jana Krüger <jana.krueger@kestrel-storage.example>",
            "Büroumzug Berlin: neue Schlüsselkarten",
            datetime(2026, 4, 8, 8, 30, tzinfo=timezone.utc),
            "Ab Montag, dem 4. Mai, gelten im Berliner Büro nur noch die neuen Schlüsselkarten. "
            "Die alten Karten werden am Empfang gegen die neuen getauscht; bitte bringt euren "
            "Personalausweis mit.\n",
            "iso-8859-1",
        ),
        (
            "Ravi Menon <ravi.menon@kestrel-storage.example>",
            "Minutes: storage budget approved",
            datetime(2026, 4, 27, 11, 15, tzinfo=timezone.utc),
            "The board approved the storage budget of 2.4 million EUR for the next fiscal year, "
            "of which 600,000 EUR go to the Singapore expansion. The vote was five to one.\n",
            "utf-8",
        ),
    ]
    for sender, subject, date, body, charset in messages:
        m = EmailMessage()
        m["From"] = sender
        m["To"] = "board@kestrel-storage.example"
        m["Subject"] = subject
        m["Date"] = format_datetime(date)
        m["Message-ID"] = make_msgid(domain="kestrel-storage.example")
        m.set_content(body, charset=charset, cte="quoted-printable" if charset != "utf-8" else None)
        box.add(mailbox.mboxMessage(m))
    box.flush()
    box.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    contract()
    board()
