//! Integration tests of hearth-index: the storage layer on both backends, and retrieval.

mod coord;
mod graph;
mod published;
mod retrieval;
mod storage;
