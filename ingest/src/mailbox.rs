//! Mailboxes too large to be one document: an mbox file is read as a stream, one message at a
//! time, so a mailbox of any size is ingested in the memory of its largest message. Each
//! message becomes a document of its own (as the messages of a small mailbox do); the mailbox
//! itself becomes a listing, one line per message (date, sender, subject), which is the parent
//! of the messages.

use std::io::{BufRead, Read};

use mail_parser::MessageParser;

/// Longest piece of a line read at once: a longer line is read in pieces, so no line (a
/// mailbox without newlines, say) is ever held whole.
const MAX_PIECE: u64 = 64 * 1024;

/// Most bytes of a message's header block read for its listing line.
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// One message of a mailbox, numbered from 1.
pub enum Message {
    /// Its bytes (without the `From ` separator line).
    Bytes(Vec<u8>),
    /// Larger than the limit: its size; its bytes were not kept.
    TooLarge(u64),
}

/// Reads an mbox stream and calls `each(n, message)` for every message in order. A message is
/// what follows a `From ` line at the start of the stream or after a blank line, up to the next
/// such line; one over `max` bytes is reported as [`Message::TooLarge`], its bytes dropped as
/// they are read. Memory: one message of at most `max` bytes, plus one piece of a line.
pub fn split<R: BufRead, E>(
    mut r: R,
    max: usize,
    io_error: impl Fn(std::io::Error) -> E,
    mut each: impl FnMut(usize, Message) -> Result<(), E>,
) -> Result<usize, E> {
    let mut n = 0;
    let mut msg: Vec<u8> = Vec::new();
    let mut size: u64 = 0;
    let mut started = false;
    let mut at_line_start = true;
    let mut prev_blank = true;
    let mut in_separator = false;
    let mut piece: Vec<u8> = Vec::new();
    let mut flush = |n: usize, msg: &mut Vec<u8>, size: u64| -> Result<(), E> {
        if size > max as u64 {
            each(n, Message::TooLarge(size))
        } else {
            each(n, Message::Bytes(std::mem::take(msg)))
        }
    };
    loop {
        piece.clear();
        let got = (&mut r)
            .take(MAX_PIECE)
            .read_until(b'\n', &mut piece)
            .map_err(&io_error)?;
        if got == 0 {
            break;
        }
        let line_start = at_line_start;
        at_line_start = piece.ends_with(b"\n");
        if line_start && prev_blank && piece.starts_with(b"From ") {
            if started {
                flush(n, &mut msg, size)?;
            }
            started = true;
            n += 1;
            msg.clear();
            size = 0;
            in_separator = !at_line_start;
            prev_blank = false;
            continue;
        }
        if in_separator {
            // The rest of a separator line longer than one piece.
            in_separator = !at_line_start;
            continue;
        }
        prev_blank = line_start && (piece == b"\n" || piece == b"\r\n");
        if !started {
            // Text before the first separator is no message.
            continue;
        }
        size += piece.len() as u64;
        if size <= max as u64 {
            msg.extend_from_slice(&piece);
        } else if !msg.is_empty() {
            msg = Vec::new();
        }
    }
    if started {
        flush(n, &mut msg, size)?;
    }
    Ok(n)
}

/// The listing line of message `n`: `n. date | sender | subject` from its header block.
pub fn listing_line(n: usize, message: &[u8]) -> String {
    let head = &message[..message.len().min(MAX_HEADER_BYTES)];
    let end = find(head, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| find(head, b"\n\n").map(|i| i + 2))
        .unwrap_or(head.len());
    let fields = MessageParser::default()
        .parse_headers(&head[..end])
        .map(|m| {
            [
                m.date().map(|d| d.to_rfc3339()),
                m.from().map(super::parse::mail_addresses),
                m.subject().map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" | ")
        })
        .unwrap_or_default();
    if fields.is_empty() {
        format!("{n}. (no header)")
    } else {
        format!("{n}. {fields}")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBOX: &str = "From alice@example.com Mon Jan  1 00:00:00 2024\nFrom: Alice <alice@example.com>\nTo: bob@example.com\nSubject: Quarterly figures\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nThe figures are in.\nFrom the desk of Alice.\n\nFrom bob@example.com Tue Jan  2 00:00:00 2024\nFrom: Bob <bob@example.com>\nSubject: Re: Quarterly figures\n\nThanks.\n";

    fn messages(text: &[u8], max: usize) -> Vec<Result<String, u64>> {
        let mut out = Vec::new();
        let n = split(
            std::io::Cursor::new(text),
            max,
            |e| e,
            |i, m| {
                assert_eq!(i, out.len() + 1);
                out.push(match m {
                    Message::Bytes(b) => Ok(String::from_utf8(b).unwrap()),
                    Message::TooLarge(s) => Err(s),
                });
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn messages_are_split_at_from_lines_after_a_blank_line() {
        let m = messages(MBOX.as_bytes(), 1 << 20);
        assert_eq!(m.len(), 2);
        let first = m[0].as_ref().unwrap();
        // "From the desk" is body text: it does not follow a blank line.
        assert!(first.starts_with("From: Alice") && first.contains("From the desk of Alice."));
        assert!(m[1].as_ref().unwrap().ends_with("Thanks.\n"));
        assert_eq!(
            listing_line(1, first.as_bytes()),
            "1. 2024-01-01T10:00:00Z | Alice <alice@example.com> | Quarterly figures"
        );
    }

    #[test]
    fn a_message_over_the_limit_is_counted_not_kept() {
        let big = format!(
            "From a Mon Jan  1 00:00:00 2024\nSubject: big\n\n{}\n\n{MBOX}",
            "x".repeat(300_000)
        );
        let m = messages(big.as_bytes(), 100_000);
        assert_eq!(m.len(), 3);
        assert!(matches!(m[0], Err(s) if s > 300_000));
        assert!(m[1].as_ref().unwrap().contains("Quarterly figures"));
    }

    #[test]
    fn a_line_without_end_is_read_in_pieces() {
        // 1 MiB without a newline after the separator, then one more message.
        let mut text = b"From a Mon Jan  1 00:00:00 2024\nSubject: long\n\n".to_vec();
        text.extend(std::iter::repeat_n(b'y', 1 << 20));
        text.extend_from_slice(b"\n\nFrom b Mon Jan  1 00:00:00 2024\nSubject: short\n\nok\n");
        let m = messages(&text, 2 << 20);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0].as_ref().unwrap().len(),
            (1 << 20) + "Subject: long\n\n".len() + 2
        );
        assert!(m[1].as_ref().unwrap().contains("Subject: short"));
    }

    #[test]
    fn text_before_the_first_separator_is_not_a_message() {
        assert!(messages(b"no separator here\n", 100).is_empty());
    }
}
