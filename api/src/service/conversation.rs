//! Conversations: the turns of a dialogue kept in the object store, so that a follow-up
//! ("and the backups?") is asked with its history by naming the conversation rather than by
//! sending every earlier turn again.
//!
//! A conversation belongs to one collection and one caller (the key or identity that started
//! it); anyone else is told it does not exist. It lives at `conversations/{c}/{owner}/{id}.json`
//! (`owner` a digest of the caller's id; encrypted like every object on an encrypted store),
//! expires `ask.conversation_ttl_secs` after its last turn, and is removed by a sweep that runs
//! while the server does (and when read after its expiry), by its owner's delete, and with its
//! collection. A caller holds at most `ask.max_conversations` per collection at once, so a key
//! cannot fill the store with them.
//!
//! An answer quotes documents, so a stored turn remembers which documents its passages came
//! from: once one of them is deleted, or no longer readable by the reader who loads the
//! conversation, that answer is withheld (its question stays). The stored text itself is gone
//! at the latest when the conversation expires.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hearth_engine::ChatMessage;
use hearth_index::{CollectionName, DocId, Reader};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::answer::Answer;
use super::ask::MAX_HISTORY;
use super::collection::read;
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

/// What a withheld answer reads as.
pub const WITHHELD: &str =
    "(answer withheld: a document it was drawn from was deleted or is no longer readable to you)";

/// Most turns a conversation keeps; older ones are dropped as new ones come.
const MAX_TURNS: usize = MAX_HISTORY / 2;

/// Most characters of a stored answer (a generated answer is bounded by tokens, a quoted one
/// by its quotes; this bounds what one turn can add to the object).
const MAX_ANSWER_CHARS: usize = 8_000;

/// Longest pause between sweeps of expired conversations.
const MAX_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// One question and its answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Turn {
    /// The question as asked.
    pub question: String,
    /// The answer (or, when withheld, why).
    pub answer: String,
    /// The documents the answer's passages came from (64 hex digits each).
    pub documents: Vec<String>,
    /// When it was answered, ms since the Unix epoch.
    pub time_ms: u64,
    /// The answer is withheld: a document it drew on is gone or not readable to the caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
}

/// A conversation as stored, and as its owner gets it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    /// 32 hex digits.
    pub id: String,
    /// The collection it asks.
    pub collection: String,
    /// Who started it (a key id, or `oidc:USER`); only they may use it.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub owner: String,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it will be deleted unless another turn is added, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Oldest first.
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// The turns as chat history for the next question, oldest first.
    pub fn history(&self) -> Vec<ChatMessage> {
        self.turns
            .iter()
            .flat_map(|t| {
                [
                    ChatMessage {
                        role: "user".into(),
                        content: t.question.clone(),
                    },
                    ChatMessage {
                        role: "assistant".into(),
                        content: t.answer.clone(),
                    },
                ]
            })
            .collect()
    }

    /// The conversation without its owner, as the API shows it.
    pub fn shown(mut self) -> Self {
        self.owner = String::new();
        self
    }
}

/// The folder of one owner's conversations in a collection.
fn owner_prefix(c: &CollectionName, owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(owner.as_bytes());
    let tag: String = d[..8].iter().map(|x| format!("{x:02x}")).collect();
    format!("{}{tag}/", prefix(c))
}

fn key(c: &CollectionName, owner: &str, id: &str) -> String {
    format!("{}{id}.json", owner_prefix(c, owner))
}

/// Where a collection's conversations live.
pub(super) fn prefix(c: &CollectionName) -> String {
    format!("conversations/{c}/")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A conversation id: 32 lowercase hex digits (128 random bits: not guessable).
fn check_id(id: &str) -> Result<()> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ServiceError::InvalidInput(format!(
            "conversation_id must be 32 lowercase hex digits, got {:?}",
            id.chars().take(80).collect::<String>()
        )))
    }
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("conversation {id}"))
}

impl Service {
    fn conversation_ttl(&self) -> Duration {
        Duration::from_secs(self.ask.conversation_ttl_secs)
    }

    /// Starts a conversation for `owner` (stored with its first turn); refused while the
    /// owner holds `ask.max_conversations` in the collection.
    pub async fn new_conversation(&self, col: &Collection, owner: &str) -> Result<Conversation> {
        let held = self
            .store
            .list(&owner_prefix(col.name(), owner))
            .await?
            .len();
        if held >= self.ask.max_conversations {
            return Err(ServiceError::Index(hearth_index::IndexError::Conflict(
                format!(
                    "this caller holds {held} conversations in collection {}, the most allowed; delete one (DELETE .../conversations/{{id}}) or wait until one expires",
                    col.name()
                ),
            )));
        }
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)
            .map_err(|e| ServiceError::Internal(format!("no randomness for an id: {e}")))?;
        let now = now_ms();
        Ok(Conversation {
            id: b.iter().map(|x| format!("{x:02x}")).collect(),
            collection: col.name().to_string(),
            owner: owner.to_owned(),
            created_ms: now,
            expires_ms: now + self.conversation_ttl().as_millis() as u64,
            turns: Vec::new(),
        })
    }

    /// Loads `owner`'s conversation `id`, with the answers whose documents `reader` may no
    /// longer read withheld. Another owner's conversation, or an expired one, is not found (an
    /// expired one is deleted on the way).
    pub async fn conversation(
        &self,
        col: &Collection,
        id: &str,
        owner: &str,
        reader: &Reader,
    ) -> Result<Conversation> {
        check_id(id)?;
        let k = key(col.name(), owner, id);
        let Some(bytes) = self.store.get_opt(&k).await? else {
            return Err(not_found(id));
        };
        let mut conv: Conversation = serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::Internal(format!("conversation record {k}: {e}")))?;
        if conv.expires_ms <= now_ms() {
            self.store.delete(&k).await?;
            return Err(not_found(id));
        }
        if conv.owner != owner {
            return Err(not_found(id));
        }
        self.withhold(col, &mut conv, reader);
        Ok(conv)
    }

    /// Withholds the answers that drew on a document the reader cannot read now.
    fn withhold(&self, col: &Collection, conv: &mut Conversation, reader: &Reader) {
        let index = read(&col.index);
        for t in &mut conv.turns {
            let readable = t.documents.iter().all(|d| {
                DocId::from_str(d)
                    .ok()
                    .and_then(|d| index.access(&d).cloned())
                    .is_some_and(|a| reader.may_read(&a))
            });
            if !readable {
                t.answer = WITHHELD.to_owned();
                t.withheld = true;
            }
        }
    }

    /// Adds a finished answer to the conversation and stores it; its expiry starts again.
    /// Turns added at once by concurrent requests are all kept.
    pub async fn add_turn(
        &self,
        col: &Collection,
        conv: &Conversation,
        question: &str,
        answer: &Answer,
    ) -> Result<()> {
        let _one_at_a_time = self.conversation_writes.lock().await;
        let k = key(col.name(), &conv.owner, &conv.id);
        // The stored record, if another request added a turn since this one loaded it; an
        // expired or deleted conversation starts over with this turn.
        let mut stored = match self.store.get_opt(&k).await? {
            Some(b) => serde_json::from_slice::<Conversation>(&b)
                .ok()
                .filter(|s| s.expires_ms > now_ms() && s.owner == conv.owner),
            None => None,
        }
        .unwrap_or_else(|| Conversation {
            turns: Vec::new(),
            ..conv.clone()
        });
        let mut documents: Vec<String> = Vec::new();
        for p in &answer.passages {
            if !documents.contains(&p.doc_id) {
                documents.push(p.doc_id.clone());
            }
        }
        let now = now_ms();
        stored.turns.push(Turn {
            question: question.to_owned(),
            answer: answer.answer.chars().take(MAX_ANSWER_CHARS).collect(),
            documents,
            time_ms: now,
            withheld: false,
        });
        let extra = stored.turns.len().saturating_sub(MAX_TURNS);
        stored.turns.drain(..extra);
        stored.expires_ms = now + self.conversation_ttl().as_millis() as u64;
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| ServiceError::Internal(format!("conversation record: {e}")))?;
        self.store.put(&k, Bytes::from(bytes)).await?;
        // The collection was deleted while the question was answered: its sweep may have
        // listed the store before this write.
        if col.is_deleted() {
            self.store.delete(&k).await?;
            return Err(not_found(&conv.id));
        }
        Ok(())
    }

    /// Deletes `owner`'s conversation `id`; another's, or none, is not found.
    pub async fn delete_conversation(&self, col: &Collection, id: &str, owner: &str) -> Result<()> {
        self.conversation(col, id, owner, &Reader::Everything)
            .await?;
        let _one_at_a_time = self.conversation_writes.lock().await;
        self.store.delete(&key(col.name(), owner, id)).await?;
        Ok(())
    }

    /// Deletes every expired conversation of every collection; returns how many.
    pub async fn sweep_conversations(&self) -> Result<usize> {
        let now = now_ms();
        let mut removed = 0;
        for k in self.store.list("conversations/").await? {
            let expired = match self.store.get_opt(&k).await? {
                Some(b) => {
                    serde_json::from_slice::<Conversation>(&b).map_or(true, |c| c.expires_ms <= now)
                }
                None => false,
            };
            if expired {
                let _one_at_a_time = self.conversation_writes.lock().await;
                self.store.delete(&k).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Sweeps expired conversations until `stop` turns true: every half of
    /// `ask.conversation_ttl_secs`, at least once a second and at most every ten minutes.
    pub async fn run_conversation_sweeper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.conversation_ttl() / 2).clamp(Duration::from_secs(1), MAX_SWEEP_EVERY);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match self.sweep_conversations().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(conversations = n, "expired conversations deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired conversations"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_key_is_built() {
        assert!(check_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "../../keys/x",
            "0123456789ABCDEF0123456789ABCDEF",
            "abc",
        ] {
            assert!(
                matches!(check_id(bad), Err(ServiceError::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn history_alternates_user_and_assistant() {
        let conv = Conversation {
            id: "0".repeat(32),
            collection: "c".into(),
            owner: "k".into(),
            created_ms: 0,
            expires_ms: 1,
            turns: vec![Turn {
                question: "q".into(),
                answer: "a".into(),
                documents: vec!["d".into()],
                time_ms: 0,
                withheld: false,
            }],
        };
        let h = conv.history();
        assert_eq!(
            h.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
            ["user", "assistant"]
        );
        assert!(conv.shown().owner.is_empty());
    }
}
