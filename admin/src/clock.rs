//! The control plane's clock: Unix milliseconds, read in one place.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the state's clock: passed into the
/// state machine, never read there).
pub type UnixMillis = u64;

/// Now, in Unix milliseconds.
pub fn now_ms() -> UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
