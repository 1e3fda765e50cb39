//! Funnel levels: ClickHouse's `windowFunnel(W)` for one user and one entry
//! day, over the user's buffered funnel events.
//!
//! A user's events that can fill a step are kept as [`Hit`]s (time and the
//! set of steps the event can fill), sorted and deduplicated, so that the
//! level of any entry day can be recomputed exactly whatever order the
//! events arrived in. Levels only ever grow as events are added, in every
//! mode: the engine computes a day's level before and after an event is
//! added and moves the counters by the difference, so it stores no levels,
//! only the hits that entry days an accepted event can still reach read.

use std::cell::Cell;

use crate::engine::def::{FunnelMode, MAX_STEPS};

/// One event of a user that fills at least one step of a funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Hit {
    /// Event time, epoch ms.
    pub ts: i64,
    /// Bit k set when the event can fill step k+1 (before the entry-day
    /// restriction of step 1).
    pub mask: u32,
    /// A hash of the event's name and props: tells apart distinct events at
    /// one time (which matter to `strict_once`) while a replayed event
    /// stays one event.
    pub tag: u32,
}

/// How a funnel stores a user's [`Hit`]: as it is, or [`Packed`]. Entries
/// sort by time first.
pub trait Entry: bytemuck::Pod + Ord + std::fmt::Debug {
    /// The entry for `hit`.
    fn from_hit(hit: Hit) -> Self;
    /// The event's time, epoch ms.
    fn ts(&self) -> i64;
    /// The steps the event can fill (bit k: step k+1); never 0.
    fn mask(&self) -> u32;
}

impl Entry for Hit {
    fn from_hit(hit: Hit) -> Self {
        hit
    }

    fn ts(&self) -> i64 {
        self.ts
    }

    fn mask(&self) -> u32 {
        self.mask
    }
}

/// Bits of a [`Packed`] entry below the time.
const MASK_BITS: u32 = 22;
const _: () = assert!(crate::event::MIN_TS_MS >= 0 && crate::event::END_TS_MS <= 1 << (64 - MASK_BITS));

/// A [`Hit`] in 8 bytes: the time above the step mask. It has no tag, so
/// two distinct events of one user at one millisecond with the same steps
/// are one entry; that changes no level unless the funnel is `strict_once`
/// and one event can fill two steps (then the engine stores [`Hit`]s), or
/// it has more than [`Packed::MAX_STEPS`] steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct Packed(u64);

impl Packed {
    /// The most steps a funnel of packed entries can have.
    pub const MAX_STEPS: usize = MASK_BITS as usize;

    /// The entry's 64 bits.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The entry of 64 bits [`Packed::raw`] gave.
    pub fn from_raw(raw: u64) -> Self {
        Packed(raw)
    }
}

impl Entry for Packed {
    fn from_hit(hit: Hit) -> Self {
        debug_assert!((0..1 << (64 - MASK_BITS)).contains(&hit.ts) && hit.mask < 1 << MASK_BITS);
        Packed((hit.ts as u64) << MASK_BITS | u64::from(hit.mask))
    }

    fn ts(&self) -> i64 {
        (self.0 >> MASK_BITS) as i64
    }

    fn mask(&self) -> u32 {
        (self.0 & ((1 << MASK_BITS) - 1)) as u32
    }
}

/// Where a funnel's steps lie in the masks of the entries it reads: funnels
/// whose steps fit share one store, each at its own bit offset (see
/// [`super::store::Layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// How many steps the funnel has.
    pub count: usize,
    /// The bit of its step 1.
    pub shift: u32,
}

impl Steps {
    /// The steps an entry's mask holds for this funnel (bit k: step k+1).
    #[inline]
    pub fn of(self, mask: u32) -> u32 {
        let low = 1u32.checked_shl(self.count as u32).map_or(u32::MAX, |b| b - 1);
        (mask >> self.shift) & low
    }
}

/// The best chain found for an entry day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// Steps reached (0 = did not enter).
    pub level: usize,
    /// `reached[k]` = milliseconds from step 1 to step k+1 on the chain
    /// that reached level k+1.
    pub reached: [i64; MAX_STEPS],
}

impl Chain {
    fn none() -> Self {
        Chain { level: 0, reached: [0; MAX_STEPS] }
    }
}

/// The level of the entry day `[day_start, day_end)`: step 1 only from
/// events in that range, later steps at any time within `window` ms
/// (inclusive) of the chain's step 1. `hits` is sorted by time; entries
/// that fill none of this funnel's steps are passed over. The level is 0
/// exactly when no event of the day fills step 1.
pub fn level<E: Entry>(hits: &[E], day_start: i64, day_end: i64, window: i64, steps: Steps, mode: FunnelMode) -> Chain {
    match mode {
        FunnelMode::Default => Pass::over(hits, day_start, day_end, window, steps).chain(),
        FunnelMode::StrictOnce | FunnelMode::StrictIncrease => {
            let from = hits.partition_point(|h| h.ts() < day_start);
            let until = hits.partition_point(|h| h.ts() <= day_end.saturating_add(window));
            let hits = &hits[from..until];
            let jumps = Jumps::new(hits, steps, TABLE.take());
            let mut best = Chain::none();
            let mut previous_start = None;
            // Where the timestamp group of the hit at hand begins.
            let mut group_from = 0;
            for (i, h) in hits.iter().enumerate() {
                if h.ts() >= day_end {
                    break;
                }
                if i > 0 && hits[i - 1].ts() != h.ts() {
                    group_from = i;
                }
                if steps.of(h.mask()) & 1 == 0 || previous_start == Some(h.ts()) {
                    continue;
                }
                previous_start = Some(h.ts());
                // A start whose window lacks the steps to beat the best
                // chain so far is not walked (a bot's many views of a day,
                // when no view is followed by a next step).
                if jumps.bound(hits, group_from, h.ts().saturating_add(window)) <= best.level {
                    continue;
                }
                // The whole group at the start time, not just from this hit on.
                let chain = level_from(hits, group_from, window, steps, mode, &jumps);
                if chain.level > best.level {
                    best = chain;
                    if best.level == steps.count {
                        break;
                    }
                }
            }
            jumps.give_back();
            best
        }
    }
}

/// For each position in a run of hits and each step, where the next hit
/// that fills the step is: a chain then goes straight to the next group
/// that can move it on, past those that cannot. Without it, every chain
/// start walked every hit of its window, so a day of a user's repeated
/// step-1 events (a bot's views) cost the square of their number each
/// time one more came: 2 000 views of one user an hour took 88 s.
struct Jumps {
    /// `next[i * count + k]`: the first index from `i` on whose hit fills
    /// step k+1, or the run's length when none does.
    next: Vec<u32>,
    count: usize,
}

thread_local! {
    /// A table's memory, kept between calls: an event's funnel levels are
    /// found twice for each entry day, and allocating the table each time
    /// showed in the profile of a replay with a strict funnel.
    static TABLE: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// The most entries of table memory kept between calls (256 KiB): a heavy
/// user's table is not held on to.
const TABLE_KEPT: usize = 1 << 16;

impl Jumps {
    fn new<E: Entry>(hits: &[E], steps: Steps, mut next: Vec<u32>) -> Jumps {
        let count = steps.count;
        // A user's hits fit a store, whose offsets are 32-bit.
        let none = u32::try_from(hits.len()).unwrap_or(u32::MAX);
        next.clear();
        next.resize((hits.len() + 1) * count, none);
        for (i, h) in hits.iter().enumerate().rev() {
            let mask = steps.of(h.mask());
            for k in 0..count {
                next[i * count + k] = if mask & (1 << k) != 0 { i as u32 } else { next[(i + 1) * count + k] };
            }
        }
        Jumps { next, count }
    }

    /// Keeps the table's memory for the next call, unless it is large.
    fn give_back(self) {
        if self.next.capacity() <= TABLE_KEPT {
            TABLE.set(self.next);
        }
    }

    /// The first index from `i` on whose hit fills step `k`+1.
    fn of(&self, i: usize, k: usize) -> usize {
        self.next[i * self.count + k] as usize
    }

    /// A bound on the level of a chain starting at `hits[from]`: step 1,
    /// then each next step as long as some hit from `from` on, up to time
    /// `until`, fills it (in whatever order).
    fn bound<E: Entry>(&self, hits: &[E], from: usize, until: i64) -> usize {
        let mut level = 1;
        while level < self.count && hits.get(self.of(from, level)).is_some_and(|h| h.ts() <= until) {
            level += 1;
        }
        level
    }
}

/// ClickHouse's single pass over one entry day's hits in time order, which
/// can be resumed with later hits: for each step the latest chain start
/// that reaches it. In this mode a later start never does worse, so the
/// pass finds the true maximum. Equal timestamps are taken in step order.
#[derive(Debug, Clone)]
pub struct Pass {
    day_end: i64,
    window: i64,
    steps: Steps,
    /// Steps reached; once every step is, the pass stops.
    level: usize,
    /// `first[k]`, `last[k]`: step 1 and step k+1 of the chain that
    /// reached step k+1 (for k below `level`).
    first: [i64; MAX_STEPS],
    last: [i64; MAX_STEPS],
}

impl Pass {
    /// The pass over the hits of `[day_start, day_end)` and the window
    /// after it (see [`level`]).
    pub fn over<E: Entry>(hits: &[E], day_start: i64, day_end: i64, window: i64, steps: Steps) -> Pass {
        let mut pass = Pass::default();
        pass.run(hits, day_start, day_end, window, steps);
        pass
    }

    /// Makes this the pass [`Pass::over`] gives, in place (a pass is a
    /// few hundred bytes; only the steps reached are written).
    pub fn run<E: Entry>(&mut self, hits: &[E], day_start: i64, day_end: i64, window: i64, steps: Steps) {
        let from = hits.partition_point(|h| h.ts() < day_start);
        let until = hits.partition_point(|h| h.ts() <= day_end.saturating_add(window));
        let hits = &hits[from..until];
        (self.day_end, self.window, self.steps, self.level) = (day_end, window, steps, 0);
        let mut i = 0;
        while i < hits.len() && self.level < steps.count {
            let ts = hits[i].ts();
            let mut union = 0u32;
            while i < hits.len() && hits[i].ts() == ts {
                union |= steps.of(hits[i].mask());
                i += 1;
            }
            self.feed(ts, union);
        }
    }

    /// Goes on with the hits of one later time, whose masks' union (this
    /// funnel's bits) is `union`: the pass of the hits it has seen and
    /// these. Hits past the window of the day change nothing.
    pub fn feed(&mut self, ts: i64, union: u32) {
        if ts > self.day_end.saturating_add(self.window) {
            return;
        }
        // The steps filled, lowest first.
        let mut left = union;
        while left != 0 && self.level < self.steps.count {
            let k = left.trailing_zeros() as usize;
            left &= left - 1;
            if k == 0 {
                if ts < self.day_end {
                    (self.first[0], self.last[0]) = (ts, ts);
                    self.level = self.level.max(1);
                }
            } else if k <= self.level && ts <= self.first[k - 1] + self.window {
                (self.first[k], self.last[k]) = (self.first[k - 1], ts);
                self.level = self.level.max(k + 1);
            }
        }
    }

    /// Steps reached.
    pub fn level(&self) -> usize {
        self.level
    }

    /// Milliseconds from step 1 to step k+1 on the chain that reached step
    /// k+1 (k below the level).
    pub fn span(&self, k: usize) -> i64 {
        self.last[k] - self.first[k]
    }

    /// The chain the pass found.
    pub fn chain(&self) -> Chain {
        let mut chain = Chain { level: self.level, ..Chain::none() };
        for k in 0..self.level {
            chain.reached[k] = self.span(k);
        }
        chain
    }
}

impl Default for Pass {
    /// A pass over nothing.
    fn default() -> Self {
        Pass {
            day_end: 0,
            window: 0,
            steps: Steps { count: 0, shift: 0 },
            level: 0,
            first: [0; MAX_STEPS],
            last: [0; MAX_STEPS],
        }
    }
}

/// The greedy chain from the step-1 event at `hits[first]` (the first of
/// its timestamp group): at each timestamp, advance as far as the mode
/// allows. Being further along at the same time is never worse, so greedy
/// is optimal for a fixed start. Groups without a hit that fills the next
/// step cannot advance it and are jumped over.
fn level_from<E: Entry>(hits: &[E], first: usize, window: i64, steps: Steps, mode: FunnelMode, jumps: &Jumps) -> Chain {
    let start = hits[first].ts();
    let mut chain = Chain::none();
    // Where the group after the last one taken begins.
    let mut at = first;
    while chain.level < steps.count {
        let j = if at == first { first } else { jumps.of(at, chain.level) };
        let Some(ts) = hits.get(j).map(Entry::ts).filter(|&ts| ts <= start + window) else {
            break;
        };
        // The group of `ts`: it begins at or after `at`, and holds `j`.
        let group_start = at + hits[at..j].partition_point(|h| h.ts() < ts);
        let group_end = j + hits[j..].partition_point(|h| h.ts() == ts);
        let group = &hits[group_start..group_end];
        let before = chain.level;
        chain.level = match mode {
            // One step a timestamp; the start's group gives step 1 only.
            FunnelMode::StrictIncrease => chain.level + 1,
            _ => chain.level + distinct_run(group, chain.level, steps),
        };
        for k in before..chain.level {
            chain.reached[k] = ts - start;
        }
        at = group_end;
    }
    chain
}

/// How many consecutive steps from `from` on can be filled by distinct
/// events of one timestamp group.
fn distinct_run<E: Entry>(group: &[E], from: usize, steps: Steps) -> usize {
    match group {
        // The usual group, and no matching to do: one event, one step.
        [one] => usize::from(from < steps.count && steps.of(one.mask()) & (1 << from) != 0),
        _ => matched_run(group, from, steps),
    }
}

/// [`distinct_run`] by a bipartite matching, grown one step at a time
/// (Kuhn's augmenting paths). Groups are tiny: distinct masks at one ms.
fn matched_run<E: Entry>(group: &[E], from: usize, steps: Steps) -> usize {
    let mut owner: Vec<Option<usize>> = vec![None; group.len()];
    let mut run = 0;
    while from + run < steps.count {
        let mut seen = vec![false; group.len()];
        if !augment(group, steps, from + run, &mut owner, &mut seen) {
            break;
        }
        run += 1;
    }
    run
}

fn augment<E: Entry>(group: &[E], steps: Steps, step: usize, owner: &mut [Option<usize>], seen: &mut [bool]) -> bool {
    for (j, h) in group.iter().enumerate() {
        if steps.of(h.mask()) & (1 << step) == 0 || seen[j] {
            continue;
        }
        seen[j] = true;
        let free = match owner[j] {
            None => true,
            Some(other) => augment(group, steps, other, owner, seen),
        };
        if free {
            owner[j] = Some(step);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ts: i64, steps: &[usize]) -> Hit {
        Hit { ts, mask: steps.iter().fold(0, |m, s| m | 1 << s), tag: 0 }
    }

    fn lv(hits: &[Hit], mode: FunnelMode) -> usize {
        let mut hits = hits.to_vec();
        hits.sort();
        level(&hits, 0, 100, 10, THREE, mode).level
    }

    const THREE: Steps = Steps { count: 3, shift: 0 };

    #[test]
    fn window_includes_its_end() {
        assert_eq!(lv(&[h(0, &[0]), h(5, &[1]), h(10, &[2])], FunnelMode::Default), 3);
        assert_eq!(lv(&[h(0, &[0]), h(5, &[1]), h(11, &[2])], FunnelMode::Default), 2);
    }

    #[test]
    fn later_start_rescues_the_chain() {
        assert_eq!(lv(&[h(0, &[0]), h(9, &[0]), h(12, &[1]), h(15, &[2])], FunnelMode::Default), 3);
    }

    #[test]
    fn equal_timestamps_chain_in_step_order() {
        assert_eq!(lv(&[h(3, &[2]), h(3, &[1]), h(3, &[0])], FunnelMode::Default), 3);
        assert_eq!(lv(&[h(3, &[0, 1, 2])], FunnelMode::Default), 3);
        assert_eq!(lv(&[h(3, &[0, 1, 2])], FunnelMode::StrictOnce), 1);
        assert_eq!(lv(&[h(3, &[0, 1]), h(3, &[1, 2])], FunnelMode::StrictOnce), 2);
        // Filling step 2 with the {2,3} event would strand step 3.
        assert_eq!(lv(&[h(3, &[0]), h(3, &[1, 2]), h(3, &[1])], FunnelMode::StrictOnce), 3);
        assert_eq!(lv(&[h(3, &[0]), h(3, &[1]), h(3, &[2])], FunnelMode::StrictIncrease), 1);
    }

    #[test]
    fn strict_increase_finds_the_true_chain() {
        // ClickHouse keeps only the latest chain per step and says 2 here.
        let hits = [h(0, &[0]), h(1, &[1]), h(1, &[0]), h(2, &[2])];
        assert_eq!(lv(&hits, FunnelMode::StrictIncrease), 3);
    }

    #[test]
    fn step_one_only_on_the_entry_day() {
        let hits = [h(99, &[0]), h(105, &[1]), h(106, &[0]), h(107, &[2])];
        assert_eq!(level(&hits, 0, 100, 10, THREE, FunnelMode::Default).level, 3);
        let hits = [h(106, &[0]), h(107, &[1])];
        assert_eq!(level(&hits, 0, 100, 10, THREE, FunnelMode::Default).level, 0);
    }

    /// The chain from `hits[0]` walking every group of its window, as
    /// `level_from` did before it jumped, and matching every group (no
    /// shortcut for one event): the reference for the jumps.
    fn walked_from(hits: &[Hit], window: i64, steps: Steps, mode: FunnelMode) -> Chain {
        let start = hits[0].ts();
        let mut chain = Chain::none();
        let mut i = 0;
        while i < hits.len() && hits[i].ts() <= start + window {
            let ts = hits[i].ts();
            let group_start = i;
            while i < hits.len() && hits[i].ts() == ts {
                i += 1;
            }
            let group = &hits[group_start..i];
            let before = chain.level;
            chain.level = match mode {
                FunnelMode::StrictIncrease => {
                    let union = group.iter().fold(0, |m, h| m | steps.of(h.mask()));
                    if ts == start {
                        1
                    } else if union & (1 << chain.level) != 0 {
                        chain.level + 1
                    } else {
                        chain.level
                    }
                }
                _ => chain.level + matched_run(group, chain.level, steps),
            };
            for k in before..chain.level {
                chain.reached[k] = ts - start;
            }
            if chain.level == steps.count {
                break;
            }
        }
        chain
    }

    /// The best chain over every start of the day, each walked in full.
    fn walked(hits: &[Hit], day_start: i64, day_end: i64, window: i64, steps: Steps, mode: FunnelMode) -> Chain {
        let from = hits.partition_point(|h| h.ts() < day_start);
        let until = hits.partition_point(|h| h.ts() <= day_end + window);
        let hits = &hits[from..until];
        let mut best = Chain::none();
        let mut previous_start = None;
        for (i, h) in hits.iter().enumerate() {
            if h.ts() >= day_end {
                break;
            }
            if steps.of(h.mask()) & 1 == 0 || previous_start == Some(h.ts()) {
                continue;
            }
            previous_start = Some(h.ts());
            let group_from = hits[..i].partition_point(|x| x.ts() < h.ts());
            let chain = walked_from(&hits[group_from..], window, steps, mode);
            if chain.level > best.level {
                best = chain;
            }
        }
        best
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// The strict modes' jumps find the chain that walking every
        /// group finds, its times to each step included, on dense runs
        /// of hits: equal timestamps, several steps an entry, another
        /// funnel's bits.
        #[test]
        fn jumps_find_the_walked_chain(
            drawn in proptest::collection::vec((0i64..40, 1u32..64), 0..60),
            window in 0i64..20,
            day in 0i64..3,
            count in 1usize..5,
            shift in 0u32..3,
            strict_once in proptest::bool::ANY,
        ) {
            let mut hits: Vec<Hit> = drawn.into_iter().map(|(ts, mask)| Hit { ts, mask, tag: 0 }).collect();
            hits.sort();
            hits.dedup();
            let steps = Steps { count, shift };
            let mode = if strict_once { FunnelMode::StrictOnce } else { FunnelMode::StrictIncrease };
            let (start, end) = (day * 10, day * 10 + 10);
            let got = level(&hits, start, end, window, steps, mode);
            let want = walked(&hits, start, end, window, steps, mode);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn reads_only_its_own_bits_of_a_shared_mask() {
        // Another funnel's steps at bits 0-2, this one's at 3-5; an entry
        // may fill steps of both.
        let ours = Steps { count: 3, shift: 3 };
        let hits = [h(1, &[0, 3]), h(2, &[1]), h(3, &[2, 4]), h(4, &[5]), h(5, &[0])];
        for mode in [FunnelMode::Default, FunnelMode::StrictOnce, FunnelMode::StrictIncrease] {
            assert_eq!(level(&hits, 0, 100, 10, ours, mode).level, 3, "{mode:?}");
            assert_eq!(level(&hits, 0, 100, 10, THREE, mode).level, 3, "{mode:?}");
            assert_eq!(level(&hits[1..], 0, 100, 10, ours, mode).level, 0, "{mode:?}: no step 1 of ours");
            assert_eq!(level(&hits[..3], 0, 100, 10, ours, mode).level, 2, "{mode:?}");
        }
        assert_eq!(Steps { count: 32, shift: 0 }.of(u32::MAX), u32::MAX);
        assert_eq!(ours.of(0b111_111_111), 0b111);
    }
}
