//! The stores against a plain model, and their limits.

use super::encoding::{DEAD, LONG_SIZE, MIN_GARBAGE_UNITS, SLACK_UNITS, header_units};
use super::tagged::header_parts;
use super::*;
use crate::engine::def::{FunnelDef, FunnelMode};
use crate::engine::funnel::Steps;

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
    assert!(s.o.garbage > 0);

    let lens: Vec<u32> = s.lens().collect();
    let all: Vec<E> = (0..2).flat_map(|u| s.hits(u).to_vec()).collect();
    let copy = FunnelStore::from_parts(&lens, &all).expect("well formed");
    assert_eq!((copy.hits(0), copy.hits(1)), (s.hits(0), s.hits(1)));

    s.prune(15);
    assert_eq!(s.hits(0), &[h(15, &[2]), h(20, &[1])]);
    assert!(s.hits(1).is_empty());
    assert_eq!((s.entries(), s.o.garbage, s.arena.len()), (2, 0, 1 + 2 * FunnelStore::<E>::WORDS));
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
    let names: Vec<String> = (0..20).map(|k| format!("s{k}")).collect();
    let steps = |n: usize| names[..n].iter().map(String::as_str).collect::<Vec<_>>();
    let funnel = |name, mode, steps: &[&str]| FunnelDef::of_steps(name, 3_600_000, mode, steps);
    let funnels = [
        funnel("a", FunnelMode::Default, &steps(3)),
        funnel("b", FunnelMode::Default, &steps(20)),
        funnel("c", FunnelMode::StrictOnce, &["x", "x"]),
        funnel("d", FunnelMode::Default, &steps(2)),
        funnel("e", FunnelMode::Default, &steps(18)),
    ];
    let layout = Layout::of(&funnels);
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
        assert_eq!(s.garbage_walked(), s.o.garbage, "{op:?}");
    }
}

impl<E: Entry> FunnelStore<E> {
    /// The garbage words found by walking the arena segment by segment
    /// (which must end at its end), and every live user's segment found
    /// on the way.
    fn garbage_walked(&self) -> usize {
        let (mut at, mut garbage, mut live) = (0, 0, 0);
        while at < self.arena.len() {
            let (uid, len) = header_parts(self.arena[at]);
            let words = 1 + len * Self::WORDS;
            if self.o.at[uid] as usize == at {
                live += 1;
            } else {
                garbage += words;
            }
            at += words;
        }
        assert_eq!(at, self.arena.len(), "segments overrun the arena");
        assert_eq!(live, self.o.at.iter().filter(|&&a| a != NONE).count());
        garbage
    }
}

#[test]
fn a_wide_segment_grows_into_the_garbage_after_it() {
    let mut s = FunnelStore::<Hit>::default();
    for _ in 0..3 {
        s.push_user();
    }
    let w = FunnelStore::<Hit>::WORDS;
    for u in 0..3 {
        s.insert_hit(u, h(10, &[0]));
        s.insert_hit(u, h(20, &[1]));
    }
    // 1 moves to the end: a header and two entries of garbage after 0.
    s.insert_hit(1, h(30, &[2]));
    let len = s.arena.len();
    assert_eq!(s.o.garbage, 1 + 2 * w);
    // 0 takes an entry's words of it twice (its new hits go between
    // and before its others); then the header left cannot hold one,
    // and 0 moves.
    s.insert_hit(0, h(15, &[2]));
    assert_eq!((s.o.get(0), s.arena.len(), s.o.garbage), (Some(0), len, 1 + w));
    s.insert_hit(0, h(5, &[1]));
    assert_eq!((s.o.get(0), s.arena.len(), s.o.garbage), (Some(0), len, 1));
    assert_eq!(s.garbage_walked(), 1);
    assert_eq!(s.hits(0), [h(5, &[1]), h(10, &[0]), h(15, &[2]), h(20, &[1])].as_slice());
    s.insert_hit(0, h(25, &[0]));
    assert_eq!((s.o.get(0), s.o.garbage), (Some(len), 1 + 1 + 4 * w));
    assert_eq!(s.garbage_walked(), s.o.garbage);
    assert_eq!(s.hits(1), [h(10, &[0]), h(20, &[1]), h(30, &[2])].as_slice());
    s.compact(i64::MIN);
    assert_eq!(s.garbage_walked(), 0);
    assert_eq!(s.hits(0).len(), 5);
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

#[derive(Debug, Clone)]
enum CompactOp {
    Hit(u32, i64, usize),
    /// Drops the user's hit at this index (modulo their count).
    Drop(u32, usize),
    Prune(i64),
    Compact,
}

/// Times near 0, near 2^23 and 2^24 ms (either side of the two-unit
/// gaps) and up to three 2^31 ms further (so that a gap can outgrow
/// the 32-bit deltas), steps up to the 22nd (past the 6, 7 and 15 bits
/// of the entries' forms).
fn compact_op() -> impl proptest::strategy::Strategy<Value = CompactOp> {
    use proptest::prelude::*;
    let ts = (0..4i64, 0..3i64, 0..60i64).prop_map(|(far, mid, ts)| far * (1 << 31) + mid * (1 << 23) + ts);
    prop_oneof![
        6 => (0..5u32, ts.clone(), prop_oneof![3 => 0..3usize, 1 => 0..22usize])
            .prop_map(|(u, ts, step)| CompactOp::Hit(u, ts, step)),
        1 => (0..5u32, any::<usize>()).prop_map(|(u, i)| CompactOp::Drop(u, i)),
        1 => ts.prop_map(CompactOp::Prune),
        1 => Just(CompactOp::Compact),
    ]
}

/// The compact store against a sorted list per user, through the
/// engine's calls (load, insert or save), moves, compactions and a
/// snapshot's round trip.
fn compact_store_matches(ops: &[CompactOp]) {
    let mut s = CompactStore::default();
    let mut model: Vec<Vec<Packed>> = vec![Vec::new(); 5];
    for _ in 0..5 {
        s.push_user();
    }
    let mut hits = Vec::new();
    for op in ops {
        match *op {
            CompactOp::Hit(u, ts, step) => {
                let hit: Packed = h(ts, &[step]);
                s.load(u, &mut hits);
                if let Err(pos) = hits.binary_search(&hit) {
                    hits.insert(pos, hit);
                    s.insert(u, &hits, pos);
                    model[u as usize].push(hit);
                    model[u as usize].sort();
                }
            }
            CompactOp::Drop(u, i) => {
                s.load(u, &mut hits);
                if !hits.is_empty() {
                    let i = i % hits.len();
                    hits.remove(i);
                    s.save(u, &hits);
                    model[u as usize].remove(i);
                }
            }
            CompactOp::Prune(cutoff) => {
                for hits in &mut model {
                    hits.retain(|h| h.ts() >= cutoff);
                }
                s.prune(cutoff);
            }
            CompactOp::Compact => s.compact(i64::MIN),
        }
        for (u, want) in model.iter().enumerate() {
            s.load(u as u32, &mut hits);
            assert_eq!(&hits, want, "{op:?}");
        }
        assert_eq!(s.entries(), model.iter().map(Vec::len).sum::<usize>());
        assert_eq!(s.garbage_walked(), s.o.garbage, "{op:?}");
    }
    let lens: Vec<u32> = Segments::lens(&s).collect();
    let all: Vec<Packed> = model.concat();
    let copy = CompactStore::from_parts(&lens, &all).expect("well formed");
    for (u, want) in model.iter().enumerate() {
        copy.load(u as u32, &mut hits);
        assert_eq!(&hits, want);
    }
}

impl CompactStore {
    /// The garbage units found by walking the arena segment by segment
    /// (which must end at its end), and every live user's segment found
    /// on the way.
    fn garbage_walked(&self) -> usize {
        let (mut at, mut garbage, mut live) = (0, 0, 0);
        while at < self.arena.len() {
            let units = self.head_at(at).units();
            if self.arena[at] & DEAD != 0 {
                garbage += units;
            } else {
                assert!(self.o.at.contains(&(at as u32)), "a live segment at {at} no user points to");
                live += 1;
            }
            at += units;
        }
        assert_eq!(at, self.arena.len(), "segments overrun the arena");
        assert_eq!(live, self.o.at.iter().filter(|&&a| a != NONE).count());
        garbage
    }
}

/// Adds a hit of step 0 at `t0 + ts` to user `u`, in the model too.
fn add_hit(s: &mut CompactStore, model: &mut [Vec<Packed>], u: u32, ts: i64) {
    let hits = &mut model[u as usize];
    hits.push(h(1_790_000_000_000 + ts, &[0]));
    s.insert(u, hits, hits.len() - 1);
}

fn store_of(users: usize) -> (CompactStore, Vec<Vec<Packed>>) {
    let mut s = CompactStore::default();
    for _ in 0..users {
        s.push_user();
    }
    (s, vec![Vec::new(); users])
}

fn same_as(s: &CompactStore, model: &[Vec<Packed>]) {
    let mut hits = Vec::new();
    for (u, want) in model.iter().enumerate() {
        s.load(u as u32, &mut hits);
        assert_eq!(&hits, want);
    }
    assert_eq!(s.garbage_walked(), s.o.garbage);
}

#[test]
fn a_segment_grows_into_the_garbage_after_it() {
    let (mut s, mut model) = store_of(3);
    // Users 0, 1 and 2 side by side, six units each (a header, a first
    // entry of three, a later one of two); then 1 moves to the end,
    // leaving its six units garbage after 0's, and slack after its own.
    for u in 0..3 {
        add_hit(&mut s, &mut model, u, 0);
        add_hit(&mut s, &mut model, u, 1000);
    }
    add_hit(&mut s, &mut model, 1, 2000);
    let len = s.arena.len();
    assert_eq!((s.o.get(1), len, s.o.garbage), (Some(18), 26 + SLACK_UNITS, 6 + SLACK_UNITS));
    // 0's next entries take that garbage two units at a time, where 0
    // is; what is left stays garbage under a header of its own.
    add_hit(&mut s, &mut model, 0, 3000);
    assert_eq!((s.o.get(0), s.arena.len(), s.o.garbage), (Some(0), len, 4 + SLACK_UNITS));
    same_as(&s, &model);
    add_hit(&mut s, &mut model, 0, 4000);
    assert_eq!((s.o.get(0), s.arena.len(), s.o.garbage), (Some(0), len, 2 + SLACK_UNITS));
    add_hit(&mut s, &mut model, 0, 5000);
    assert_eq!((s.o.get(0), s.arena.len(), s.o.garbage), (Some(0), len, SLACK_UNITS));
    same_as(&s, &model);
    // 1 grows into its slack, where it is.
    add_hit(&mut s, &mut model, 1, 3000);
    assert_eq!((s.o.get(1), s.arena.len(), s.o.garbage), (Some(18), len, SLACK_UNITS - 2));
    same_as(&s, &model);
    // With a live segment after it, 0 moves to the end, slack after it.
    add_hit(&mut s, &mut model, 0, 6000);
    let moved = 1 + 3 + 4 * 2;
    assert_eq!((s.o.get(0), s.o.garbage), (Some(len), SLACK_UNITS - 2 + moved + SLACK_UNITS));
    same_as(&s, &model);
    s.compact(i64::MIN);
    assert_eq!(s.o.garbage, 0);
    same_as(&s, &model);
}

#[test]
fn garbage_too_small_for_an_entry_is_left_alone() {
    let (mut s, mut model) = store_of(3);
    add_hit(&mut s, &mut model, 0, 0);
    add_hit(&mut s, &mut model, 0, 1000);
    add_hit(&mut s, &mut model, 1, 0);
    add_hit(&mut s, &mut model, 2, 0);
    // 1 moves: four units of garbage after 0, slack after 1.
    add_hit(&mut s, &mut model, 1, 1000);
    assert_eq!(s.o.garbage, 4 + SLACK_UNITS);
    // An entry of three units (2^24 ms later) leaves one unit: a
    // header of no body.
    add_hit(&mut s, &mut model, 0, 1000 + (1 << 24));
    assert_eq!((s.o.get(0), s.o.garbage), (Some(0), 1 + SLACK_UNITS));
    same_as(&s, &model);
    // One unit holds no entry: 0 moves, and the unit stays garbage.
    add_hit(&mut s, &mut model, 0, 2000 + (1 << 24));
    assert_eq!(s.o.garbage, 1 + SLACK_UNITS + (1 + 3 + 2 + 3) + SLACK_UNITS);
    same_as(&s, &model);
    s.compact(i64::MIN);
    assert_eq!(s.o.garbage, 0);
    same_as(&s, &model);
}

/// The arena's length, in its units.
trait ArenaLen {
    fn arena_len(&self) -> usize;
}

impl ArenaLen for CompactStore {
    fn arena_len(&self) -> usize {
        self.arena.len()
    }
}

impl<E> ArenaLen for FunnelStore<E> {
    fn arena_len(&self) -> usize {
        self.arena.len()
    }
}

/// A full arena refuses a hit that needs a new segment, changing
/// nothing; a compaction makes room when there is garbage.
fn full_arena_refuses_then_compacts<S: Segments + Default + ArenaLen>() {
    let mut s = S::default();
    for _ in 0..3 {
        s.push_user();
    }
    let hit = |ts: i64| S::Entry::from_hit(Hit { ts: 1_790_000_000_000 + ts, mask: 1, tag: 0 });
    let mut hits = Vec::new();
    let mut add = |s: &mut S, u: u32, ts: i64| {
        s.load(u, &mut hits);
        let pos = hits.binary_search(&hit(ts)).expect_err("a new hit");
        hits.insert(pos, hit(ts));
        s.insert(u, &hits, pos)
    };
    let mut loaded = Vec::new();
    let mut hits_of = |s: &S, u: u32| {
        s.load(u, &mut loaded);
        loaded.clone()
    };
    // Users 0 and 1 fill the arena: no new segment starts after them.
    assert!(add(&mut s, 0, 0) && add(&mut s, 1, 0));
    let full = s.arena_len();
    s.offsets_mut().limit = full;
    assert!(!add(&mut s, 2, 0), "a new user's segment past the limit");
    assert_eq!((s.arena_len(), s.entries(), s.offsets().get(2)), (full, 2, None));
    // The last segment grows where it is, at the arena's end.
    assert!(add(&mut s, 1, 1000));
    // 0's segment, not the last, would have to move: refused, kept.
    assert!(!add(&mut s, 0, 1000));
    assert_eq!((hits_of(&s, 0), s.entries()), (vec![hit(0)], 3));
    // Room for 0's move leaves its old segment garbage; then 1's move
    // needs a compaction first, which makes the room.
    s.offsets_mut().limit = usize::MAX;
    assert!(add(&mut s, 0, 1000));
    assert!(s.offsets().garbage > 0);
    let limit = s.arena_len();
    s.offsets_mut().limit = limit;
    assert!(add(&mut s, 1, 2000), "the compaction made room");
    assert!(s.offsets().get(1).is_some_and(|at| at < limit));
    assert_eq!(hits_of(&s, 0), vec![hit(0), hit(1000)]);
    assert_eq!(hits_of(&s, 1), vec![hit(0), hit(1000), hit(2000)]);
    assert_eq!(s.entries(), 5);
    // A new user's first segment, with the arena full again and 1's
    // move left garbage: a compaction makes room for it too.
    assert!(s.offsets().garbage > 0);
    let limit = s.arena_len();
    s.offsets_mut().limit = limit;
    assert!(add(&mut s, 2, 0), "the compaction made room for a new segment");
    assert!(s.offsets().get(2).is_some_and(|at| at < limit));
    assert_eq!((hits_of(&s, 2), s.entries()), (vec![hit(0)], 6));
    assert_eq!(hits_of(&s, 1), vec![hit(0), hit(1000), hit(2000)]);
}

#[test]
fn a_full_compact_store_refuses_then_compacts() {
    full_arena_refuses_then_compacts::<CompactStore>();
}

#[test]
fn a_full_wide_store_refuses_then_compacts() {
    full_arena_refuses_then_compacts::<FunnelStore<Hit>>();
}

proptest::proptest! {
    #[test]
    fn compact_store_matches_a_naive_model(ops in proptest::collection::vec(compact_op(), 0..150)) {
        compact_store_matches(&ops);
    }
}

#[test]
fn compact_entries_take_units_by_their_gap_and_steps() {
    const DAY: i64 = 86_400_000;
    let t0 = 1_790_000_000_000;
    let mut s = CompactStore::default();
    s.push_user();
    let mut hits = Vec::new();
    for i in 0..4 {
        hits.push(h(t0 + i * DAY, &[i as usize % 3]));
        s.insert(0, &hits, hits.len() - 1);
    }
    // A header unit, the first entry in three units (steps among the
    // first six), three entries a day after the one before in three.
    assert_eq!(s.arena.len(), 1 + 3 + 3 * 3);
    // A minute later, steps among the first seven: two units.
    hits.push(h(t0 + 3 * DAY + 60_000, &[6]));
    s.insert(0, &hits, 4);
    assert_eq!(s.arena.len(), 1 + 3 + 3 * 3 + 2);
    // 2^24 ms later, or a step past the seventh: three units.
    hits.push(h(t0 + 3 * DAY + 60_000 + (1 << 24), &[0]));
    hits.push(h(t0 + 3 * DAY + 60_000 + (1 << 24) + 1, &[7]));
    s.insert(0, &hits[..6], 5);
    s.insert(0, &hits, 6);
    assert_eq!(s.arena.len(), 1 + 3 + 3 * 3 + 2 + 3 + 3);
    // A gap of 50 days or a 16th step: every entry in four units.
    hits.push(h(t0 + 53 * DAY, &[0]));
    s.insert(0, &hits, 7);
    assert_eq!(s.arena.len() - s.o.garbage, 1 + 8 * 4);
    let mut out = Vec::new();
    s.load(0, &mut out);
    assert_eq!(out, hits);
    s.prune(t0 + 4 * DAY);
    s.load(0, &mut out);
    assert_eq!(out, hits[7..]);
    assert_eq!(s.arena.len(), 1 + 3, "back to deltas once the gaps fit");
    for (wide, units) in [(vec![h(5, &[6])], 1 + 4), (vec![h(5, &[6]), h(6, &[15])], 1 + 8)] {
        s.save(0, &wide);
        s.load(0, &mut out);
        assert_eq!((&out, s.arena.len()), (&wide, units));
    }
}

#[test]
fn long_segments_carry_their_size_in_two_more_units() {
    let mut s = CompactStore::default();
    s.push_user();
    s.push_user();
    let (mut hits, mut out) = (Vec::new(), Vec::new());
    // Two units an entry after the first: past the short size.
    let n = usize::from(LONG_SIZE) / 2 + 2;
    for i in 0..n {
        hits.push(h(1_000 * i as i64, &[i % 3]));
        s.insert(0, &hits, i);
        if i % 1000 == 0 {
            // Another user's segment after it: the next insert moves it.
            s.load(1, &mut out);
            let pos = out.len();
            out.push(h(i as i64, &[0]));
            s.insert(1, &out, pos);
        }
    }
    s.load(0, &mut out);
    assert_eq!(out, hits);
    assert_eq!(Segments::lens(&s).next(), Some(n as u32));
    let (at, head) = s.head(0).expect("a segment");
    assert_eq!((head.body, head.full, header_units(head.body)), (3 + (n - 1) * 2, false, 3));
    assert_eq!(s.arena.len() - at, 3 + 3 + (n - 1) * 2, "user 0 ends the arena");
    s.compact(i64::MIN);
    s.load(0, &mut out);
    assert_eq!(out, hits);
    // Dropping to a short size takes the short header again.
    s.prune(1_000 * (n as i64 - 10));
    s.load(0, &mut out);
    assert_eq!(out, hits[n - 10..]);
    assert_eq!(header_units(s.head(0).expect("a segment").1.body), 1);
}

/// Interleaved inserts of 3 000 users, each before and after the
/// user's others in turn, leave garbage behind until it is compacted;
/// every user comes out whole.
fn interleaved_inserts<S: Segments>(s: &mut S) {
    let users = 3000u32;
    for _ in 0..users {
        s.push_user();
    }
    let mut hits = Vec::new();
    for round in 0..40i64 {
        for u in 0..users {
            // Rounds alternate: an earlier hit (the segment is written
            // anew), then a later one (appended).
            let ts = 1000 * i64::from(u) + if round % 2 == 0 { 20 - round / 2 } else { 21 + round / 2 };
            s.load(u, &mut hits);
            let pos = hits.binary_search(&S::Entry::from_hit(Hit { ts, mask: 1, tag: 0 })).expect_err("new");
            hits.insert(pos, S::Entry::from_hit(Hit { ts, mask: 1, tag: 0 }));
            s.insert(u, &hits, pos);
        }
    }
    for u in 0..users {
        s.load(u, &mut hits);
        assert_eq!(hits.len(), 40);
        assert!(hits.iter().enumerate().all(|(i, e)| e.ts() == 1000 * i64::from(u) + 1 + i as i64));
    }
    assert_eq!(s.entries(), 40 * users as usize);
}

#[test]
fn compaction_keeps_every_user_whole() {
    let mut s = FunnelStore::<Packed>::default();
    interleaved_inserts(&mut s);
    assert!(s.o.garbage * 8 <= s.arena.len().max(MIN_GARBAGE * 8));
    let mut s = CompactStore::default();
    interleaved_inserts(&mut s);
    assert!(s.o.garbage * 8 <= s.arena.len().max(MIN_GARBAGE_UNITS * 8));
}
