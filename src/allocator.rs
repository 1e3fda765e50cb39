//! The allocator's two services to the state: a fixed mmap threshold, and
//! the heap's free pages given back as the state grows.
//!
//! glibc serves blocks below its mmap threshold from a heap it seldom gives
//! back, and by default raises the threshold each time a mapped block is
//! freed; the per-user columns grow by doubling, so their outgrown blocks
//! would stay resident as holes. [`fix_mmap_threshold`] fixes it at
//! [`MMAP_THRESHOLD`] at start (unless `GLIBC_TUNABLES` sets one): a large
//! shard's columns are mapped on their own and unmapped when freed, while
//! librdkafka's buffers of a few MiB stay in the heap and are reused.
//! [`GrowthTrim`], held by whatever owns an engine (a Kafka shard, `replay`,
//! `demo`), gives back the holes that smaller columns leave, each time the
//! user count passes a power of two. What each saves, in bytes a user and
//! in CPU, is in BENCHMARKS.md ("Memory per tracked user") and
//! BENCHMARKS-HISTORY.md. Other C libraries are left as they are.

// `mallopt` and `malloc_trim` have no safe interface; this module's two
// `unsafe` blocks call them (Cargo.toml denies unsafe code elsewhere).
#![allow(unsafe_code)]

/// The threshold set: blocks of this size and larger are mapped on their own.
pub const MMAP_THRESHOLD: usize = 8 << 20;

/// What [`fix_mmap_threshold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmapThreshold {
    /// Fixed at [`MMAP_THRESHOLD`].
    Fixed,
    /// Left to the threshold `GLIBC_TUNABLES` sets.
    FromEnvironment,
    /// Not glibc, or glibc refused the setting: the allocator's default.
    Default,
}

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] unless the
/// environment sets one. Call it once at start, before the state grows.
pub fn fix_mmap_threshold() -> MmapThreshold {
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    if tunables.is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.mmap_threshold")) {
        return MmapThreshold::FromEnvironment;
    }
    set_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_threshold() -> MmapThreshold {
    const VALUE: libc::c_int = MMAP_THRESHOLD as libc::c_int;
    // SAFETY: `mallopt` takes two integers and only sets a parameter of the
    // allocator, under the allocator's own lock; no memory is passed.
    let done = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, VALUE) };
    if done == 1 { MmapThreshold::Fixed } else { MmapThreshold::Default }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold() -> MmapThreshold {
    MmapThreshold::Default
}

/// Below this many users a shard's outgrown columns are too small to be
/// worth a trim.
const TRIM_FROM_USERS: usize = 1 << 16;

/// Gives the heap's free pages back each time a shard's user count passes a
/// power of two. An engine's owner holds one and tells it the engine's
/// count as events are applied.
#[derive(Debug, Clone)]
pub struct GrowthTrim {
    /// The count past which the next trim is due.
    next: usize,
}

impl Default for GrowthTrim {
    fn default() -> Self {
        GrowthTrim { next: TRIM_FROM_USERS }
    }
}

impl GrowthTrim {
    /// Trims when `users` has passed the next power of two since the last
    /// trim; says whether it did.
    pub fn observe(&mut self, users: usize) -> bool {
        if users <= self.next {
            return false;
        }
        self.next = users.next_power_of_two();
        trim();
        true
    }
}

/// Returns the heap's free pages to the system: whole free pages anywhere
/// in the heap, not only at its top. Says whether any memory was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes one integer (the padding to keep) and
    // only releases free memory the allocator owns, under its own locks;
    // no memory is passed.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries: nothing to give back this way.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_power_of_two_passed() {
        let mut t = GrowthTrim::default();
        assert!(!t.observe(0));
        assert!(!t.observe(TRIM_FROM_USERS));
        assert!(t.observe(TRIM_FROM_USERS + 1));
        assert!(!t.observe(2 * TRIM_FROM_USERS));
        assert!(t.observe(2 * TRIM_FROM_USERS + 1));
        // A batch may pass several powers at once: one trim.
        assert!(t.observe(16 * TRIM_FROM_USERS + 1));
        assert!(!t.observe(32 * TRIM_FROM_USERS));
        assert!(t.observe(32 * TRIM_FROM_USERS + 1));
    }
}
