#!/usr/bin/env python3
"""Feeds every PDF of a corpus to hearth's extraction worker and reports how it fared.

    scripts/pdf_corpus.py WORKER CORPUS_DIR REPORT.json [--timeout 120] [--limit N] [--match S]

WORKER is the `hearth-extract` binary (or any program that serves hearth's extraction
protocol on stdin/stdout: a JSON header line `{"kind":"pdf","len":N}`, N raw bytes; the reply
is the one line starting with "\\x1eHEARTH " that holds a JSON `Result<Extracted,String>`;
a line "\\x1eHEARTH-PROGRESS DONE TOTAL" reports OCR progress; other lines are ignored). One
worker at a time, as the product runs it: each document has a wall-clock limit (120 s by
default) that, as in the product, each progress line restarts (--no-progress-restart: not);
a worker that overruns is killed (with its children) and replaced, and so is one that dies.
A death is a crash; an `{"Err": ...}` reply is a clean error.

For reference, each file is also read by poppler-utils (not timed with hearth): `pdfinfo`
(producer, pages), `pdffonts` (a text layer = at least one font on some page; the definition
used for the target) and `pdftotext` (non-space characters; the second definition, >= 100).

Standard library only. Writes REPORT.json (updated as it goes) and prints a summary.
"""

import argparse
import collections
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

REPLY_MARK = b"\x1eHEARTH "
PROGRESS_MARK = b"\x1eHEARTH-PROGRESS "
RETIRE_MARK = b"\x1eHEARTH-RETIRE"
TEXT_MIN_CHARS = 100  # pdftotext definition of a text layer
REF_TIMEOUT = 120  # seconds for each poppler reference command


def nonspace(s):
    return sum(1 for c in s if not c.isspace())


def run_ref(args, timeout=REF_TIMEOUT):
    """Runs a poppler tool; returns (rc, stdout text) or (None, reason) on timeout."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=timeout, start_new_session=True)
        return p.returncode, p.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return None, "timeout"


def reference(path):
    """What poppler says about a file: producer, pages, fonts, pdftotext characters."""
    ref = {}
    rc, out = run_ref(["pdfinfo", path])
    info = {}
    if rc == 0:
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    ref["producer"] = info.get("Producer")
    ref["creator"] = info.get("Creator")
    ref["pdf_version"] = info.get("PDF version")
    ref["encrypted"] = info.get("Encrypted")
    try:
        ref["pages_pdfinfo"] = int(info.get("Pages", ""))
    except ValueError:
        ref["pages_pdfinfo"] = None
    rc, out = run_ref(["pdffonts", path])
    if rc == 0:
        lines = out.splitlines()
        # Two header lines (names, dashes), then one line per font.
        ref["fonts"] = max(0, len(lines) - 2)
    else:
        ref["fonts"] = None  # pdffonts failed or timed out
    rc, out = run_ref(["pdftotext", "-q", "-enc", "UTF-8", path, "-"])
    ref["pdftotext_rc"] = rc
    ref["pdftotext_chars"] = nonspace(out) if rc is not None else None
    return ref


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except (OSError, ValueError):
            pass
    return out


def describe_status(rc):
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


class Worker:
    """One extraction process, its stdout and stderr drained by threads."""

    def __init__(self, program, env):
        self.proc = subprocess.Popen(
            [program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.pid = self.proc.pid
        self.replies = queue.Queue()
        self.stderr_tail = b""
        self.hwm_kib = 0
        self.child_hwm_kib = 0
        self.docs = 0
        self.retiring = False
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            if line.rstrip(b"\n") == RETIRE_MARK:
                self.replies.put(("retire", None))
            elif line.startswith(REPLY_MARK):
                self.replies.put(("reply", line[len(REPLY_MARK):]))
            elif line.startswith(PROGRESS_MARK):
                try:
                    done, total = (int(x) for x in line[len(PROGRESS_MARK):].split()[:2])
                except ValueError:
                    continue
                self.replies.put(("progress", (done, total)))
        self.replies.put(None)  # EOF: the worker is gone

    def _read_stderr(self):
        while True:
            chunk = self.proc.stderr.read1(4096)
            if not chunk:
                return
            self.stderr_tail = (self.stderr_tail + chunk)[-4096:]

    def sample(self):
        self.hwm_kib = max(self.hwm_kib, vm_hwm_kib(self.pid))
        for kid in descendants(self.pid):
            self.child_hwm_kib = max(self.child_hwm_kib, vm_hwm_kib(kid))

    def _write(self, data, errors):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            errors.append(repr(e))

    def extract(self, data, timeout, progress_restarts=True, without_pdf_extract=None):
        """Returns ("reply", json) | ("dead", None) | ("timeout", None), the seconds taken and
        the progress lines seen (the last (done, total), how many). A worker that announced its
        retirement (`self.retiring`) exits after the reply, as hearth's pool expects."""
        head = {"kind": "pdf", "len": len(data)}
        if without_pdf_extract:
            head["without_pdf_extract"] = without_pdf_extract
        header = json.dumps(head).encode() + b"\n"
        errors = []
        started = time.monotonic()
        deadline = started + timeout
        progress = {"last": None, "lines": 0}
        writer = threading.Thread(target=self._write, args=(header + data, errors), daemon=True)
        writer.start()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.sample()
                return "timeout", None, time.monotonic() - started, progress
            try:
                item = self.replies.get(timeout=min(0.25, left))
            except queue.Empty:
                self.sample()
                continue
            if item is not None and item[0] == "retire":
                self.retiring = True
                continue
            if item is not None and item[0] == "progress":
                progress["last"] = item[1]
                progress["lines"] += 1
                if progress_restarts:
                    deadline = time.monotonic() + timeout
                continue
            took = time.monotonic() - started
            self.sample()
            if item is None:
                return "dead", None, took, progress
            self.docs += 1
            return "reply", item[1], took, progress

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def death(self):
        """The exit status of a worker that closed its stdout, and its stderr tail."""
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        time.sleep(0.2)  # let the stderr thread drain
        # Kill whatever the dead worker left behind (a pdftotext child).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        return describe_status(rc), self.stderr_tail.decode("utf-8", "replace").strip()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


def group_reason(reason):
    r = re.sub(r"\d+", "N", reason or "")
    return r[:140]


def find_pdfs(corpus):
    files = []
    for root, _dirs, names in os.walk(corpus):
        for n in names:
            if n.lower().endswith(".pdf"):
                p = os.path.join(root, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    files.append(p)
    files.sort()
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("worker")
    ap.add_argument("corpus")
    ap.add_argument("report")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N files")
    ap.add_argument("--match", default="", help="only files whose path contains this")
    ap.add_argument("--every", type=int, default=1,
                    help="a sample: every Nth file in path order (1st, N+1th, ...)")
    ap.add_argument("--no-reference", action="store_true", help="skip the poppler reference")
    ap.add_argument("--no-progress-restart", action="store_true",
                    help="a progress line does not restart the time limit")
    a = ap.parse_args()

    files = [f for f in find_pdfs(a.corpus) if a.match in f][:: max(1, a.every)]
    if a.limit:
        files = files[: a.limit]
    if not files:
        sys.exit(f"no PDF under {a.corpus}")
    env = dict(os.environ)
    env.setdefault("HEARTH_EXTRACT_MEMORY_MIB", "2048")
    env.setdefault("HEARTH_EXTRACT_MAX_TEXT_BYTES", str(64 * 1024 * 1024))
    # pdf-extract gets half of it, as in hearth's pool.
    env.setdefault("HEARTH_EXTRACT_TIMEOUT_MS", str(int(a.timeout * 1000)))

    results = []
    workers_started = 0
    peak_hwm = 0
    peak_child_hwm = 0
    worker = None
    wall_started = time.monotonic()
    hearth_secs = 0.0

    def save(final):
        report = summarise(results, a, workers_started, peak_hwm, peak_child_hwm,
                           hearth_secs, time.monotonic() - wall_started, final)
        tmp = a.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, a.report)
        return report

    for i, path in enumerate(files, 1):
        rel = os.path.relpath(path, a.corpus)
        with open(path, "rb") as f:
            data = f.read()
        rec = {"file": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if not a.no_reference:
            rec.update(reference(path))
        if worker is None:
            worker = Worker(a.worker, env)
            workers_started += 1
        kind, reply, took, progress = worker.extract(data, a.timeout,
                                                     not a.no_progress_restart)
        if kind == "dead" and not progress["lines"]:
            # hearth's pool reads a PDF that killed its process once more, poppler alone.
            status, tail = worker.death()
            peak_hwm = max(peak_hwm, worker.hwm_kib)
            rec["retried_after"] = f"worker died ({status})"
            worker = Worker(a.worker, env)
            workers_started += 1
            kind, reply, took2, progress = worker.extract(
                data, a.timeout, not a.no_progress_restart,
                without_pdf_extract=f"ended the extraction process: {status}")
            took += took2
        hearth_secs += took
        rec["secs"] = round(took, 3)
        if progress["lines"]:
            rec["progress_lines"] = progress["lines"]
            rec["progress_last"] = progress["last"]
        if kind == "reply":
            try:
                res = json.loads(reply)
            except ValueError as e:
                res = {"Err": f"(driver) unparsable reply: {e}"}
            if "Ok" in res:
                ex = res["Ok"]
                texts = [b.get("text", "") for b in ex.get("blocks", [])]
                warns = ex.get("warnings") or []
                rec.update(outcome="ok", chars=sum(len(t) for t in texts),
                           nonspace_chars=sum(nonspace(t) for t in texts),
                           pages=ex.get("pages"), engine=ex.get("engine"),
                           ocr=ex.get("ocr"),
                           warnings=len(warns),
                           first_warning=warns[0] if warns else None,
                           warning_list=[w[:300] for w in warns[:8]],
                           page_errors=sum(1 for w in warns if is_page_error(w)))
            else:
                rec.update(outcome="error", error=res.get("Err"))
        elif kind == "timeout":
            worker.sample()
            peak_hwm = max(peak_hwm, worker.hwm_kib)
            peak_child_hwm = max(peak_child_hwm, worker.child_hwm_kib)
            worker.kill()
            at = ""
            if progress["last"]:
                at = f" (OCR progress {progress['last'][0]}/{progress['last'][1]})"
            rec.update(outcome="timeout",
                       error=f"no reply within {a.timeout:.0f} s{at}; worker killed and replaced")
            worker = None
        else:
            status, tail = worker.death()
            peak_hwm = max(peak_hwm, worker.hwm_kib)
            peak_child_hwm = max(peak_child_hwm, worker.child_hwm_kib)
            rec.update(outcome="crash", error=f"worker died ({status})", stderr_tail=tail[-800:])
            worker = None
        if worker is not None:
            peak_hwm = max(peak_hwm, worker.hwm_kib)
            peak_child_hwm = max(peak_child_hwm, worker.child_hwm_kib)
            if worker.retiring:
                rec["retired_worker"] = True
                worker.close()
                worker = None
        results.append(rec)
        flag = rec["outcome"]
        if flag == "ok":
            flag = f"ok {rec['nonspace_chars']} chars" + (f" ({rec['engine']})" if rec.get("engine") else "")
        print(f"[{i}/{len(files)}] {took:7.2f}s {flag:24.24} {rel}", file=sys.stderr, flush=True)
        if i % 20 == 0:
            save(False)
    if worker is not None:
        worker.sample()
        peak_hwm = max(peak_hwm, worker.hwm_kib)
        peak_child_hwm = max(peak_child_hwm, worker.child_hwm_kib)
        worker.close()
    report = save(True)
    print_summary(report)


def is_page_error(w):
    """A warning of pdf-extract about a page it could not read (not one of OCR's)."""
    return bool(re.match(r"page \d+: ", w)) and not re.search(
        r"OCR|tesseract|pdftoppm|render", w, re.I)


def lost_pages(r):
    """pdf-extract could not read some pages and its text was kept (not poppler's)."""
    return (r["outcome"] == "ok" and r.get("page_errors")
            and "poppler" not in (r.get("engine") or ""))


def has_text_layer(r):
    return (r.get("fonts") or 0) > 0


def pdftotext_text(r):
    return (r.get("pdftotext_chars") or 0) >= TEXT_MIN_CHARS


def yields_text(r):
    return r.get("outcome") == "ok" and r.get("nonspace_chars", 0) > 0


def summarise(results, a, workers_started, peak_hwm, peak_child_hwm, hearth_secs, wall, final):
    n = len(results)
    outcomes = collections.Counter(r["outcome"] for r in results)
    layer = [r for r in results if has_text_layer(r)]
    layer_ptt = [r for r in results if pdftotext_text(r)]
    pages = sum(r.get("pages") or 0 for r in results if r["outcome"] == "ok")
    pdfinfo_pages = sum(r.get("pages_pdfinfo") or 0 for r in results)
    errors = collections.Counter(group_reason(r.get("error")) for r in results
                                 if r["outcome"] == "error")
    engines = collections.Counter(
        re.sub(r"\(\d+ of \d+ pages\)", "(some pages)", r.get("engine") or "pdf-extract")
        for r in results if yields_text(r))
    producers = collections.Counter(
        re.sub(r"[\d.]+.*", "", (r.get("producer") or "?")).strip() or "?" for r in results)

    def rate(sub, pred):
        k = sum(1 for r in sub if pred(r))
        return {"of": len(sub), "yield_text": k,
                "percent": round(100.0 * k / len(sub), 2) if sub else None}

    weak = [r for r in layer_ptt if yields_text(r)
            and r.get("nonspace_chars", 0) < 0.5 * r["pdftotext_chars"]]
    return {
        "final": final,
        "worker": a.worker,
        "corpus": os.path.abspath(a.corpus),
        "timeout_s": a.timeout,
        "selection": {"match": a.match, "every": a.every, "limit": a.limit},
        "memory_mib": int(os.environ.get("HEARTH_EXTRACT_MEMORY_MIB", "2048")),
        "text_layer_definition": "pdffonts lists at least one font (some page uses a font)",
        "summary": {
            "pdfs": n,
            "bytes": sum(r["bytes"] for r in results),
            "outcomes": dict(outcomes),
            "crashes": outcomes.get("crash", 0),
            "timeouts": outcomes.get("timeout", 0),
            "clean_errors": outcomes.get("error", 0),
            "workers_started": workers_started,
            "deaths_retried_by_poppler": sum(1 for r in results if r.get("retried_after")),
            "workers_retired": sum(1 for r in results if r.get("retired_worker")),
            "text_layer_pdffonts": rate(layer, yields_text),
            "text_layer_pdftotext_100": rate(layer_ptt, yields_text),
            "text_layer_pdffonts_100_chars": rate(
                layer, lambda r: r.get("nonspace_chars", 0) >= TEXT_MIN_CHARS
                if r.get("outcome") == "ok" else False),
            "no_text_layer": n - len(layer),
            "no_text_layer_but_hearth_text": sum(1 for r in results
                                                 if not has_text_layer(r) and yields_text(r)),
            "weak_vs_pdftotext": len(weak),
            "pdf_extract_kept_with_lost_pages": sum(1 for r in results if lost_pages(r)),
            "ocr_docs": sum(1 for r in results if r.get("ocr")),
            "ocr_pages": sum((r.get("ocr") or {}).get("pages", 0) for r in results),
            "ocr_docs_text_replaced": sum(1 for r in results
                                          if "tesseract" in (r.get("engine") or "")),
            "engines": dict(engines),
            "hearth_seconds": round(hearth_secs, 2),
            "wall_seconds": round(wall, 2),
            "docs_per_s": round(n / hearth_secs, 3) if hearth_secs else None,
            "pages_hearth": pages,
            "pages_per_s": round(pages / hearth_secs, 2) if hearth_secs else None,
            "pages_pdfinfo": pdfinfo_pages,
            "peak_rss_worker_mib": round(peak_hwm / 1024, 1),
            "peak_rss_worker_children_sampled_mib": round(peak_child_hwm / 1024, 1),
            "slowest": sorted(({"file": r["file"], "secs": r["secs"]} for r in results),
                              key=lambda x: -x["secs"])[:10],
        },
        "errors": dict(errors.most_common()),
        "producers": dict(producers.most_common()),
        "files": results,
    }


def print_summary(rep):
    s = rep["summary"]
    files = rep["files"]
    print()
    print(f"corpus {rep['corpus']}  worker {rep['worker']}  limit {rep['timeout_s']:.0f} s"
          f"  memory {rep['memory_mib']} MiB")
    rows = [
        ("PDFs" + (f" (every {rep['selection']['every']}th)" if rep["selection"]["every"] > 1 else ""),
         s["pdfs"]),
        ("MB", round(s["bytes"] / 1e6, 1)),
        ("text layer (pdffonts: >= 1 font)", s["text_layer_pdffonts"]["of"]),
        ("  of which hearth yields text",
         f"{s['text_layer_pdffonts']['yield_text']} ({s['text_layer_pdffonts']['percent']} %)"),
        ("  of which hearth yields >= 100 chars",
         f"{s['text_layer_pdffonts_100_chars']['yield_text']}"
         f" ({s['text_layer_pdffonts_100_chars']['percent']} %)"),
        ("text layer (pdftotext >= 100 chars)", s["text_layer_pdftotext_100"]["of"]),
        ("  of which hearth yields text",
         f"{s['text_layer_pdftotext_100']['yield_text']} ({s['text_layer_pdftotext_100']['percent']} %)"),
        ("  hearth < 50 % of pdftotext's chars", s["weak_vs_pdftotext"]),
        ("pdf-extract text kept though pages lost", s["pdf_extract_kept_with_lost_pages"]),
        ("docs where OCR ran / pages OCR read", f"{s['ocr_docs']} / {s['ocr_pages']}"),
        ("docs with some OCR text kept", s["ocr_docs_text_replaced"]),
        ("no text layer (pdffonts)", s["no_text_layer"]),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))),
        ("crashes (worker died)", s["crashes"]),
        ("timeouts", s["timeouts"]),
        ("clean error replies", s["clean_errors"]),
        ("workers started", s["workers_started"]),
        ("deaths retried with poppler alone", s["deaths_retried_by_poppler"]),
        ("workers retired (pdf-extract left running)", s["workers_retired"]),
        ("engine of the text", ", ".join(f"{k} {v}" for k, v in s["engines"].items())),
        ("hearth time (s)", s["hearth_seconds"]),
        ("wall time incl. poppler reference (s)", s["wall_seconds"]),
        ("docs/s", s["docs_per_s"]),
        ("pages (hearth) / pages/s", f"{s['pages_hearth']} / {s['pages_per_s']}"),
        ("peak RSS worker (VmHWM, MiB)", s["peak_rss_worker_mib"]),
        ("peak RSS worker children (sampled, MiB)", s["peak_rss_worker_children_sampled_mib"]),
    ]
    for k, v in rows:
        print(f"  {k:42} {v}")
    if rep["errors"]:
        print("\nclean error replies by reason:")
        for k, v in rep["errors"].items():
            print(f"  {v:4}  {k}")
    bad = [r for r in files if r["outcome"] in ("crash", "timeout")]
    if bad:
        print("\ncrashes and timeouts:")
        for r in bad:
            print(f"  {r['outcome']:8} {r['bytes']:>10} B  {r['file']}  {r.get('error')}")
    miss = [r for r in files if has_text_layer(r) and not yields_text(r)]
    print(f"\nPDFs with a text layer (pdffonts) that yielded no text: {len(miss)}")
    for r in miss:
        why = r.get("error") or (f"ok but {r.get('nonspace_chars')} chars; "
                                 f"{r.get('first_warning') or ''}")
        print(f"  {r['file']}\n      pdftotext {r.get('pdftotext_chars')} chars, fonts "
              f"{r.get('fonts')}, producer {r.get('producer')!r}: {why}")
    lost = [r for r in files if lost_pages(r)]
    if lost:
        print(f"\npdf-extract's text kept though it could not read some pages: {len(lost)}")
        for r in lost:
            print(f"  {r['page_errors']:>4}/{r.get('pages')} pages lost, {r['nonspace_chars']:>9} vs "
                  f"pdftotext {r.get('pdftotext_chars')} chars  {r['file']}\n"
                  f"      engine {r.get('engine') or 'pdf-extract'}; {r.get('first_warning')}")
    ocr = sorted((r for r in files if r.get("ocr")), key=lambda r: -r["secs"])
    if ocr:
        print(f"\nOCR ran on {len(ocr)} documents; the slowest:")
        for r in ocr[:15]:
            o = r["ocr"]
            print(f"  {r['secs']:7.1f}s  {o.get('pages')} pages OCR'd of {r.get('pages')}, "
                  f"confidence {o.get('confidence', 0):.0f}, engine {r.get('engine') or 'pdf-extract'}"
                  f"  {r['file']}")
    weak = [r for r in files if pdftotext_text(r) and yields_text(r)
            and r.get("nonspace_chars", 0) < 0.5 * r["pdftotext_chars"]]
    if weak:
        print(f"\nhearth text < 50 % of pdftotext's (non-space chars): {len(weak)}")
        for r in weak[:40]:
            print(f"  {r['nonspace_chars']:>9} vs {r['pdftotext_chars']:>9}  "
                  f"engine {r.get('engine') or 'pdf-extract'}  {r['file']}")


if __name__ == "__main__":
    main()
