#!/usr/bin/env python3
"""Validate testdata/eval/questions.jsonl against the documents in testdata/corpus/.

Standard library only, plus the external `pdftotext` (poppler-utils) for PDFs.

    python3 testdata/eval/check.py [questions.jsonl] [--corpus DIR]

Prints the counts and every failure; exits 1 if anything failed, 0 otherwise.
"""

import argparse
import collections
import html
import json
import os
import re
import subprocess
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FILE = os.path.join(HERE, "questions.jsonl")
DEFAULT_CORPUS = os.path.normpath(os.path.join(HERE, "..", "corpus"))

ALLOWED_KEYS = {"id", "question", "relevant", "facts", "not_covered", "history", "standalone", "notes"}

MIN_TOTAL = 140
MIN_NOT_COVERED = 28
MIN_WITH_HISTORY = 28
MIN_COVERED_STANDALONE = 80
MIN_NOT_COVERED_FOLLOWUPS = 3
MIN_PER_DOCUMENT = 3
MAX_FACTS = 3
MAX_FACT_CHARS = 40  # a fact is a token or a short term, never a sentence


def normalise(text):
    """Lower-case, fold compatibility forms, drop thousands separators, keep only letters and digits."""
    text = unicodedata.normalize("NFKC", text).lower()
    # "1,000" / "1.500" / "1 048 576" -> digits only
    text = re.sub(r"(?<=\d)[,.'\u00a0\u202f\u2009 ](?=\d{3}(?!\d))", "", text)
    return "".join(ch for ch in text if ch.isalnum())


def decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # politique-conservation-donnees.txt is ISO-8859-1


def strip_html(text):
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
    text = re.sub(r"(?s)<!--.*?-->", " ", text)
    # only things that look like tags: a bare "<" in text (zlib-how.html has "zpipe < foo") survives
    text = re.sub(r"<[A-Za-z/!?][^>]*>", " ", text)
    return html.unescape(text)


def looks_like_html(text):
    head = text[:2048].lstrip().lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<html" in head


def document_text(path):
    if path.lower().endswith(".pdf"):
        try:
            out = subprocess.run(["pdftotext", "-layout", path, "-"], capture_output=True, check=True)
        except FileNotFoundError:
            raise RuntimeError("pdftotext not found (install poppler-utils)")
        except subprocess.CalledProcessError as e:
            raise RuntimeError("pdftotext failed on %s: %s" % (path, e.stderr.decode(errors="replace").strip()))
        return decode(out.stdout)
    with open(path, "rb") as fh:
        text = decode(fh.read())
    if path.lower().endswith((".html", ".htm")) or looks_like_html(text):
        text = strip_html(text)
    return text


def alternatives(fact):
    return fact if isinstance(fact, list) else [fact]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default=DEFAULT_FILE)
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    args = ap.parse_args()

    failures = []

    def fail(where, msg):
        failures.append("%s: %s" % (where, msg))

    corpus_files = sorted(f for f in os.listdir(args.corpus) if os.path.isfile(os.path.join(args.corpus, f)))
    texts = {}

    def norm_text(name):
        if name not in texts:
            texts[name] = normalise(document_text(os.path.join(args.corpus, name)))
        return texts[name]

    with open(args.file, "rb") as fh:
        raw = fh.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        print("FAIL: %s is not UTF-8: %s" % (args.file, e))
        return 1
    if content and not content.endswith("\n"):
        fail("file", "last line has no trailing newline")

    items = []
    for lineno, line in enumerate(content.split("\n")[:-1] if content.endswith("\n") else content.split("\n"), 1):
        where = "line %d" % lineno
        if not line.strip():
            fail(where, "blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            fail(where, "invalid JSON: %s" % e)
            continue
        if not isinstance(obj, dict):
            fail(where, "not a JSON object")
            continue
        items.append((lineno, obj))

    ids = {}
    by_id = {}
    for pos, (lineno, obj) in enumerate(items, 1):
        where = "line %d (%s)" % (lineno, obj.get("id", "?"))
        extra = set(obj) - ALLOWED_KEYS
        if extra:
            fail(where, "unknown keys %s" % sorted(extra))

        qid = obj.get("id")
        if not isinstance(qid, str) or not re.fullmatch(r"e\d{3,}", qid):
            fail(where, "id must look like e001")
        else:
            if qid in ids:
                fail(where, "duplicate id (first on line %d)" % ids[qid])
            ids.setdefault(qid, lineno)
            if int(qid[1:]) != pos:
                fail(where, "ids must be e001, e002, ... in file order (expected e%03d)" % pos)
            by_id.setdefault(qid, (pos, obj))

        q = obj.get("question")
        if not isinstance(q, str) or not q.strip():
            fail(where, "question must be a non-empty string")
            q = ""
        if "notes" in obj and (not isinstance(obj["notes"], str) or not obj["notes"].strip()):
            fail(where, "notes must be a non-empty string")

        hist = obj.get("history")
        hist_text = ""
        if "history" in obj:
            if not isinstance(hist, list) or len(hist) not in (2, 4):
                fail(where, "history must hold 1 or 2 exchanges (2 or 4 messages)")
            else:
                for i, msg in enumerate(hist):
                    role = "user" if i % 2 == 0 else "assistant"
                    if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
                        fail(where, "history[%d] must have exactly role and content" % i)
                    elif msg["role"] != role:
                        fail(where, "history[%d] should have role %r" % (i, role))
                    elif not isinstance(msg["content"], str) or not msg["content"].strip():
                        fail(where, "history[%d] content must be a non-empty string" % i)
                    else:
                        hist_text += " " + msg["content"]
        elif "standalone" in obj:
            fail(where, "standalone is only allowed on a line with history")

        nc = obj.get("not_covered")
        if "not_covered" in obj:
            if nc is not True:
                fail(where, "not_covered must be true when present")
            if "relevant" in obj or "facts" in obj:
                fail(where, "not_covered lines take no relevant and no facts")
            continue

        # covered line
        if "history" in obj and "standalone" not in obj:
            fail(where, "a covered follow-up needs standalone")
        rel = obj.get("relevant")
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) for r in rel):
            fail(where, "relevant must be a non-empty list of file names")
            rel = []
        if len(set(rel)) != len(rel):
            fail(where, "relevant lists a file twice")
        rel_ok = []
        for r in rel:
            if r not in corpus_files:
                fail(where, "relevant file %r is not in %s" % (r, args.corpus))
            else:
                rel_ok.append(r)

        facts = obj.get("facts")
        if not isinstance(facts, list) or not (1 <= len(facts) <= MAX_FACTS):
            fail(where, "facts must be a list of 1 to %d items" % MAX_FACTS)
            continue
        nq = normalise(q)
        nh = normalise(hist_text)
        for fact in facts:
            alts = alternatives(fact)
            if not alts or not all(isinstance(a, str) and a.strip() for a in alts):
                fail(where, "fact %r must be a non-empty string or a non-empty list of them" % (fact,))
                continue
            for a in alts:
                if len(a) > MAX_FACT_CHARS:
                    fail(where, "fact %r is longer than %d characters" % (a, MAX_FACT_CHARS))
                na1 = normalise(a)
                if not na1 or (len(na1) == 1 and not na1.isdigit()):
                    # a bare letter ("-s" -> "s") would match any answer; a single digit is allowed
                    fail(where, "fact %r is empty or a single letter after normalisation" % a)
            na = [normalise(a) for a in alts]
            # a fact the question (or the earlier exchange) already contains proves nothing;
            # single digits are exempt here since they occur inside longer numbers
            if any(len(x) > 1 and x in nq for x in na):
                fail(where, "fact %r already occurs in the question" % (fact,))
            if nh and any(len(x) > 1 and x in nh for x in na):
                fail(where, "fact %r already occurs in the history" % (fact,))
            try:
                found = any(x and x in norm_text(r) for x in na for r in rel_ok)
            except RuntimeError as e:
                fail(where, str(e))
                continue
            if rel_ok and not found:
                fail(where, "fact %r not found in %s" % (fact, ", ".join(rel_ok)))

    # follow-ups must point back to an earlier line asking the same thing
    for lineno, obj in items:
        if "standalone" not in obj or "history" not in obj:
            continue
        where = "line %d (%s)" % (lineno, obj.get("id", "?"))
        sid = obj["standalone"]
        target = by_id.get(sid) if isinstance(sid, str) else None
        own = by_id.get(obj.get("id"))
        if target is None:
            fail(where, "standalone %r does not name a line in the file" % (sid,))
            continue
        tpos, tobj = target
        if own is None or tpos >= own[0]:
            fail(where, "standalone %s must come earlier in the file" % sid)
        if "history" in tobj:
            fail(where, "standalone %s is itself a follow-up" % sid)
        if obj.get("not_covered"):
            if not tobj.get("not_covered"):
                fail(where, "not_covered follow-up points to covered line %s" % sid)
        else:
            if tobj.get("not_covered"):
                fail(where, "standalone %s is not a covered question" % sid)
            elif sorted(tobj.get("relevant", [])) != sorted(obj.get("relevant", [])):
                fail(where, "relevant differs from its standalone %s" % sid)

    # counts
    objs = [o for _, o in items]
    total = len(objs)
    not_covered = [o for o in objs if o.get("not_covered")]
    followups = [o for o in objs if "history" in o]
    nc_followups = [o for o in followups if o.get("not_covered")]
    covered_standalone = [o for o in objs if not o.get("not_covered") and "history" not in o]
    per_doc = collections.Counter()
    per_doc_all = collections.Counter()
    for o in objs:
        for r in o.get("relevant", []) or []:
            per_doc_all[r] += 1
            if "history" not in o:
                per_doc[r] += 1

    print("questions file: %s" % os.path.relpath(args.file))
    print("total lines:                %d" % total)
    print("covered standalone:         %d" % len(covered_standalone))
    print("not_covered (all):          %d" % len(not_covered))
    print("lines with history:         %d (covered %d, not_covered %d)"
          % (len(followups), len(followups) - len(nc_followups), len(nc_followups)))
    print("covered lines per document (standalone + follow-ups):")
    for name in corpus_files:
        print("  %-38s %3d  (%d + %d)" % (name, per_doc_all[name], per_doc[name], per_doc_all[name] - per_doc[name]))

    if total < MIN_TOTAL:
        fail("counts", "%d lines, need at least %d" % (total, MIN_TOTAL))
    if len(not_covered) < MIN_NOT_COVERED:
        fail("counts", "%d not_covered, need at least %d" % (len(not_covered), MIN_NOT_COVERED))
    if len(followups) < MIN_WITH_HISTORY:
        fail("counts", "%d lines with history, need at least %d" % (len(followups), MIN_WITH_HISTORY))
    if len(nc_followups) < MIN_NOT_COVERED_FOLLOWUPS:
        fail("counts", "%d not_covered follow-ups, need at least %d" % (len(nc_followups), MIN_NOT_COVERED_FOLLOWUPS))
    if len(covered_standalone) < MIN_COVERED_STANDALONE:
        fail("counts", "%d covered standalone questions, need at least %d"
             % (len(covered_standalone), MIN_COVERED_STANDALONE))
    for name in corpus_files:
        if per_doc[name] < MIN_PER_DOCUMENT:
            fail("counts", "%s has %d standalone questions, need at least %d" % (name, per_doc[name], MIN_PER_DOCUMENT))

    if failures:
        print("\n%d failure(s):" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("\nOK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
