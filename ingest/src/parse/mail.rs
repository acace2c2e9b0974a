//! E-mail: one message (EML) or a mailbox (MBOX), through mail-parser.
//!
//! A message's subject, sender, recipients, date and message id become document metadata
//! (filterable at search time); its text is a header block (so a question about who wrote
//! when finds it) and the body (the text part, or the HTML part as text). Each attachment,
//! and each message of a mailbox, is handed back as an [`Attachment`]: the pipeline ingests it
//! as a document of its own, linked to the message by the metadata key `parent`.

use std::collections::BTreeMap;

use mail_parser::{Address, Message, MessageParser, MimeHeaders};

use super::text::split_paragraphs;
use super::{Attachment, Extracted, push_block};

/// Most attachments one message may hand back; more are dropped with a warning.
const MAX_ATTACHMENTS: usize = 100;
/// Most messages one mailbox may hand back as documents.
const MAX_MESSAGES: usize = 100_000;

pub(super) fn eml(bytes: &[u8]) -> Result<Extracted, String> {
    let msg = MessageParser::default()
        .parse(bytes)
        .ok_or("the e-mail message cannot be parsed (no header block?)")?;
    let mut out = Extracted::default();
    let subject = msg.subject().map(str::trim).filter(|s| !s.is_empty());
    out.title = subject.map(str::to_owned);
    let heading = vec![subject.unwrap_or("(no subject)").to_owned()];
    let mut meta = BTreeMap::new();
    let mut header = Vec::new();
    for (key, label, value) in [
        ("from", "From", msg.from().map(addresses)),
        ("to", "To", msg.to().map(addresses)),
        ("cc", "Cc", msg.cc().map(addresses)),
        ("date", "Date", msg.date().map(|d| d.to_rfc3339())),
        ("subject", "Subject", subject.map(str::to_owned)),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            header.push(format!("{label}: {v}"));
            meta.insert(key.to_owned(), v);
        }
    }
    if let Some(id) = msg.message_id() {
        meta.insert("message_id".to_owned(), id.to_owned());
    }
    push_block(&mut out.blocks, &header.join("\n"), None, &heading);
    if let Some(body) = msg.body_text(0) {
        for para in split_paragraphs(&body) {
            push_block(&mut out.blocks, para, None, &heading);
        }
    }
    attachments(&msg, &mut out);
    out.metadata = meta;
    Ok(out)
}

/// A list of addresses as `Name <address>, ...`.
pub(crate) fn addresses(a: &Address<'_>) -> String {
    a.iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(n), Some(x)) => format!("{n} <{x}>"),
            (Some(n), None) => n.to_owned(),
            (None, Some(x)) => x.to_owned(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn attachments(msg: &Message<'_>, out: &mut Extracted) {
    let mut names = BTreeMap::<String, usize>::new();
    for (i, part) in msg.attachments().enumerate() {
        if out.attachments.len() >= MAX_ATTACHMENTS {
            out.warnings.push(format!(
                "the message has more than {MAX_ATTACHMENTS} attachments; the rest were not ingested"
            ));
            break;
        }
        let data = part.contents();
        if data.is_empty() {
            continue;
        }
        let name = match (part.attachment_name(), part.message()) {
            (Some(n), _) => n.to_owned(),
            (None, Some(m)) => format!("{}.eml", m.subject().unwrap_or("message")),
            (None, None) => format!("attachment-{}", i + 1),
        };
        // A name for the document source: no path separators, unique within the message.
        let mut name: String = name
            .chars()
            .map(|c| {
                if c == '/' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .take(120)
            .collect();
        let seen = names.entry(name.clone()).or_insert(0);
        *seen += 1;
        if *seen > 1 {
            name = format!("{} ({seen})", name);
        }
        out.attachments.push(Attachment {
            name,
            data: data.to_vec(),
        });
    }
}

pub(super) fn mbox(bytes: &[u8]) -> Result<Extracted, String> {
    let mut out = Extracted::default();
    let parser = MessageParser::default();
    for (i, m) in
        mail_parser::mailbox::mbox::MessageIterator::new(std::io::Cursor::new(bytes)).enumerate()
    {
        let m = m.map_err(|e| format!("the mailbox cannot be read: {e}"))?;
        if i >= MAX_MESSAGES {
            out.warnings.push(format!(
                "the mailbox holds more than {MAX_MESSAGES} messages; the rest were not ingested"
            ));
            break;
        }
        let n = i + 1;
        // The mailbox's own text: one line per message, so it can be browsed and searched by
        // sender, date and subject; each message is also a document of its own.
        if let Some(msg) = parser.parse(m.contents()) {
            let line = [
                msg.date().map(|d| d.to_rfc3339()),
                msg.from().map(addresses),
                msg.subject().map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" | ");
            push_block(&mut out.blocks, &format!("{n}. {line}"), None, &[]);
        }
        out.attachments.push(Attachment {
            name: format!("message-{n:05}.eml"),
            data: m.contents().to_vec(),
        });
    }
    if out.attachments.is_empty() {
        return Err("the mailbox holds no messages (no line starts with \"From \")".into());
    }
    out.metadata
        .insert("messages".to_owned(), out.attachments.len().to_string());
    Ok(out)
}
