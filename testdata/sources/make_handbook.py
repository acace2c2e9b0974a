"""Writes corpus/onboarding-handbook.pdf (a ReportLab-produced PDF) from the text below.

Run with `pip install reportlab==5.1.0` in a virtual environment:
    python testdata/sources/make_handbook.py
"""
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

SECTIONS = [
    ("Welcome to Halden Health Analytics", [
        "This handbook covers your first month with us: the equipment you receive, the training you must "
        "complete, how we work with patient data, and whom to ask when something is unclear. Your buddy, "
        "named in your welcome e-mail, is your first contact for any question during the first six weeks.",
        "Our offices are in Bergen and Trondheim. Core collaboration hours are 10:00 to 15:00 Central European "
        "Time; outside those hours you organise your day with your team.",
    ]),
    ("Your first week", [
        "On your first day you collect your laptop and your hardware security key at the front desk. The laptop "
        "arrives with full-disk encryption enabled; you choose your own passphrase of at least sixteen characters "
        "during the first login. Never write the passphrase down and never share the security key.",
        "By the end of the first week you complete three mandatory courses in the learning portal: information "
        "security basics, handling of health data, and anti-bribery. Access to production systems is granted only "
        "after all three courses are marked complete, so start them on day one.",
    ]),
    ("Working with patient data", [
        "Analysts work on pseudonymised extracts only. Re-identification of a person, even by accident through "
        "joining data sets, must be reported to the privacy team within 24 hours. Data never leaves our Norwegian "
        "data centre: do not copy extracts to your laptop, to a USB drive, or to any cloud service, and do not "
        "paste records into external chat or translation tools.",
        "Every query against the research warehouse is logged. Logs are reviewed monthly by the privacy team, and "
        "queries without a registered project number are flagged for follow-up.",
    ]),
    ("Time off and absence", [
        "Full-time employees have 25 working days of paid holiday per calendar year, plus the public holidays of "
        "Norway. Up to five unused days may be carried over to the next year; the rest lapse on 31 December. "
        "Request holiday in the HR system at least three weeks ahead for absences longer than one week.",
        "If you are ill, tell your manager before 09:00 on the first day. You may self-certify up to three "
        "calendar days of sickness; from the fourth day a doctor's note is required.",
    ]),
    ("Equipment and expenses", [
        "You may spend up to NOK 6,000 on a desk chair, monitor or other equipment for your home office during "
        "your first year. Order through the internal shop so that the purchase is registered as company property. "
        "When you leave the company, the laptop and the security key are returned on your last working day.",
        "Mobile phone costs are reimbursed up to NOK 400 per month on presentation of the invoice.",
    ]),
    ("Whom to contact", [
        "IT service desk: for laptops, accounts and the security key, available 07:00 to 18:00 on working days. "
        "Privacy team: for anything that touches personal data. People and culture: for contracts, salary, "
        "holidays and parental leave. Your manager: for priorities, feedback and everything else.",
    ]),
]


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "corpus" / "onboarding-handbook.pdf"
    styles = getSampleStyleSheet()
    story = []
    for i, (title, paragraphs) in enumerate(SECTIONS):
        if i in (2, 4):
            story.append(PageBreak())
        story.append(Paragraph(title, styles["Heading1"]))
        for text in paragraphs:
            story.append(Paragraph(text, styles["BodyText"]))
            story.append(Spacer(1, 8))
    doc = SimpleDocTemplate(str(out), pagesize=A4, title="Onboarding handbook", author="Halden Health Analytics",
                            invariant=1)
    doc.build(story)


if __name__ == "__main__":
    main()
