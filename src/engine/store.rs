//! Where funnels keep their users' events: one arena of 64-bit words per
//! store, a segment per user who has any. Funnels share a store while
//! their steps fit one entry's mask (see [`Layout`]): a user then has one
//! offset, one header and one entry per event for all of them, where a
//! store per funnel took one of each per funnel.
//!
//! A segment is a header word (the user's index above the entry count)
//! followed by the user's hits of the horizon, sorted and distinct. A user
//! costs a 4-byte offset, plus the header and the hits when they have any:
//! no allocation of their own, so none of an allocator's per-block overhead
//! and no 16-byte pointer per user and funnel.
//!
//! An insert moves the user's segment, one hit longer, to the end of the
//! arena (or grows it in place when it is already there); the old copy
//! becomes garbage. Compaction slides the live segments down in one pass
//! over the arena, finding each segment's owner from its header, when
//! garbage passes an eighth of the arena, and once a day when old hits are
//! dropped.

use std::marker::PhantomData;

use super::funnel::{Entry, Hit, Packed, Steps};
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

    /// The user's hits, sorted.
    pub fn hits(&self, uid: u32) -> &[E] {
        match self.span(uid) {
            None => &[],
            Some((at, len)) => bytemuck::cast_slice(&self.arena[at + 1..at + 1 + len * Self::WORDS]),
        }
    }

    /// Adds a hit; false when the user has it already.
    pub fn insert_hit(&mut self, uid: u32, hit: E) -> bool {
        match self.hits(uid).binary_search(&hit) {
            Ok(_) => false,
            Err(pos) => {
                self.insert_at(uid, pos, hit);
                true
            }
        }
    }

    /// Inserts `entry` at `pos` of the user's hits, where a binary search
    /// of [`FunnelStore::hits`] that did not find it said it goes.
    pub fn insert_at(&mut self, uid: u32, pos: usize, entry: E) {
        debug_assert!(self.hits(uid).binary_search(&entry) == Err(pos));
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
                    self.compact(i64::MIN);
                }
            }
        }
    }

    /// Drops hits before `cutoff` (epoch ms), and the garbage, in one pass.
    pub fn prune(&mut self, cutoff: i64) {
        self.compact(cutoff);
    }

    fn compact(&mut self, cutoff: i64) {
        let w = Self::WORDS;
        let (mut read, mut write, mut entries) = (0, 0, 0);
        while read < self.arena.len() {
            let (uid, len) = header_parts(self.arena[read]);
            let size = 1 + len * w;
            if self.at[uid] as usize == read {
                let hits: &[E] = bytemuck::cast_slice(&self.arena[read + 1..read + size]);
                let old = hits.partition_point(|h| h.ts() < cutoff);
                let kept = len - old;
                if kept == 0 {
                    self.at[uid] = NONE;
                } else {
                    self.arena[write] = header(uid, kept);
                    self.arena.copy_within(read + 1 + old * w..read + size, write + 1);
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

    /// Hits per user (for snapshots).
    pub fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.at.len() as u32).map(|u| self.span(u).map_or(0, |(_, len)| len as u32))
    }

    /// The store of `lens` (hits per user) and `entries` (all users' hits
    /// in user order), as [`FunnelStore::lens`] and [`FunnelStore::hits`]
    /// gave them; `None` when they do not add up or a user's hits are not
    /// sorted and distinct.
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
            if !user.windows(2).all(|w| w[0] < w[1]) || user.iter().any(|h| h.mask() == 0) {
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

/// Which store each funnel of a configuration uses. Funnels of [`Packed`]
/// entries share a store while their steps fit its mask (first fit, in
/// the configuration's order), each at its own bit offset; a funnel whose
/// entries need tags has a store of its own. It depends on the
/// definitions alone, so a snapshot's stores fit any engine of its
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per funnel: its store, and where its steps lie in the store's masks.
    pub funnels: Vec<(usize, Steps)>,
    /// Per store: whether its entries carry tags ([`Store::Wide`]).
    pub wide: Vec<bool>,
}

impl Layout {
    /// The layout of `defs`.
    pub fn of(defs: &[FunnelDef]) -> Self {
        let mut layout = Layout { funnels: Vec::with_capacity(defs.len()), wide: Vec::new() };
        // Per store: the mask bits taken (None for a store with tags).
        let mut taken: Vec<Option<usize>> = Vec::new();
        for def in defs {
            let count = def.steps.len();
            if needs_tags(def) {
                layout.funnels.push((taken.len(), Steps { count, shift: 0 }));
                taken.push(None);
                layout.wide.push(true);
                continue;
            }
            let fits = taken.iter().position(|t| t.is_some_and(|used| used + count <= Packed::MAX_STEPS));
            let store = fits.unwrap_or_else(|| {
                taken.push(Some(0));
                layout.wide.push(false);
                taken.len() - 1
            });
            let used = taken[store].get_or_insert(0);
            layout.funnels.push((store, Steps { count, shift: *used as u32 }));
            *used += count;
        }
        layout
    }

    /// The funnels that use store `s`, in order.
    pub fn members(&self, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.funnels.iter().enumerate().filter(move |(_, (store, _))| *store == s).map(|(f, _)| f)
    }
}

/// A store in the entry layout its funnels allow: 8-byte [`Packed`]
/// entries unless distinct events at one millisecond can matter (see
/// [`Packed`]).
#[derive(Debug, Clone)]
pub enum Store {
    /// Hits without tags, 8 bytes an entry.
    Packed(FunnelStore<Packed>),
    /// Hits with tags, 16 bytes an entry.
    Wide(FunnelStore<Hit>),
}

impl Store {
    /// An empty store, with tags or without.
    pub fn new(wide: bool) -> Self {
        if wide { Store::Wide(FunnelStore::default()) } else { Store::Packed(FunnelStore::default()) }
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
    pub fn prune(&mut self, cutoff: i64) {
        match self {
            Store::Packed(s) => s.prune(cutoff),
            Store::Wide(s) => s.prune(cutoff),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h<E: Entry>(ts: i64, steps: &[usize]) -> E {
        E::from_hit(Hit { ts, mask: steps.iter().fold(0, |m, s| m | 1 << s), tag: 0 })
    }

    fn keeps_hits_sorted<E: Entry>() {
        let mut s = FunnelStore::<E>::default();
        s.push_user();
        s.push_user();
        assert!(s.hits(0).is_empty());
        assert!(s.insert_hit(0, h(20, &[1])));
        assert!(s.insert_hit(1, h(7, &[0])), "another user in between");
        assert!(s.insert_hit(0, h(10, &[0])));
        assert!(!s.insert_hit(0, h(10, &[0])), "a replayed hit is the same hit");
        assert!(s.insert_hit(0, h(15, &[2])));
        assert_eq!(s.hits(0), &[h(10, &[0]), h(15, &[2]), h(20, &[1])]);
        assert_eq!(s.hits(1), &[h(7, &[0])]);
        assert_eq!(s.entries(), 4);
        assert!(s.garbage > 0);

        let lens: Vec<u32> = s.lens().collect();
        let all: Vec<E> = (0..2).flat_map(|u| s.hits(u).to_vec()).collect();
        let copy = FunnelStore::from_parts(&lens, &all).expect("well formed");
        assert_eq!((copy.hits(0), copy.hits(1)), (s.hits(0), s.hits(1)));

        s.prune(15);
        assert_eq!(s.hits(0), &[h(15, &[2]), h(20, &[1])]);
        assert!(s.hits(1).is_empty());
        assert_eq!((s.entries(), s.garbage, s.arena.len()), (2, 0, 1 + 2 * FunnelStore::<E>::WORDS));
        s.prune(100);
        assert!(s.hits(0).is_empty() && s.arena.is_empty() && s.entries() == 0);

        let unsorted: [E; 2] = [h(20, &[1]), h(10, &[0])];
        assert!(FunnelStore::from_parts(&[2], &unsorted).is_none());
        assert!(FunnelStore::from_parts(&[3], &unsorted).is_none(), "counts must add up");
    }

    #[test]
    fn keeps_hits_sorted_packed() {
        keeps_hits_sorted::<Packed>();
    }

    #[test]
    fn keeps_hits_sorted_wide() {
        keeps_hits_sorted::<Hit>();
    }

    #[test]
    fn funnels_share_stores_while_their_steps_fit() {
        let steps = |n: usize| (0..n).map(|k| format!("\"s{k}\"")).collect::<Vec<_>>().join(",");
        let text = format!(
            r#"
            [[funnel]]
            name = "a"
            window = "1h"
            steps = [{}]
            [[funnel]]
            name = "b"
            window = "1h"
            steps = [{}]
            [[funnel]]
            name = "c"
            window = "1h"
            mode = "strict_once"
            steps = ["x", "x"]
            [[funnel]]
            name = "d"
            window = "1h"
            steps = [{}]
            [[funnel]]
            name = "e"
            window = "1h"
            steps = [{}]
            "#,
            steps(3),
            steps(20),
            steps(2),
            steps(18),
        );
        let cfg = crate::config::Config::from_toml_str(&text).expect("config").engine;
        let layout = Layout::of(&cfg.funnels);
        let at = |store, count, shift| (store, Steps { count, shift });
        // b does not fit beside a (23 steps), c needs tags, d fits beside
        // a (the first store with room), e beside neither a and d (23) nor
        // b (38).
        assert_eq!(layout.funnels, vec![at(0, 3, 0), at(1, 20, 0), at(2, 2, 0), at(0, 2, 3), at(3, 18, 0)]);
        assert_eq!(layout.wide, vec![false, false, true, false]);
        assert_eq!(layout.members(0).collect::<Vec<_>>(), vec![0, 3]);
    }

    #[test]
    fn packed_entries_round_trip_and_sort_by_time() {
        let a: Packed = h(4_102_444_799_999, &[21]);
        assert_eq!((a.ts(), a.mask()), (4_102_444_799_999, 1 << 21));
        let b: Packed = h(5, &[0, 3]);
        assert!(b < a && b.mask() == 0b1001);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hit(u32, i64, usize),
        Prune(i64),
        Compact,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..5u32, 0..60i64, 0..3usize).prop_map(|(u, ts, step)| Op::Hit(u, ts, step)),
            1 => (0..60i64).prop_map(Op::Prune),
            1 => Just(Op::Compact),
        ]
    }

    /// Every user's hits against a sorted list per user, whatever the
    /// moves and compactions in between.
    fn matches_a_naive_model<E: Entry>(ops: &[Op]) {
        let mut s = FunnelStore::<E>::default();
        let mut model: Vec<Vec<E>> = vec![Vec::new(); 5];
        for _ in 0..5 {
            s.push_user();
        }
        for op in ops {
            match *op {
                Op::Hit(u, ts, step) => {
                    let hit: E = h(ts, &[step]);
                    let hits = &mut model[u as usize];
                    let new = !hits.contains(&hit);
                    if new {
                        hits.push(hit);
                        hits.sort();
                    }
                    assert_eq!(s.insert_hit(u, hit), new);
                }
                Op::Prune(cutoff) => {
                    for hits in &mut model {
                        hits.retain(|h| h.ts() >= cutoff);
                    }
                    s.prune(cutoff);
                }
                Op::Compact => s.compact(i64::MIN),
            }
            for (u, hits) in model.iter().enumerate() {
                assert_eq!(s.hits(u as u32), hits.as_slice());
            }
            assert_eq!(s.entries(), model.iter().map(Vec::len).sum::<usize>());
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
