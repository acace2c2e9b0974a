//! Upload bodies, read into memory under a node-wide budget.
//!
//! A document is held whole between the request and the store (sniffing, hashing and
//! redaction need all of it), so what bounds the node's memory is how many bytes all uploads
//! in flight may hold at once: `server.upload_memory_mib`. An upload takes its share as its
//! buffer grows and gives it back when the request ends; one that would pass the budget is
//! refused at once (503 with Retry-After) instead of waiting with a connection open, and one
//! that passes the document size limit is refused the moment it does (413), whatever its
//! Content-Length said. The buffer is one allocation, so it goes back to the system when
//! freed: buffering a body as the list of frames it arrived in left eight refused 100 MB
//! uploads' ~320 MB resident after they ended.

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The bytes all uploads in flight may hold.
pub(crate) struct UploadMemory {
    kib: Arc<Semaphore>,
    total_mib: u64,
}

impl UploadMemory {
    /// A budget of `bytes` (at least one KiB).
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
            total_mib: bytes >> 20,
        }
    }
}

/// A share of the budget, given back when dropped.
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    fn kib(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Grows the share to `kib`, or refuses when the budget has not that much left.
    fn grow_to(&mut self, kib: usize, memory: &UploadMemory) -> Result<(), ApiError> {
        let more = kib.saturating_sub(self.kib());
        if more == 0 {
            return Ok(());
        }
        let taken = u32::try_from(more)
            .ok()
            .and_then(|n| memory.kib.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "uploads in flight already hold the node's upload memory \
                         ({} MiB, server.upload_memory_mib); try again shortly",
                        memory.total_mib
                    ),
                )
                .retry_after(2)
            })?;
        match &mut self.0 {
            Some(held) => held.merge(taken),
            None => self.0 = Some(taken),
        }
        Ok(())
    }
}

/// Reads one part of an upload form (a document, an adapter file) under the document size
/// limit and the node's upload memory.
pub(crate) async fn read_part(
    field: axum::extract::multipart::Field<'_>,
    s: &super::AppState,
) -> Result<(Bytes, Held), ApiError> {
    read_limited(
        field,
        s.max_document_bytes,
        None,
        &s.upload_memory,
        super::error::multipart_error,
    )
    .await
}

/// Reads a body (or one part of a form) of at most `limit` bytes into one buffer, taking its
/// share of `memory` as it grows. `expected` (a Content-Length) sizes the buffer up front.
pub(crate) async fn read_limited<S, E>(
    mut body: S,
    limit: u64,
    expected: Option<u64>,
    memory: &UploadMemory,
    read_error: impl Fn(E) -> ApiError,
) -> Result<(Bytes, Held), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut held = Held(None);
    let mut buf: Vec<u8> = Vec::new();
    if let Some(n) = expected.and_then(|n| usize::try_from(n).ok()) {
        let cap = n.min(limit);
        held.grow_to(cap.div_ceil(1024), memory)?;
        buf.reserve_exact(cap);
    }
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(&read_error)?;
        let len = buf.len() + frame.len();
        if len > limit {
            return Err(ApiError::too_large(format!(
                "the upload passed {limit} bytes, the most a document may have \
                 (ingest.max_document_bytes)"
            )));
        }
        if len > buf.capacity() {
            // Doubling, as a Vec would, but never past the limit; the budget counts capacity.
            let cap = len.max(buf.capacity().saturating_mul(2)).min(limit);
            held.grow_to(cap.div_ceil(1024), memory)?;
            buf.reserve_exact(cap - buf.len());
        }
        buf.extend_from_slice(&frame);
    }
    Ok((Bytes::from(buf), held))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, ApiError>> + Unpin {
        futures::stream::iter(
            sizes
                .iter()
                .map(|&n| Ok(Bytes::from(vec![b'x'; n])))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_share_given_back() {
        let memory = UploadMemory::new(64 << 10);
        let (bytes, held) = read_limited(frames(&[1000, 20_000, 3]), 40_000, None, &memory, |e| e)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 21_003);
        assert!(held.kib() >= 21 && held.kib() <= 40, "{}", held.kib());
        assert_eq!(memory.kib.available_permits(), 64 - held.kib());
        drop(held);
        assert_eq!(memory.kib.available_permits(), 64);
    }

    #[tokio::test]
    async fn past_the_limit_is_413_and_past_the_budget_503() {
        let memory = UploadMemory::new(64 << 10);
        let e = read_limited(frames(&[30_000, 30_000]), 50_000, None, &memory, |e| e)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("50000 bytes"), "{}", e.message);
        // Nothing is kept by a refused upload.
        assert_eq!(memory.kib.available_permits(), 64);

        let (_first, held) = read_limited(frames(&[40_000]), 50_000, None, &memory, |e| e)
            .await
            .unwrap();
        let e = read_limited(frames(&[10_000, 20_000]), 50_000, None, &memory, |e| e)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("upload_memory_mib"), "{}", e.message);
        // A Content-Length the budget cannot hold is refused before any byte is read.
        let e = read_limited(frames(&[]), 50_000, Some(30_000), &memory, |e| e)
            .await
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert_eq!(memory.kib.available_permits(), 64);
    }
}
