//! On-disk format versioning.

/// The version of the persisted layout (keys, Arrow schema, JSON records) that this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The oldest persisted format this build can still open.
pub const OLDEST_SUPPORTED_FORMAT: u32 = 1;
