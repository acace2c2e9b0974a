//! Stop strings over a stream of decoded text.
//!
//! The generator decodes tokens into text pieces one at a time; a stop string may arrive
//! split over several pieces. [`StopMatcher`] sits between the decoder and the client: it
//! passes on at once all text that can no longer be the start of a stop string, holds back a
//! tail that still might be (at most the longest stop string less one byte), and reports the
//! first stop string to complete, cutting the output just before it.
//!
//! "First" means the stop string that ends earliest in the text; of several ending at the same
//! byte, the longest. This is what a character-by-character stream would see, so the result
//! does not depend on how the text was cut into pieces (a test checks this against a naive
//! reference). Text is handled in whole characters: pieces are whole characters, and the
//! held-back tail always starts on a character boundary.

/// What a [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopOutcome<'a> {
    /// Text that may be sent to the client now. When `stopped`, it ends just before the stop
    /// string.
    pub(crate) emit: &'a str,
    /// A stop string completed: generation should end, and nothing after `emit` is output.
    pub(crate) stopped: bool,
}

/// Finds stop strings in a stream of text pieces for one sequence.
///
/// Pushing costs no allocation once the internal buffer has grown to the held-back tail plus
/// a piece; when nothing is held back and the piece neither holds nor starts a stop string,
/// the piece itself is handed back without a copy.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    /// The stop strings, empty ones dropped.
    stops: Vec<String>,
    /// Bytes of the longest stop string.
    longest: usize,
    /// Text not yet passed on, after its first `emitted` bytes (handed out by the last push
    /// and dropped at the start of the next call).
    buf: String,
    emitted: usize,
    /// A stop string completed; everything from now on is dropped.
    stopped: bool,
}

/// Where a scan of the pending text ended.
enum Scan {
    /// A stop string starts at this byte.
    Stop(usize),
    /// No stop string; text from this byte on may still begin one.
    Hold(usize),
}

impl StopMatcher {
    /// A matcher for these stop strings (validated by `SamplingParams::validate`; empty ones
    /// are ignored).
    pub(crate) fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest,
            ..Self::default()
        }
    }

    /// Feeds the next decoded piece (whole characters) and says what may be output now. Once
    /// a stop string has completed, every later push emits nothing and reports `stopped`.
    pub(crate) fn push<'a>(&'a mut self, text: &'a str) -> StopOutcome<'a> {
        if self.stopped {
            return StopOutcome {
                emit: "",
                stopped: true,
            };
        }
        self.buf.drain(..self.emitted);
        self.emitted = 0;
        if self.buf.is_empty() {
            // Nothing held back: look at the piece where it lies.
            return match scan(&self.stops, self.longest, text) {
                Scan::Stop(at) => {
                    self.stopped = true;
                    StopOutcome {
                        emit: &text[..at],
                        stopped: true,
                    }
                }
                Scan::Hold(at) => {
                    self.buf.push_str(&text[at..]);
                    StopOutcome {
                        emit: &text[..at],
                        stopped: false,
                    }
                }
            };
        }
        self.buf.push_str(text);
        let (at, stopped) = match scan(&self.stops, self.longest, &self.buf) {
            Scan::Stop(at) => (at, true),
            Scan::Hold(at) => (at, false),
        };
        self.stopped = stopped;
        self.emitted = at;
        StopOutcome {
            emit: &self.buf[..at],
            stopped,
        }
    }

    /// Generation ended for another reason (end token, length): returns the held-back tail,
    /// which is output as it is. Empty after a stop string. The matcher is then empty and may
    /// be reused.
    pub(crate) fn flush(&mut self) -> String {
        let mut tail = std::mem::take(&mut self.buf);
        if self.stopped {
            tail.clear();
        } else {
            tail.drain(..self.emitted);
        }
        self.emitted = 0;
        self.stopped = false;
        tail
    }
}

/// Finds the stop string that completes first in `text` (earliest end, then longest), or else
/// the earliest byte from which `text` could still grow into one.
fn scan(stops: &[String], longest: usize, text: &str) -> Scan {
    let mut first: Option<(usize, usize)> = None; // (end, start)
    for stop in stops {
        // For one stop string the earliest start is also the earliest end.
        if let Some(start) = text.find(stop.as_str()) {
            let key = (start + stop.len(), start);
            if first.is_none_or(|f| key < f) {
                first = Some(key);
            }
        }
    }
    if let Some((_, start)) = first {
        return Scan::Stop(start);
    }
    // The longest tail of `text` that is a proper prefix of some stop string. No stop string
    // is complete in `text`, so nothing before that tail can start one.
    let bytes = text.as_bytes();
    let from = text.len().saturating_sub(longest.saturating_sub(1));
    for at in from..text.len() {
        if !text.is_char_boundary(at) {
            continue;
        }
        let tail = &bytes[at..];
        if stops.iter().any(|s| s.as_bytes().starts_with(tail)) {
            return Scan::Hold(at);
        }
    }
    Scan::Hold(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        StopMatcher::new(&stops)
    }

    /// Pushes `pieces` and collects (what each push emitted, whether it stopped) until a stop;
    /// then the flushed tail.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut emitted = Vec::new();
        for piece in pieces {
            let out = m.push(piece);
            emitted.push(out.emit.to_owned());
            if out.stopped {
                return (emitted, true, m.flush());
            }
        }
        (emitted, false, m.flush())
    }

    /// The whole output, by brute force: the text before the first stop string to complete
    /// (earliest end, then longest), or all of it.
    fn reference(text: &str, stops: &[&str]) -> (String, bool) {
        for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
            let head = &text[..end];
            if let Some(stop) = stops
                .iter()
                .filter(|s| !s.is_empty() && head.ends_with(*s))
                .max_by_key(|s| s.len())
            {
                return (head[..end - stop.len()].to_owned(), true);
            }
        }
        (text.to_owned(), false)
    }

    #[test]
    fn without_stops_text_passes_straight_through() {
        let mut m = matcher(&[]);
        let piece = String::from("hello");
        let out = m.push(&piece);
        assert_eq!(
            out,
            StopOutcome {
                emit: "hello",
                stopped: false
            }
        );
        assert!(std::ptr::eq(out.emit.as_ptr(), piece.as_ptr()), "no copy");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("Hello <").emit, "Hello ");
        assert_eq!(m.push("/").emit, "");
        assert_eq!(m.push("s").emit, "");
        assert_eq!(
            m.push("> world"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );
        // After a stop everything is dropped.
        assert_eq!(
            m.push("more"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_inside_one_piece_cuts_the_rest() {
        let mut m = matcher(&["END"]);
        assert_eq!(
            m.push("abc"),
            StopOutcome {
                emit: "abc",
                stopped: false
            }
        );
        assert_eq!(
            m.push("xENDyz"),
            StopOutcome {
                emit: "x",
                stopped: true
            }
        );
    }

    #[test]
    fn partial_prefix_is_held_then_released() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("a ST").emit, "a ");
        assert_eq!(m.push("O").emit, "");
        // Diverges: the held "STO" goes out with the new text.
        assert_eq!(m.push("RE").emit, "STORE");
        // Held back again at the end, then flushed.
        assert_eq!(m.push(" S").emit, " ");
        assert_eq!(m.flush(), "S");
    }

    #[test]
    fn only_the_tail_that_can_still_match_is_held() {
        let mut m = matcher(&["aab"]);
        assert_eq!(m.push("aaa").emit, "a");
        assert_eq!(
            m.push("b"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );
        // The stop string turns out to start one character into the held tail.
        let mut m = matcher(&["aab"]);
        assert_eq!(m.push("aaa").emit, "a");
        assert_eq!(
            m.push("ab"),
            StopOutcome {
                emit: "a",
                stopped: true
            }
        );
        // The held tail "aba" is released up to the next place "abab" could start.
        let mut m = matcher(&["abab"]);
        assert_eq!(m.push("xaba").emit, "x");
        assert_eq!(m.push("a").emit, "aba");
        assert_eq!(m.push("ba").emit, "");
        assert_eq!(m.flush(), "aba");
    }

    #[test]
    fn overlapping_stops_first_completed_wins() {
        // "ab" completes before "bc".
        let mut m = matcher(&["ab", "bc"]);
        assert_eq!(m.push("xa").emit, "x");
        assert_eq!(
            m.push("bc"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );
        let mut m = matcher(&["bc", "ab"]);
        assert_eq!(
            m.push("xbabc"),
            StopOutcome {
                emit: "xb",
                stopped: true
            }
        );
        // "bc" completes inside "abcd" before "abcd" does.
        let mut m = matcher(&["abcd", "bc"]);
        assert_eq!(
            m.push("xabcd"),
            StopOutcome {
                emit: "xa",
                stopped: true
            }
        );
        // Same end: the longer one.
        let mut m = matcher(&["bc", "abc"]);
        assert_eq!(m.push("xab").emit, "x");
        assert_eq!(
            m.push("c"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );
        // One stop string a prefix of another: the shorter completes first.
        let mut m = matcher(&["abc", "ab"]);
        assert_eq!(
            m.push("zab"),
            StopOutcome {
                emit: "z",
                stopped: true
            }
        );
    }

    #[test]
    fn unicode_is_held_and_cut_on_character_boundaries() {
        let mut m = matcher(&["日本"]);
        assert_eq!(m.push("今日").emit, "今");
        assert_eq!(m.push("は").emit, "日は");
        assert_eq!(m.push("日").emit, "");
        assert_eq!(
            m.push("本語"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );

        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("caf").emit, "caf");
        assert_eq!(m.push("é").emit, "");
        assert_eq!(
            m.push("!"),
            StopOutcome {
                emit: "",
                stopped: true
            }
        );

        // A stop sharing a first byte, but not a first character, with the text.
        let mut m = matcher(&["é"]); // C3 A9
        assert_eq!(m.push("ã").emit, "ã"); // C3 A3
        assert_eq!(
            m.push("🦀é"),
            StopOutcome {
                emit: "🦀",
                stopped: true
            }
        );
    }

    #[test]
    fn flush_returns_the_held_tail_and_resets() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("done <|en").emit, "done ");
        assert_eq!(m.flush(), "<|en");
        assert_eq!(m.flush(), "");
        // Reusable after a flush, including one after a stop.
        assert!(m.push("<|end|>").stopped);
        assert_eq!(m.flush(), "");
        assert_eq!(m.push("x <|").emit, "x ");
        // Text handed out by the last push is not returned again.
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("a<").emit, "a");
        assert_eq!(m.push("b <|").emit, "<b ");
        assert_eq!(m.flush(), "<|");
    }

    #[test]
    fn output_does_not_depend_on_how_text_is_cut() {
        let cases: [(&str, &[&str]); 8] = [
            ("the end is near</s>tail", &["</s>"]),
            ("xxabcdyy", &["abcd", "bc"]),
            ("ababababc", &["abc", "babc"]),
            ("a<|im_end|>b", &["<|im_end|>", "<|im"]),
            ("今日は日本語です", &["本語", "日本語で"]),
            ("no stop here <", &["<|end|>"]),
            ("aaaaab", &["aab", "aaaaaa"]),
            ("Q: hi\nA: yo\nQ:", &["\nQ:", "\n\n"]),
        ];
        for (text, stops) in cases {
            let (want, want_stopped) = reference(text, stops);
            let chars: Vec<&str> = text
                .char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect();
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let mut cuts: Vec<Vec<&str>> = vec![vec![text], chars];
            // Every cut into two, and a few into three.
            for &i in &bounds {
                cuts.push(vec![&text[..i], &text[i..]]);
                for &j in bounds.iter().filter(|&&j| j > i).step_by(3) {
                    cuts.push(vec![&text[..i], &text[i..j], &text[j..]]);
                }
            }
            for pieces in cuts {
                let mut m = matcher(stops);
                let (emitted, stopped, tail) = run(&mut m, &pieces);
                let got = emitted.concat() + &tail;
                assert_eq!(
                    (&got, stopped),
                    (&want, want_stopped),
                    "{text:?} cut as {pieces:?}"
                );
            }
        }
    }
}
