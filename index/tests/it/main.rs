//! Integration tests of hearth-index: the storage layer on both backends.

mod storage;
