//! Rate-limited logging: one line per cause per interval, with the count
//! of the lines held back since the last one. A broker outage or a flood
//! of bad connections repeats the same warning thousands of times a
//! minute; the log should say it once and how often it happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most distinct causes remembered: causes come from outside (error
/// texts of the client library), so their number is bounded; past it the
/// new ones share one slot.
const MOST_CAUSES: usize = 256;
const OTHER: &str = "(other causes)";

/// Decides, per cause, whether a line may be logged now.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    causes: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug)]
struct Slot {
    logged_at: Instant,
    held_back: u64,
}

impl LogLimiter {
    /// At most one line per cause every `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter { interval, causes: Mutex::new(HashMap::new()) }
    }

    /// `Some(n)` when a line of `cause` may be logged now, `n` being the
    /// lines of it held back since the last one; `None` when this one is
    /// held back (and counted).
    pub fn check(&self, cause: &str) -> Option<u64> {
        self.check_at(cause, Instant::now())
    }

    fn check_at(&self, cause: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while counting.
        let mut causes = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        let key = if causes.contains_key(cause) || causes.len() < MOST_CAUSES { cause } else { OTHER };
        match causes.get_mut(key) {
            Some(slot) if now.duration_since(slot.logged_at) < self.interval => {
                slot.held_back += 1;
                None
            }
            Some(slot) => {
                slot.logged_at = now;
                Some(std::mem::take(&mut slot.held_back))
            }
            None => {
                causes.insert(key.to_owned(), Slot { logged_at: now, held_back: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("down", t0), Some(0));
        assert_eq!(limiter.check_at("other", t0), Some(0));
        for s in 1..10 {
            assert_eq!(limiter.check_at("down", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(limiter.check_at("down", t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(limiter.check_at("down", t0 + Duration::from_secs(11)), None);
        assert_eq!(limiter.check_at("other", t0 + Duration::from_secs(11)), Some(0));
    }

    #[test]
    fn causes_beyond_the_bound_share_a_slot() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..MOST_CAUSES {
            assert_eq!(limiter.check_at(&i.to_string(), t0), Some(0));
        }
        assert_eq!(limiter.check_at("new", t0), Some(0));
        assert_eq!(limiter.check_at("newer", t0), None);
        assert_eq!(limiter.causes.lock().expect("lock").len(), MOST_CAUSES + 1);
    }
}
