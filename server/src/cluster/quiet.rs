//! Log lines said at most once a minute.

use std::time::{Duration, Instant};

/// Log lines that could come with every notice, said at most once a
/// minute each.
#[derive(Default)]
pub(super) struct Quiet {
    pub(super) malformed: Every,
    pub(super) same_name: Every,
}

/// Whether a minute has passed since the last time it was ready.
#[derive(Default)]
pub(super) struct Every(Option<Instant>);

impl Every {
    pub(super) fn ready(&mut self) -> bool {
        let now = Instant::now();
        match self.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(60) => false,
            _ => {
                self.0 = Some(now);
                true
            }
        }
    }
}
