//! The allocator's one setting the state needs: a fixed mmap threshold.
//!
//! glibc's allocator serves blocks below its mmap threshold from its heap,
//! which it seldom gives back. By default the threshold rises (up to
//! 32 MiB) each time a mapped block is freed, so the per-user columns,
//! which grow by doubling, leave their outgrown blocks in the heap as holes:
//! some 8 bytes a user at 10 M users (BENCHMARKS.md). A fixed threshold
//! maps every larger block on its own and unmaps it when freed.
//!
//! At 8 MiB: the columns of a large shard are mapped (61.7 bytes a user at
//! 10 M users, as with 1 MiB), while blocks of a few MiB (librdkafka's
//! receive buffers among them) stay in the heap and are reused. At 1 MiB
//! the Kafka path took some 15 % more CPU a message, in librdkafka's
//! threads and the shard workers; page faults on librdkafka's broker
//! thread show in its profile. Below 10 M users a shard's columns are smaller,
//! and their holes stay (a few MiB in all: 66.5 bytes a user at 1 M
//! users, 63.1 at 1 MiB).
//!
//! The process sets it at start, as `mallopt` does, unless the environment
//! already sets one (`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…`), which
//! is then left to rule. Other C libraries are left as they are.

// `mallopt` has no safe interface; this module's one `unsafe` block calls
// it (Cargo.toml denies unsafe code elsewhere).
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
