#!/usr/bin/env python3
"""Check testdata/multilingual/questions.jsonl against the rendered documents.

Checks, for every question: the schema (id, lang, question, relevant, cross,
facts), that every relevant path exists under testdata/multilingual/, that every
fact string occurs in at least one relevant document (whitespace-normalised,
case-sensitive), that same-language questions point at documents of their own
language and cross-language ones at documents of another language, and that no
manual page occurs in two languages. Prints the counts per language and kind.

    python3 testdata/sources/multilingual/check_questions.py
"""
import collections
import json
import os
import re
import sys

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "multilingual")
KEYS = {"id", "lang", "question", "relevant", "cross", "facts"}


def norm(s):
    return re.sub(r"\s+", " ", s)


def main():
    errors = []
    docs = {}
    pages = collections.defaultdict(set)
    for lang in sorted(os.listdir(os.path.join(BASE, "docs"))):
        for name in sorted(os.listdir(os.path.join(BASE, "docs", lang))):
            rel = f"docs/{lang}/{name}"
            docs[rel] = norm(open(os.path.join(BASE, rel), encoding="utf-8").read())
            page = name[: -len(f".{lang}.txt")]
            pages[page].add(lang)
    for page, langs in pages.items():
        if len(langs) > 1:
            errors.append(f"page {page} occurs in several languages: {sorted(langs)}")

    counts = collections.Counter()
    per_doc = collections.Counter()
    ids = set()
    with open(os.path.join(BASE, "questions.jsonl"), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            q = json.loads(line)
            if set(q) != KEYS:
                errors.append(f"line {n}: keys {sorted(q)}")
                continue
            if q["id"] in ids:
                errors.append(f"duplicate id {q['id']}")
            ids.add(q["id"])
            if not q["relevant"] or not 1 <= len(q["facts"]) <= 2:
                errors.append(f"{q['id']}: needs relevant documents and 1-2 facts")
            for rel in q["relevant"]:
                if rel not in docs:
                    errors.append(f"{q['id']}: no document {rel}")
                    continue
                doc_lang = rel.split("/")[1]
                if q["cross"] == (doc_lang == q["lang"]):
                    errors.append(f"{q['id']}: cross={q['cross']} but document language is {doc_lang}")
                per_doc[(rel, q["cross"])] += 1
            for fact in q["facts"]:
                if not any(norm(fact) in docs.get(rel, "") for rel in q["relevant"]):
                    errors.append(f"{q['id']}: fact {fact!r} not found in {q['relevant']}")
            counts[(q["lang"], "cross" if q["cross"] else "same")] += 1

    for rel in docs:
        if per_doc[(rel, False)] < 2:
            errors.append(f"{rel}: fewer than 2 same-language questions")

    for (lang, kind), c in sorted(counts.items()):
        print(f"{lang:6s} {kind:5s} {c}")
    print(f"{len(ids)} questions, {len(docs)} documents, "
          f"{sum(os.path.getsize(os.path.join(BASE, d)) for d in docs)} bytes")
    for e in errors:
        print("ERROR", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
