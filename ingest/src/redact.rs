//! PII redaction, per collection: e-mail addresses, phone numbers, IBANs (mod-97 checked),
//! payment card numbers (Luhn checked), IPv4 and IPv6 addresses, plus the collection's own
//! named patterns. Applied to the extracted text (blocks, headings, title) before it is
//! normalised, chunked, embedded or stored; each match becomes `[REDACTED:KIND]`.
//!
//! Candidates are found by regular expressions (the `regex` crate: linear time, so a user's
//! pattern cannot make ingestion hang) and the numeric kinds are confirmed by their checksums
//! or digit counts, which keeps dates, versions and amounts out. Overlapping matches go to the
//! earliest, then the longest.

use std::net::Ipv6Addr;

use hearth_index::Redaction;
use regex::{Regex, RegexBuilder};

use crate::error::{IngestError, Result};
use crate::parse::Extracted;

/// The built-in kinds, as collections name them.
pub const KINDS: [&str; 5] = ["email", "phone", "iban", "card", "ip"];

/// Largest compiled size of one user pattern.
const PATTERN_LIMIT: usize = 1 << 20;

struct Detector {
    label: String,
    re: Regex,
    check: fn(&str) -> Verdict,
    /// A kind the collection does not redact, there only to claim its matches.
    claim_only: bool,
}

/// What a candidate match is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not this kind: other detectors may still claim the text.
    Pass,
    /// This kind: redact it.
    Redact,
    /// Shaped like this kind but failing its checksum (a mistyped IBAN): kept as it is, and
    /// no other detector redacts pieces of it.
    Keep,
}

/// A collection's compiled redaction rules.
pub struct Redactor {
    detectors: Vec<Detector>,
}

fn always(_: &str) -> Verdict {
    Verdict::Redact
}

fn when(ok: bool) -> Verdict {
    if ok { Verdict::Redact } else { Verdict::Pass }
}

fn builtin(kind: &str) -> Option<Detector> {
    let (re, check): (&str, fn(&str) -> Verdict) = match kind {
        "email" => (
            r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
            always,
        ),
        "iban" => (r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b", |s| {
            if iban_ok(s) {
                Verdict::Redact
            } else {
                Verdict::Keep
            }
        }),
        "card" => (r"\b[0-9](?:[ \-]?[0-9]){12,18}\b", |s| when(luhn_ok(s))),
        "phone" => (
            r"(?:\+|\b00)[1-9][0-9]{0,2}[ .\-]?(?:\(0\)[ .\-]?)?(?:\(?[0-9]{1,4}\)?[ .\-]?){1,5}[0-9]{2,4}\b|(?:\([0-9]{2,5}\)|\b0[0-9]{1,4}|\b[2-9][0-9]{2})[ .\-/][0-9]{2,4}(?:[ .\-][0-9]{2,4}){1,3}\b",
            |s| when(phone_ok(s)),
        ),
        "ip" => (
            r"\b(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}\b|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}",
            |s| when(ip_ok(s)),
        ),
        _ => return None,
    };
    // invariant: the built-in expressions are constants that compile.
    let re = Regex::new(re).expect("built-in redaction pattern compiles");
    Some(Detector {
        label: format!("[REDACTED:{}]", kind.to_ascii_uppercase()),
        re,
        check,
        claim_only: false,
    })
}

impl Redactor {
    /// Compiles a collection's rules; `None` when it redacts nothing. Errors name the bad kind
    /// or pattern.
    pub fn new(spec: &Redaction) -> Result<Option<Self>> {
        if spec.is_off() {
            return Ok(None);
        }
        let mut detectors = Vec::new();
        // Built-ins in a fixed order: the checksummed kinds before the looser phone pattern.
        // An IBAN or card number is claimed (kept whole) even when its kind is not redacted,
        // so that the phone pattern does not cut pieces out of it.
        for kind in ["email", "iban", "card", "ip", "phone"] {
            let wanted = spec.kinds.iter().any(|k| k == kind);
            if wanted || matches!(kind, "iban" | "card") {
                detectors.extend(builtin(kind).map(|d| Detector {
                    claim_only: !wanted,
                    ..d
                }));
            }
        }
        if let Some(bad) = spec.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(IngestError::InvalidInput(format!(
                "unknown redaction kind {bad:?}: use {}",
                KINDS.join(", ")
            )));
        }
        for p in &spec.patterns {
            let name_ok = (1..=32).contains(&p.name.len())
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(IngestError::InvalidInput(format!(
                    "redaction pattern name {:?} is invalid: use 1-32 of A-Z, a-z, 0-9, '_' or '-'",
                    p.name
                )));
            }
            let re = RegexBuilder::new(&p.regex)
                .size_limit(PATTERN_LIMIT)
                .build()
                .map_err(|e| {
                    IngestError::InvalidInput(format!("redaction pattern {:?}: {e}", p.name))
                })?;
            if re.is_match("") {
                return Err(IngestError::InvalidInput(format!(
                    "redaction pattern {:?} matches the empty string",
                    p.name
                )));
            }
            detectors.push(Detector {
                label: format!("[REDACTED:{}]", p.name.to_ascii_uppercase()),
                re,
                check: always,
                claim_only: false,
            });
        }
        Ok(Some(Self { detectors }))
    }

    /// `text` with every match replaced, and how many there were.
    pub fn redact(&self, text: &str) -> (String, u32) {
        // (start, end, detector, redact?)
        let mut spans: Vec<(usize, usize, usize, bool)> = Vec::new();
        for (d, det) in self.detectors.iter().enumerate() {
            for m in det.re.find_iter(text) {
                match (det.check)(m.as_str()) {
                    Verdict::Pass => {}
                    Verdict::Redact if !det.claim_only => {
                        spans.push((m.start(), m.end(), d, true));
                    }
                    Verdict::Redact | Verdict::Keep => spans.push((m.start(), m.end(), d, false)),
                }
            }
        }
        if !spans.iter().any(|s| s.3) {
            return (text.to_owned(), 0);
        }
        spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut out = String::with_capacity(text.len());
        let (mut at, mut n) = (0, 0);
        for (start, end, d, redact) in spans {
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            if redact {
                out.push_str(&self.detectors[d].label);
                n += 1;
            } else {
                out.push_str(&text[start..end]);
            }
            at = end;
        }
        out.push_str(&text[at..]);
        (out, n)
    }

    /// Redacts everything extracted from a document; returns the number of matches.
    pub(crate) fn apply(&self, ex: &mut Extracted) -> u32 {
        let mut total = 0;
        let mut fix = |s: &mut String| {
            let (r, n) = self.redact(s);
            if n > 0 {
                *s = r;
                total += n;
            }
        };
        if let Some(t) = &mut ex.title {
            fix(t);
        }
        for b in &mut ex.blocks {
            fix(&mut b.text);
            for h in &mut b.heading {
                fix(h);
            }
        }
        // What the document says about itself (an e-mail's sender and recipients) is stored in
        // its record: redacted like its text.
        for v in ex.metadata.values_mut() {
            fix(v);
        }
        total
    }
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn luhn_ok(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_ok(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn phone_ok(s: &str) -> bool {
    (8..=15).contains(&digits(s).len())
}

fn ip_ok(s: &str) -> bool {
    if s.contains('.') {
        return true;
    }
    // At least four hex digits: `a::b` (a C++ scope) and `::1` (loopback) are no one's data.
    s.parse::<Ipv6Addr>().is_ok() && s.chars().filter(char::is_ascii_hexdigit).count() >= 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_index::RedactionPattern;

    fn all() -> Redactor {
        Redactor::new(&Redaction {
            kinds: KINDS.iter().map(|k| (*k).to_owned()).collect(),
            patterns: vec![RedactionPattern {
                name: "employee".into(),
                regex: r"EMP-[0-9]{6}".into(),
            }],
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn each_kind_is_found_and_replaced() {
        let r = all();
        for (text, label) in [
            ("mail jane.doe+hr@corp.example.eu now", "EMAIL"),
            ("call +49 30 1234 5678 today", "PHONE"),
            ("call (030) 1234-5678 today", "PHONE"),
            ("call 0044 20 7946 0958", "PHONE"),
            ("call 555-867-5309 or", "PHONE"),
            ("pay DE89 3704 0044 0532 0130 00 please", "IBAN"),
            ("pay GB82WEST12345698765432 please", "IBAN"),
            ("card 4111 1111 1111 1111 exp", "CARD"),
            ("card 5500-0000-0000-0004 exp", "CARD"),
            ("host 192.168.10.254 is", "IP"),
            ("host 2001:db8::8a2e:370:7334 is", "IP"),
            ("host fe80::1 is", "IP"),
            ("staff EMP-004711 joined", "EMPLOYEE"),
        ] {
            let (out, n) = r.redact(text);
            assert_eq!(n, 1, "{text} -> {out}");
            assert!(
                out.contains(&format!("[REDACTED:{label}]")),
                "{text} -> {out}"
            );
        }
    }

    #[test]
    fn look_alikes_are_left_alone() {
        let r = all();
        for text in [
            "version 1.2.3 and 10.0 and 2024-03-15",
            "at 10:30:00 on 2024-03-15",
            "card 4111 1111 1111 1112 fails Luhn",
            "iban DE88 3704 0044 0532 0130 00 fails mod 97",
            "order 12345 costs 1,299.00 EUR",
            "see RFC 7231 section 6.5.1",
            "999.1.1.1 is no address",
            "a::b is C++ scope",
            "page 12 of 300",
        ] {
            let (out, n) = r.redact(text);
            assert_eq!(n, 0, "{text} -> {out}");
        }
    }

    #[test]
    fn kinds_not_asked_for_are_left_whole() {
        let phones = Redactor::new(&Redaction {
            kinds: vec!["phone".into()],
            patterns: vec![],
        })
        .unwrap()
        .unwrap();
        let text = "pay DE89 3704 0044 0532 0130 00 or call +49 30 1234 5678";
        let (out, n) = phones.redact(text);
        assert_eq!(n, 1, "{out}");
        assert_eq!(
            out,
            "pay DE89 3704 0044 0532 0130 00 or call [REDACTED:PHONE]"
        );
    }

    #[test]
    fn overlapping_matches_count_once() {
        let (out, n) = all().redact("x 4111-1111-1111-1111, y me@a.io and me@a.io");
        assert_eq!(n, 3, "{out}");
        assert_eq!(
            out,
            "x [REDACTED:CARD], y [REDACTED:EMAIL] and [REDACTED:EMAIL]"
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        let spec = |kinds: &[&str], name: &str, re: &str| Redaction {
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            patterns: vec![RedactionPattern {
                name: name.into(),
                regex: re.into(),
            }],
        };
        for (s, msg) in [
            (spec(&["ssn"], "x", "a"), "unknown redaction kind"),
            (spec(&[], "bad name", "a"), "is invalid"),
            (spec(&[], "x", "("), "redaction pattern \"x\""),
            (spec(&[], "x", "a*"), "matches the empty string"),
            (
                spec(&[], "x", "[a-z]{1000}{1000}"),
                "redaction pattern \"x\"",
            ),
        ] {
            let e = Redactor::new(&s).err().unwrap().to_string();
            assert!(e.contains(msg), "{e}");
        }
        assert!(Redactor::new(&Redaction::default()).unwrap().is_none());
    }
}
