//! Run ids and timestamps, as every record carries them.

use std::time::SystemTime;

/// A fresh run id (UUID v4).
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
