//! Where a funnel keeps its users' entries: one arena of 64-bit words per
//! funnel, a segment per user who has any.
//!
//! A segment is a header word (the user's index above the entry count)
//! followed by the user's entries: the hits of the horizon, sorted and
//! distinct, then the levels reached per entry day, sorted by day. A user
//! costs a 4-byte offset, plus the header and the entries when they have
//! any: no allocation of their own, so none of an allocator's per-block
//! overhead and no 16-byte pointer per user and funnel.
//!
//! An insert moves the user's segment, one entry longer, to the end of the
//! arena (or grows it in place when it is already there); the old copy
//! becomes garbage. Compaction slides the live segments down in one pass
//! over the arena, finding each segment's owner from its header, when
//! garbage passes an eighth of the arena, and once a day when old entries
//! are dropped.

use std::marker::PhantomData;

use super::calendar::Day;
use super::funnel::{Entry, Hit, Packed};
use crate::config::{EventMatch, FunnelDef, FunnelMode};

/// The offset of a user with no segment.
const NONE: u32 = u32::MAX;
/// Compaction waits for at least this much garbage (words).
const MIN_GARBAGE: usize = 1 << 16;

/// The entries of one funnel for every user of a shard.
#[derive(Debug, Clone)]
pub struct FunnelStore<E> {
    /// Per user, where their segment starts in `arena`, or [`NONE`].
    at: Vec<u32>,
    arena: Vec<u64>,
    /// Words of segments no user points to.
    garbage: usize,
    /// Entries in live segments.
    entries: usize,
    entry: PhantomData<E>,
}

impl<E> Default for FunnelStore<E> {
    fn default() -> Self {
        FunnelStore { at: Vec::new(), arena: Vec::new(), garbage: 0, entries: 0, entry: PhantomData }
    }
}

fn header(uid: usize, len: usize) -> u64 {
    (uid as u64) << 32 | len as u64
}

fn header_parts(word: u64) -> (usize, usize) {
    ((word >> 32) as usize, (word & 0xffff_ffff) as usize)
}

/// Where the hits end and the levels begin.
fn split<E: Entry>(entries: &[E]) -> usize {
    entries.partition_point(|e| e.mask() != 0)
}

impl<E: Entry> FunnelStore<E> {
    const WORDS: usize = {
        assert!(std::mem::size_of::<E>() % 8 == 0 && std::mem::align_of::<E>() <= 8);
        std::mem::size_of::<E>() / 8
    };

    /// Adds a user with no entries.
    pub fn push_user(&mut self) {
        self.at.push(NONE);
    }

    /// Users known.
    pub fn users(&self) -> usize {
        self.at.len()
    }

    /// Entries held by all users.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Heap bytes held (offsets and the arena's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.at.capacity() * 4 + self.arena.capacity() * 8
    }

    fn span(&self, uid: u32) -> Option<(usize, usize)> {
        let at = self.at[uid as usize];
        (at != NONE).then(|| (at as usize, header_parts(self.arena[at as usize]).1))
    }

    /// The user's entries: hits, then levels.
    pub fn get(&self, uid: u32) -> &[E] {
        match self.span(uid) {
            None => &[],
            Some((at, len)) => bytemuck::cast_slice(&self.arena[at + 1..at + 1 + len * Self::WORDS]),
        }
    }

    /// The user's hits, sorted.
    pub fn hits(&self, uid: u32) -> &[E] {
        let entries = self.get(uid);
        &entries[..split(entries)]
    }

    /// The level recorded for the user's entry day `day` (0 if none).
    pub fn level(&self, uid: u32, day: Day) -> usize {
        let entries = self.get(uid);
        let levels = &entries[split(entries)..];
        match levels.binary_search_by_key(&day, |l| l.day_level().0) {
            Ok(i) => levels[i].day_level().1,
            Err(_) => 0,
        }
    }

    /// Adds a hit; false when the user has it already.
    pub fn insert_hit(&mut self, uid: u32, hit: E) -> bool {
        debug_assert!(hit.mask() != 0);
        let entries = self.get(uid);
        match entries[..split(entries)].binary_search(&hit) {
            Ok(_) => false,
            Err(pos) => {
                self.insert_at(uid, pos, hit);
                true
            }
        }
    }

    /// Records `level` for the user's entry day `day`.
    pub fn set_level(&mut self, uid: u32, day: Day, level: usize) {
        let entry = E::level_entry(day, level);
        let entries = self.get(uid);
        let split = split(entries);
        match entries[split..].binary_search_by_key(&day, |l| l.day_level().0) {
            Ok(i) => {
                if let Some((at, len)) = self.span(uid) {
                    let seg: &mut [E] = bytemuck::cast_slice_mut(&mut self.arena[at + 1..at + 1 + len * Self::WORDS]);
                    seg[split + i] = entry;
                }
            }
            Err(i) => self.insert_at(uid, split + i, entry),
        }
    }

    fn insert_at(&mut self, uid: u32, pos: usize, entry: E) {
        let w = Self::WORDS;
        let u = uid as usize;
        let entry_words: &[u64] = bytemuck::cast_slice(std::slice::from_ref(&entry));
        // Counted first: a compaction below counts again, from the arena.
        self.entries += 1;
        match self.span(uid) {
            Some((at, len)) if at + 1 + len * w == self.arena.len() => {
                // The segment ends the arena: grow it where it is.
                self.arena.extend_from_slice(entry_words);
                let words = &mut self.arena[at + 1..];
                words.copy_within((pos * w)..(len * w), (pos + 1) * w);
                words[pos * w..(pos + 1) * w].copy_from_slice(entry_words);
                self.arena[at] = header(u, len + 1);
            }
            span => {
                let (old, len) = span.unwrap_or((0, 0));
                let new = self.arena.len();
                let offset = u32::try_from(new).ok().filter(|&o| o != NONE);
                let Some(offset) = offset else {
                    // Past 32 GiB of one funnel in one shard: like a failed
                    // allocation, there is no way on.
                    panic!("a funnel's entries outgrew 2^32 words in one shard");
                };
                self.arena.reserve(1 + (len + 1) * w);
                self.arena.push(header(u, len + 1));
                if span.is_some() {
                    self.arena.extend_from_within(old + 1..old + 1 + pos * w);
                }
                self.arena.extend_from_slice(entry_words);
                if span.is_some() {
                    self.arena.extend_from_within(old + 1 + pos * w..old + 1 + len * w);
                    self.garbage += 1 + len * w;
                }
                self.at[u] = offset;
                if self.garbage >= MIN_GARBAGE && self.garbage * 8 > self.arena.len() {
                    self.compact(i64::MIN, Day::MIN);
                }
            }
        }
    }

    /// Drops hits before `cutoff` (epoch ms) and levels of entry days
    /// before `level_cutoff`, and the garbage, in one pass.
    pub fn prune(&mut self, cutoff: i64, level_cutoff: Day) {
        self.compact(cutoff, level_cutoff);
    }

    fn compact(&mut self, cutoff: i64, level_cutoff: Day) {
        let w = Self::WORDS;
        let (mut read, mut write, mut entries) = (0, 0, 0);
        while read < self.arena.len() {
            let (uid, len) = header_parts(self.arena[read]);
            let size = 1 + len * w;
            if self.at[uid] as usize == read {
                let seg: &[E] = bytemuck::cast_slice(&self.arena[read + 1..read + size]);
                let split = split(seg);
                let old_hits = seg[..split].partition_point(|h| h.ts() < cutoff);
                let old_levels = seg[split..].partition_point(|l| l.day_level().0 < level_cutoff);
                let kept = len - old_hits - old_levels;
                if kept == 0 {
                    self.at[uid] = NONE;
                } else {
                    self.arena[write] = header(uid, kept);
                    let hits = read + 1 + old_hits * w..read + 1 + split * w;
                    let levels = read + 1 + (split + old_levels) * w..read + size;
                    let levels_to = write + 1 + hits.len();
                    self.arena.copy_within(hits, write + 1);
                    self.arena.copy_within(levels, levels_to);
                    self.at[uid] = write as u32;
                    write += 1 + kept * w;
                    entries += kept;
                }
            }
            read += size;
        }
        self.arena.truncate(write);
        if self.arena.capacity() > 2 * write.max(MIN_GARBAGE) {
            self.arena.shrink_to(write + write / 4);
        }
        self.garbage = 0;
        self.entries = entries;
    }

    /// Entries per user (for snapshots).
    pub fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.at.len() as u32).map(|u| self.span(u).map_or(0, |(_, len)| len as u32))
    }

    /// The store of `lens` (entries per user) and `entries` (all users'
    /// entries in user order), as [`FunnelStore::lens`] and
    /// [`FunnelStore::get`] gave them; `None` when they do not add up or a
    /// user's entries are not well formed.
    pub fn from_parts(lens: &[u32], entries: &[E]) -> Option<Self> {
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        if total != entries.len() as u64 {
            return None;
        }
        let users_with = lens.iter().filter(|&&l| l > 0).count();
        let words = users_with + entries.len() * Self::WORDS;
        if words >= NONE as usize {
            return None;
        }
        let mut store = FunnelStore { at: Vec::with_capacity(lens.len()), ..FunnelStore::default() };
        store.arena.reserve_exact(words);
        let mut from = 0;
        for (u, &len) in lens.iter().enumerate() {
            let len = len as usize;
            if len == 0 {
                store.at.push(NONE);
                continue;
            }
            let user = &entries[from..from + len];
            if !well_formed(user) {
                return None;
            }
            store.at.push(store.arena.len() as u32);
            store.arena.push(header(u, len));
            store.arena.extend_from_slice(bytemuck::cast_slice(user));
            from += len;
        }
        store.entries = entries.len();
        Some(store)
    }
}

/// A funnel's store in the entry layout its definition allows: 8-byte
/// [`Packed`] entries unless distinct events at one millisecond can matter
/// (see [`Packed`]).
#[derive(Debug, Clone)]
pub enum Store {
    /// Hits without tags, 8 bytes an entry.
    Packed(FunnelStore<Packed>),
    /// Hits with tags, 16 bytes an entry.
    Wide(FunnelStore<Hit>),
}

impl Store {
    /// An empty store for `def`.
    pub fn new(def: &FunnelDef) -> Self {
        if needs_tags(def) { Store::Wide(FunnelStore::default()) } else { Store::Packed(FunnelStore::default()) }
    }

    /// Bytes an entry takes.
    pub fn entry_bytes(&self) -> usize {
        match self {
            Store::Packed(_) => std::mem::size_of::<Packed>(),
            Store::Wide(_) => std::mem::size_of::<Hit>(),
        }
    }

    /// Adds a user with no entries.
    pub fn push_user(&mut self) {
        match self {
            Store::Packed(s) => s.push_user(),
            Store::Wide(s) => s.push_user(),
        }
    }

    /// Entries held by all users.
    pub fn entries(&self) -> usize {
        match self {
            Store::Packed(s) => s.entries(),
            Store::Wide(s) => s.entries(),
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Store::Packed(s) => s.heap_bytes(),
            Store::Wide(s) => s.heap_bytes(),
        }
    }

    /// See [`FunnelStore::prune`].
    pub fn prune(&mut self, cutoff: i64, level_cutoff: Day) {
        match self {
            Store::Packed(s) => s.prune(cutoff, level_cutoff),
            Store::Wide(s) => s.prune(cutoff, level_cutoff),
        }
    }
}

/// Whether the funnel needs each hit's tag: in `strict_once` one event
/// fills one step, so two distinct events at one millisecond that can both
/// fill two steps are not one; in the other modes only the union of the
/// steps a millisecond's events fill matters.
fn needs_tags(def: &FunnelDef) -> bool {
    if def.steps.len() > Packed::MAX_STEPS {
        return true;
    }
    def.mode == FunnelMode::StrictOnce
        && def.steps.iter().enumerate().any(|(k, a)| {
            def.steps[k + 1..].iter().any(|b| match (&a.event, &b.event) {
                (EventMatch::Named(x), EventMatch::Named(y)) => x == y,
                _ => true,
            })
        })
}

/// Hits sorted and distinct, then levels of increasing days.
fn well_formed<E: Entry>(entries: &[E]) -> bool {
    let split = split(entries);
    let (hits, levels) = entries.split_at(split);
    hits.windows(2).all(|w| w[0] < w[1])
        && levels.iter().all(|l| l.mask() == 0)
        && levels.windows(2).all(|w| w[0].day_level().0 < w[1].day_level().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<E: Entry>(ts: i64, steps: &[usize]) -> E {
        E::from_hit(Hit { ts, mask: steps.iter().fold(0, |m, s| m | 1 << s), tag: 0 })
    }

    fn keeps_hits_then_levels<E: Entry>() {
        let mut s = FunnelStore::<E>::default();
        s.push_user();
        s.push_user();
        assert!(s.get(0).is_empty() && s.hits(0).is_empty() && s.level(0, 5) == 0);
        assert!(s.insert_hit(0, h(20, &[1])));
        assert!(s.insert_hit(1, h(7, &[0])), "another user in between");
        assert!(s.insert_hit(0, h(10, &[0])));
        assert!(!s.insert_hit(0, h(10, &[0])), "a replayed hit is the same hit");
        s.set_level(0, 3, 1);
        s.set_level(0, 1, 2);
        s.set_level(0, 3, 2);
        assert!(s.insert_hit(0, h(15, &[2])));
        assert_eq!(s.hits(0), &[h(10, &[0]), h(15, &[2]), h(20, &[1])]);
        assert_eq!((s.level(0, 1), s.level(0, 2), s.level(0, 3)), (2, 0, 2));
        assert_eq!(s.get(0).len(), 5);
        assert_eq!(s.hits(1), &[h(7, &[0])]);
        assert_eq!(s.entries(), 6);
        assert!(s.garbage > 0);

        let lens: Vec<u32> = s.lens().collect();
        let all: Vec<E> = (0..2).flat_map(|u| s.get(u).to_vec()).collect();
        let copy = FunnelStore::from_parts(&lens, &all).expect("well formed");
        assert_eq!((copy.get(0), copy.get(1)), (s.get(0), s.get(1)));

        s.prune(15, 2);
        assert_eq!(s.hits(0), &[h(15, &[2]), h(20, &[1])]);
        assert_eq!((s.level(0, 1), s.level(0, 3)), (0, 2));
        assert!(s.get(1).is_empty());
        assert_eq!((s.entries(), s.garbage, s.arena.len()), (3, 0, 1 + 3 * FunnelStore::<E>::WORDS));
        s.prune(100, 100);
        assert!(s.get(0).is_empty() && s.arena.is_empty() && s.entries() == 0);

        let unsorted: [E; 2] = [h(20, &[1]), h(10, &[0])];
        assert!(FunnelStore::from_parts(&[2], &unsorted).is_none());
        assert!(FunnelStore::from_parts(&[3], &unsorted).is_none(), "counts must add up");
    }

    #[test]
    fn keeps_hits_then_levels_packed() {
        keeps_hits_then_levels::<Packed>();
    }

    #[test]
    fn keeps_hits_then_levels_wide() {
        keeps_hits_then_levels::<Hit>();
    }

    #[test]
    fn packed_entries_round_trip_and_sort_by_time() {
        let a: Packed = h(4_102_444_799_999, &[21]);
        assert_eq!((a.ts(), a.mask()), (4_102_444_799_999, 1 << 21));
        let b: Packed = h(5, &[0, 3]);
        assert!(b < a && b.mask() == 0b1001);
        for (day, level) in [(-1, 1), (0, 32), (47_481, 7)] {
            let l = Packed::level_entry(day, level);
            assert_eq!((l.mask(), l.day_level()), (0, (day, level)));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hit(u32, i64, usize),
        Level(u32, Day, usize),
        Prune(i64),
        Compact,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..5u32, 0..60i64, 0..3usize).prop_map(|(u, ts, step)| Op::Hit(u, ts, step)),
            2 => (0..5u32, 0..6 as Day, 1..4usize).prop_map(|(u, d, l)| Op::Level(u, d, l)),
            1 => (0..60i64).prop_map(Op::Prune),
            1 => Just(Op::Compact),
        ]
    }

    /// Every user's entries against a sorted set per user, whatever the
    /// moves and compactions in between.
    fn matches_a_naive_model<E: Entry>(ops: &[Op]) {
        use std::collections::BTreeMap;
        let mut s = FunnelStore::<E>::default();
        let mut model: Vec<(Vec<E>, BTreeMap<Day, usize>)> = vec![(Vec::new(), BTreeMap::new()); 5];
        for _ in 0..5 {
            s.push_user();
        }
        for op in ops {
            match *op {
                Op::Hit(u, ts, step) => {
                    let hit: E = h(ts, &[step]);
                    let hits = &mut model[u as usize].0;
                    let new = !hits.contains(&hit);
                    if new {
                        hits.push(hit);
                        hits.sort();
                    }
                    assert_eq!(s.insert_hit(u, hit), new);
                }
                Op::Level(u, day, level) => {
                    model[u as usize].1.insert(day, level);
                    s.set_level(u, day, level);
                }
                Op::Prune(cutoff) => {
                    let day_cutoff = (cutoff / 10) as Day;
                    for (hits, levels) in &mut model {
                        hits.retain(|h| h.ts() >= cutoff);
                        levels.retain(|&d, _| d >= day_cutoff);
                    }
                    s.prune(cutoff, day_cutoff);
                }
                Op::Compact => s.compact(i64::MIN, Day::MIN),
            }
            for (u, (hits, levels)) in model.iter().enumerate() {
                assert_eq!(s.hits(u as u32), hits.as_slice());
                let stored: Vec<(Day, usize)> = s.get(u as u32)[hits.len()..].iter().map(|l| l.day_level()).collect();
                assert_eq!(stored, levels.iter().map(|(&d, &l)| (d, l)).collect::<Vec<_>>());
            }
            let held: usize = model.iter().map(|(h, l)| h.len() + l.len()).sum();
            assert_eq!(s.entries(), held);
        }
    }

    proptest::proptest! {
        #[test]
        fn packed_store_matches_a_naive_model(ops in proptest::collection::vec(op(), 0..120)) {
            matches_a_naive_model::<Packed>(&ops);
        }

        #[test]
        fn wide_store_matches_a_naive_model(ops in proptest::collection::vec(op(), 0..120)) {
            matches_a_naive_model::<Hit>(&ops);
        }
    }

    #[test]
    fn compaction_keeps_every_user_whole() {
        let mut s = FunnelStore::<Packed>::default();
        let users = 3000u32;
        for _ in 0..users {
            s.push_user();
        }
        // Interleaved inserts leave garbage behind until it is compacted.
        for round in 0..40i64 {
            for u in 0..users {
                assert!(s.insert_hit(u, h(1000 * i64::from(u) + 40 - round, &[0])));
            }
        }
        assert!(s.garbage * 8 <= s.arena.len().max(MIN_GARBAGE * 8));
        for u in 0..users {
            let hits = s.hits(u);
            assert_eq!(hits.len(), 40);
            assert!(hits.iter().enumerate().all(|(i, e)| e.ts() == 1000 * i64::from(u) + 1 + i as i64));
        }
        assert_eq!(s.entries(), 40 * users as usize);
    }
}
