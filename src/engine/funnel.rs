//! Funnel levels: ClickHouse's `windowFunnel(W)` for one user and one entry
//! day, over the user's buffered funnel events.
//!
//! A user's events that can fill a step are kept as [`Hit`]s (time and the
//! set of steps the event can fill), sorted and deduplicated, so that the
//! level of any entry day can be recomputed exactly whatever order the
//! events arrived in. Levels only ever grow as events are added, in every
//! mode, which is what lets the engine drop old hits: a recomputed level is
//! combined with the stored one by `max`.

use super::calendar::Day;
use crate::config::FunnelMode;

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

/// The best chain found for an entry day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// Steps reached (0 = did not enter).
    pub level: usize,
    /// `reached[k]` = milliseconds from step 1 to step k+1 on the chain
    /// that reached level k+1.
    pub reached: [i64; crate::config::MAX_STEPS],
}

impl Chain {
    fn none() -> Self {
        Chain { level: 0, reached: [0; crate::config::MAX_STEPS] }
    }
}

/// The level of the entry day `[day_start, day_end)`: step 1 only from
/// events in that range, later steps at any time within `window` ms
/// (inclusive) of the chain's step 1. `hits` is sorted by time.
pub fn level(hits: &[Hit], day_start: i64, day_end: i64, window: i64, steps: usize, mode: FunnelMode) -> Chain {
    let from = hits.partition_point(|h| h.ts < day_start);
    let until = hits.partition_point(|h| h.ts <= day_end.saturating_add(window));
    let hits = &hits[from..until];
    match mode {
        FunnelMode::Default => level_default(hits, day_end, window, steps),
        FunnelMode::StrictOnce | FunnelMode::StrictIncrease => {
            let mut best = Chain::none();
            let mut previous_start = None;
            for (i, h) in hits.iter().enumerate() {
                if h.ts >= day_end {
                    break;
                }
                if h.mask & 1 == 0 || previous_start == Some(h.ts) {
                    continue;
                }
                previous_start = Some(h.ts);
                // The whole group at the start time, not just from this hit on.
                let group_from = hits[..i].partition_point(|x| x.ts < h.ts);
                let chain = level_from(&hits[group_from..], window, steps, mode);
                if chain.level > best.level {
                    best = chain;
                    if best.level == steps {
                        break;
                    }
                }
            }
            best
        }
    }
}

/// ClickHouse's single pass: for each step the latest chain start that
/// reaches it. In this mode a later start never does worse, so the pass
/// finds the true maximum. Equal timestamps are taken in step order.
fn level_default(hits: &[Hit], day_end: i64, window: i64, steps: usize) -> Chain {
    // (first, last) of the chain that reached step k+1, if any.
    let mut reached: [Option<(i64, i64)>; crate::config::MAX_STEPS] = [None; crate::config::MAX_STEPS];
    let mut i = 0;
    while i < hits.len() {
        let ts = hits[i].ts;
        let mut union = 0u32;
        while i < hits.len() && hits[i].ts == ts {
            union |= hits[i].mask;
            i += 1;
        }
        for k in 0..steps {
            if union & (1 << k) == 0 {
                continue;
            }
            if k == 0 {
                if ts < day_end {
                    reached[0] = Some((ts, ts));
                }
            } else if let Some((first, _)) = reached[k - 1] {
                if ts <= first + window {
                    reached[k] = Some((first, ts));
                    if k + 1 == steps {
                        return chain_of(&reached, steps);
                    }
                }
            }
        }
    }
    chain_of(&reached, steps)
}

fn chain_of(reached: &[Option<(i64, i64)>], steps: usize) -> Chain {
    let mut chain = Chain::none();
    for (k, r) in reached.iter().take(steps).enumerate() {
        if let Some((first, last)) = r {
            chain.level = k + 1;
            chain.reached[k] = last - first;
        }
    }
    chain
}

/// The greedy chain from the step-1 event at `hits[0]`: at each timestamp,
/// advance as far as the mode allows. Being further along at the same time
/// is never worse, so greedy is optimal for a fixed start.
fn level_from(hits: &[Hit], window: i64, steps: usize, mode: FunnelMode) -> Chain {
    let start = hits[0].ts;
    let mut chain = Chain::none();
    let mut i = 0;
    while i < hits.len() && hits[i].ts <= start + window {
        let ts = hits[i].ts;
        let group_start = i;
        while i < hits.len() && hits[i].ts == ts {
            i += 1;
        }
        let group = &hits[group_start..i];
        let before = chain.level;
        chain.level = match mode {
            FunnelMode::StrictIncrease => {
                let union = group.iter().fold(0, |m, h| m | h.mask);
                if ts == start {
                    1
                } else if union & (1 << chain.level) != 0 {
                    chain.level + 1
                } else {
                    chain.level
                }
            }
            _ => chain.level + distinct_run(group, chain.level, steps),
        };
        for k in before..chain.level {
            chain.reached[k] = ts - start;
        }
        if chain.level == steps {
            break;
        }
    }
    chain
}

/// How many consecutive steps from `from` on can be filled by distinct
/// events of one timestamp group: a bipartite matching, grown one step at a
/// time (Kuhn's augmenting paths). Groups are tiny: distinct masks at one ms.
fn distinct_run(group: &[Hit], from: usize, steps: usize) -> usize {
    let mut owner: Vec<Option<usize>> = vec![None; group.len()];
    let mut run = 0;
    while from + run < steps {
        let mut seen = vec![false; group.len()];
        if !augment(group, from + run, &mut owner, &mut seen) {
            break;
        }
        run += 1;
    }
    run
}

fn augment(group: &[Hit], step: usize, owner: &mut [Option<usize>], seen: &mut [bool]) -> bool {
    for (j, h) in group.iter().enumerate() {
        if h.mask & (1 << step) == 0 || seen[j] {
            continue;
        }
        seen[j] = true;
        let free = match owner[j] {
            None => true,
            Some(other) => augment(group, other, owner, seen),
        };
        if free {
            owner[j] = Some(step);
            return true;
        }
    }
    false
}

/// One user's state in one funnel, in a single exact-size allocation (none
/// when empty): the user's funnel events of the horizon as [`Hit`]s,
/// sorted and deduplicated, then the level reached per entry day, sorted
/// by day, each stored as a hit with an empty mask (`ts` = the day, `tag` =
/// the level). Users change a few times a day at most, so reallocating on
/// each change costs less than the spare capacity and second allocation of
/// two `Vec`s would cost in memory, for every user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelUser(Box<[Hit]>);

impl FunnelUser {
    /// The user of `entries` as [`FunnelUser::entries`] gave them; `None`
    /// when they are not well formed.
    pub fn from_entries(entries: &[Hit]) -> Option<Self> {
        let user = FunnelUser(entries.into());
        user.is_valid().then_some(user)
    }

    /// Hits and levels as stored (for snapshots).
    pub fn entries(&self) -> &[Hit] {
        &self.0
    }

    fn split(&self) -> usize {
        self.0.partition_point(|h| h.mask != 0)
    }

    /// The funnel events, sorted.
    pub fn hits(&self) -> &[Hit] {
        &self.0[..self.split()]
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the entries are well formed: hits sorted and distinct, then
    /// levels with increasing days (checked on snapshot restore).
    pub fn is_valid(&self) -> bool {
        let split = self.split();
        let (hits, levels) = self.0.split_at(split);
        hits.windows(2).all(|w| w[0] < w[1])
            && levels.iter().all(|l| l.mask == 0 && l.ts >= i64::from(Day::MIN) && l.ts <= i64::from(Day::MAX))
            && levels.windows(2).all(|w| w[0].ts < w[1].ts)
    }

    /// Adds `hit`; false when it is already there.
    pub fn insert_hit(&mut self, hit: Hit) -> bool {
        let pos = match self.hits().binary_search(&hit) {
            Ok(_) => return false,
            Err(pos) => pos,
        };
        let mut v = Vec::with_capacity(self.0.len() + 1);
        v.extend_from_slice(&self.0[..pos]);
        v.push(hit);
        v.extend_from_slice(&self.0[pos..]);
        self.0 = v.into_boxed_slice();
        true
    }

    /// The level recorded for entry day `day` (0 if none).
    pub fn level(&self, day: Day) -> usize {
        let levels = &self.0[self.split()..];
        match levels.binary_search_by_key(&i64::from(day), |l| l.ts) {
            Ok(i) => levels[i].tag as usize,
            Err(_) => 0,
        }
    }

    /// Records `level` for entry day `day`.
    pub fn set_level(&mut self, day: Day, level: usize) {
        let split = self.split();
        let entry = Hit { ts: i64::from(day), mask: 0, tag: level as u32 };
        match self.0[split..].binary_search_by_key(&entry.ts, |l| l.ts) {
            Ok(i) => self.0[split + i] = entry,
            Err(i) => {
                let mut v = Vec::with_capacity(self.0.len() + 1);
                v.extend_from_slice(&self.0[..split + i]);
                v.push(entry);
                v.extend_from_slice(&self.0[split + i..]);
                self.0 = v.into_boxed_slice();
            }
        }
    }

    /// Drops hits before `cutoff` (epoch ms) and levels of entry days
    /// before `level_cutoff`.
    pub fn prune(&mut self, cutoff: i64, level_cutoff: Day) {
        let split = self.split();
        let old_hits = self.0[..split].partition_point(|h| h.ts < cutoff);
        let old_levels = self.0[split..].partition_point(|l| l.ts < i64::from(level_cutoff));
        if old_hits == 0 && old_levels == 0 {
            return;
        }
        let mut v = Vec::with_capacity(self.0.len() - old_hits - old_levels);
        v.extend_from_slice(&self.0[old_hits..split]);
        v.extend_from_slice(&self.0[split + old_levels..]);
        self.0 = v.into_boxed_slice();
    }

    /// Entries held: hits and levels.
    pub fn len(&self) -> usize {
        self.0.len()
    }
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
        level(&hits, 0, 100, 10, 3, mode).level
    }

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
        assert_eq!(level(&hits, 0, 100, 10, 3, FunnelMode::Default).level, 3);
        let hits = [h(106, &[0]), h(107, &[1])];
        assert_eq!(level(&hits, 0, 100, 10, 3, FunnelMode::Default).level, 0);
    }

    #[test]
    fn user_keeps_hits_then_levels_in_one_slice() {
        let mut u = FunnelUser::default();
        assert!(u.is_empty() && u.hits().is_empty() && u.level(5) == 0);
        assert!(u.insert_hit(h(20, &[1])));
        assert!(u.insert_hit(h(10, &[0])));
        assert!(!u.insert_hit(h(10, &[0])), "a replayed hit is the same hit");
        u.set_level(3, 1);
        u.set_level(1, 2);
        u.set_level(3, 2);
        assert!(u.insert_hit(h(15, &[2])));
        assert_eq!(u.hits(), &[h(10, &[0]), h(15, &[2]), h(20, &[1])]);
        assert_eq!((u.level(1), u.level(2), u.level(3)), (2, 0, 2));
        assert_eq!(u.len(), 5);
        assert!(u.is_valid());

        u.prune(15, 2);
        assert_eq!(u.hits(), &[h(15, &[2]), h(20, &[1])]);
        assert_eq!((u.level(1), u.level(3)), (0, 2));
        u.prune(100, 100);
        assert!(u.is_empty());

        let unsorted = FunnelUser(vec![h(20, &[1]), h(10, &[0])].into_boxed_slice());
        assert!(!unsorted.is_valid());
    }
}
