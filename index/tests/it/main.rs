//! Integration tests of hearth-index: the storage layer on both backends, and retrieval.

mod graph;
mod retrieval;
mod storage;
