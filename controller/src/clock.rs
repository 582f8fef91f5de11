//! The wall clock as the store keeps it: Unix time in milliseconds (events,
//! audit entries, policies, cursors) and seconds (host state).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now; 0 on a clock set before 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix seconds now; 0 on a clock set before 1970.
pub fn now_s() -> i64 {
    now_ms() / 1000
}
