//! Who may read which document: the collection's default access, and changes to a
//! document's access list after upload. Enforcement lives where documents are read: inside
//! retrieval (the index's allowed set) and in the HTTP routes that list and return documents.

use std::sync::Arc;

use hearth_index::{Access, CollectionSettings, DocId, IndexError};
use hearth_ingest::{DocRecord, DocState};

use super::collection::blocking;
use super::{Collection, Service};
use crate::error::{Result, ServiceError};

impl Service {
    /// The access list a document uploaded without one gets.
    pub async fn default_access(&self, col: &Collection) -> Result<Access> {
        Ok(CollectionSettings::read(&self.store, col.name())
            .await?
            .map(|s| s.default_access)
            .unwrap_or_default())
    }

    /// Changes the collection's default access (documents keep the lists they have).
    pub async fn set_default_access(&self, col: &Collection, access: Access) -> Result<()> {
        // The settings are read, changed and written back: not across a re-embedding's switch.
        let _writing = col.writing.read().await;
        CollectionSettings::set_default_access(&self.store, col.name(), access)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("collection {}", col.name())))?;
        Ok(())
    }

    /// Changes who may read a document, and the documents found inside it (an e-mail's
    /// attachments): the record first, then the index, which searches see at once and which
    /// is committed before this returns (a crash in between is mended when the collection is
    /// next opened: the record is the truth). Returns the document's new record, or `None`
    /// when there is no such document.
    ///
    /// Fails with a conflict while the document is still being processed: its pipeline
    /// writes the record as it goes.
    pub async fn set_document_access(
        &self,
        col: &Arc<Collection>,
        doc: &DocId,
        access: Access,
    ) -> Result<Option<DocRecord>> {
        let _one_at_a_time = col.access_change.lock().await;
        let Some(rec) = self.registry.get(col.name(), doc).await? else {
            return Ok(None);
        };
        let family: Vec<DocId> = std::iter::once(*doc)
            .chain(self.descendants(col, doc).await?)
            .collect();
        let mut records = Vec::with_capacity(family.len());
        for d in &family {
            let Some(r) = self.registry.get(col.name(), d).await? else {
                continue;
            };
            if !matches!(r.state, DocState::Indexed | DocState::Failed) || col.is_busy(d) {
                return Err(ServiceError::Index(IndexError::Conflict(format!(
                    "document {d} is still being processed ({}); change its access once it is indexed",
                    r.state.as_str()
                ))));
            }
            records.push(r);
        }
        let mut updated = rec;
        for mut r in records {
            if r.access == access {
                if r.doc_id == *doc {
                    updated = r;
                }
                continue;
            }
            r.access = access.clone();
            self.registry.put(&mut r).await?;
            // Replacement by name is among documents of the same access: file it anew.
            col.forget(&r.doc_id);
            if r.state == DocState::Indexed {
                col.note_source(&r);
            }
            // A delete that raced this change took the record away first: put it back out.
            self.erase_if_deleted(col, &r.doc_id).await?;
            if r.doc_id == *doc {
                updated = r;
            }
        }
        let col2 = col.clone();
        let changes: Vec<DocId> = family.clone();
        let access2 = access.clone();
        blocking(move || {
            if let Some(mut index) = col2.index_mut() {
                for d in &changes {
                    index.set_access(d, access2.clone());
                }
                index.commit()?;
            }
            Ok(())
        })
        .await?;
        for d in &family {
            self.mark_changed(col.name(), d).await?;
        }
        Ok(Some(updated))
    }
}
