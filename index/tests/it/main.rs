//! Integration tests of hearth-index: the storage layer on both backends, and retrieval.

mod retrieval;
mod storage;
