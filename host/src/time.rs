//! Wall-clock helpers. Every timestamp the host stores is Unix epoch milliseconds.
//!
//! Nothing that decides who owns a job reads this clock: leases, due times and reclaims follow
//! the database's clock (see the queue), so hosts need not agree on the time. To test exactly
//! that, `DROVER_CLOCK_SKEW_MS` (read once, at first use) shifts this host's clock by that many
//! milliseconds, as a clock stepped by NTP or a VM migration would be.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by this host's clock.
pub fn now_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    now.saturating_add(skew_ms())
}

/// The configured skew of this host's clock (zero unless `DROVER_CLOCK_SKEW_MS` is set).
fn skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("DROVER_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}
