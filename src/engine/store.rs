//! Where funnels keep their users' events: one arena per store, a segment
//! per user who has any. Funnels share a store while their steps fit one
//! entry's mask (see [`Layout`]): a user then has one offset, one header
//! and one entry per event for all of them, where a store per funnel took
//! one of each per funnel.
//!
//! A segment is a header followed by the user's hits of the horizon,
//! sorted and distinct: in [`CompactStore`] (funnels of [`Packed`]
//! entries) each written against the one before it in two to four 16-bit
//! units, in [`FunnelStore`] (entries with tags) as 64-bit words after a
//! header word naming the user and the count. A user costs a 4-byte
//! offset, plus the segment when they have hits: no allocation of their
//! own, so none of an allocator's per-block overhead and no 16-byte
//! pointer per user and funnel.
//!
//! An insert grows the user's segment in place when it ends the arena or
//! garbage follows it (taking what it needs of that garbage); else it
//! moves the segment, one hit longer, to the end of the arena, and the
//! old copy becomes garbage. Users come back in sessions, so the segment
//! after an active user's is often one an active user has just left. In a
//! [`CompactStore`] a segment moved by an appended hit also leaves 10
//! units of garbage (`SLACK_UNITS`) after it, which its next few hits
//! take without a move: on the benchmark's events, 1 compaction for
//! garbage instead of 15, and 28 % fewer instructions in the inserts
//! (BENCHMARKS-HISTORY.md). Compaction slides the live segments down in
//! one pass over the arena, when garbage (slack included) passes an eighth
//! of the arena, and once a day when old hits are dropped.

use std::marker::PhantomData;

use super::funnel::{Entry, Hit, Packed, Steps};
use crate::config::{EventMatch, FunnelDef, FunnelMode};

/// The offset of a user with no segment.
const NONE: u32 = u32::MAX;
/// Compaction waits for at least this much garbage (words).
const MIN_GARBAGE: usize = 1 << 16;

/// The entries of a store for every user of a shard, as 64-bit words.
#[derive(Debug, Clone)]
pub struct FunnelStore<E> {
    o: Offsets,
    arena: Vec<u64>,
    entry: PhantomData<E>,
}

impl<E> Default for FunnelStore<E> {
    fn default() -> Self {
        FunnelStore { o: Offsets::default(), arena: Vec::new(), entry: PhantomData }
    }
}

/// What both stores keep besides their arena: where each user's segment
/// starts, and the counts compaction goes by.
#[derive(Debug, Clone)]
pub struct Offsets {
    /// Per user, where their segment starts in the arena, or [`NONE`].
    at: Vec<u32>,
    /// Arena units (words, or 16-bit units) of segments no user points to.
    garbage: usize,
    /// Entries in live segments.
    entries: usize,
    /// No segment starts at or past this many units: offsets are 32 bits,
    /// [`NONE`] excepted (tests set less).
    limit: usize,
}

impl Default for Offsets {
    fn default() -> Self {
        Offsets { at: Vec::new(), garbage: 0, entries: 0, limit: NONE as usize }
    }
}

impl Offsets {
    /// Where the user's segment starts, if they have one.
    fn get(&self, uid: u32) -> Option<usize> {
        let at = self.at[uid as usize];
        (at != NONE).then_some(at as usize)
    }

    /// The offset of a segment appended to an arena of `len` units;
    /// `None` when the arena is full (some 2^32 units in one shard).
    fn end(&self, len: usize) -> Option<u32> {
        (len < self.limit).then_some(len as u32)
    }

    /// Whether garbage has passed `min` units and an eighth of the arena
    /// of `len` units.
    fn compaction_due(&self, len: usize, min: usize) -> bool {
        self.garbage >= min && self.garbage * 8 > len
    }

    /// The offsets of a snapshot's `lens` (hits per user) and `entries`
    /// (all users' hits in user order), each user's segment appended to
    /// `arena` by `write`; `None` when the counts do not add up, a user's
    /// hits are not sorted and distinct or fill no step, or the arena
    /// outgrows its offsets.
    fn rebuilt<E: Entry, W>(
        lens: &[u32],
        entries: &[E],
        arena: &mut Vec<W>,
        write: impl Fn(&mut Vec<W>, usize, &[E]),
    ) -> Option<Offsets> {
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        if total != entries.len() as u64 {
            return None;
        }
        let mut o = Offsets { at: Vec::with_capacity(lens.len()), entries: entries.len(), ..Offsets::default() };
        let mut from = 0;
        for (u, &len) in lens.iter().enumerate() {
            let user = &entries[from..from + len as usize];
            from += user.len();
            if user.is_empty() {
                o.at.push(NONE);
                continue;
            }
            if !user.windows(2).all(|w| w[0] < w[1]) || user.iter().any(|h| h.mask() == 0) {
                return None;
            }
            o.at.push(u32::try_from(arena.len()).ok().filter(|&offset| offset != NONE)?);
            write(arena, u, user);
        }
        Some(o)
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
        assert!(std::mem::size_of::<E>().is_multiple_of(8) && std::mem::align_of::<E>() <= 8);
        std::mem::size_of::<E>() / 8
    };

    /// Heap bytes held (offsets and the arena's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.o.at.capacity() * 4 + self.arena.capacity() * 8
    }

    fn span(&self, uid: u32) -> Option<(usize, usize)> {
        self.o.get(uid).map(|at| (at, header_parts(self.arena[at]).1))
    }

    /// The user's hits, sorted.
    pub fn hits(&self, uid: u32) -> &[E] {
        match self.span(uid) {
            None => &[],
            Some((at, len)) => bytemuck::cast_slice(&self.arena[at + 1..at + 1 + len * Self::WORDS]),
        }
    }

    /// Adds a hit; false when the user has it already (the engine goes
    /// through [`Segments::insert`]).
    #[cfg(test)]
    pub fn insert_hit(&mut self, uid: u32, hit: E) -> bool {
        match self.hits(uid).binary_search(&hit) {
            Ok(_) => false,
            Err(pos) => self.insert_at(uid, pos, hit),
        }
    }

    /// Inserts `entry` at `pos` of the user's hits, where a binary search
    /// of [`FunnelStore::hits`] that did not find it said it goes; false,
    /// changing nothing, when the arena is full even after a compaction.
    pub fn insert_at(&mut self, uid: u32, pos: usize, entry: E) -> bool {
        debug_assert!(self.hits(uid).binary_search(&entry) == Err(pos));
        let w = Self::WORDS;
        let u = uid as usize;
        let entry_words: &[u64] = bytemuck::cast_slice(std::slice::from_ref(&entry));
        // Counted first: a compaction below counts again, from the arena.
        self.o.entries += 1;
        let span = self.span(uid);
        if let Some((at, len)) = span {
            // The segment ends the arena, or garbage follows it (taken for
            // it here): it grows where it is.
            let end = at + 1 + len * w;
            let last = end == self.arena.len();
            if last || self.take_garbage(end) {
                if last {
                    self.arena.extend_from_slice(entry_words);
                }
                let words = &mut self.arena[at + 1..end + w];
                words.copy_within((pos * w)..(len * w), (pos + 1) * w);
                words[pos * w..(pos + 1) * w].copy_from_slice(entry_words);
                self.arena[at] = header(u, len + 1);
                return true;
            }
        }
        let (old, len) = span.unwrap_or((0, 0));
        let Some(offset) = self.o.end(self.arena.len()) else {
            self.o.entries -= 1;
            if self.o.garbage == 0 {
                return false;
            }
            self.compact(i64::MIN);
            return self.insert_at(uid, pos, entry);
        };
        self.arena.reserve(1 + (len + 1) * w);
        self.arena.push(header(u, len + 1));
        if span.is_some() {
            self.arena.extend_from_within(old + 1..old + 1 + pos * w);
        }
        self.arena.extend_from_slice(entry_words);
        if span.is_some() {
            self.arena.extend_from_within(old + 1 + pos * w..old + 1 + len * w);
            self.o.garbage += 1 + len * w;
        }
        self.o.at[u] = offset;
        if self.o.compaction_due(self.arena.len(), MIN_GARBAGE) {
            self.compact(i64::MIN);
        }
        true
    }

    /// Takes the first entry's words of the garbage segment at `at`, if
    /// there is one holding an entry, for the live segment before it to
    /// grow into: the rest stays garbage, under a header of one entry
    /// less.
    fn take_garbage(&mut self, at: usize) -> bool {
        let (uid, len) = header_parts(self.arena[at]);
        if self.o.at[uid] as usize == at || len == 0 {
            return false;
        }
        let w = Self::WORDS;
        self.arena[at + w] = header(uid, len - 1);
        self.o.garbage -= w;
        true
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
            if self.o.at[uid] as usize == read {
                let hits: &[E] = bytemuck::cast_slice(&self.arena[read + 1..read + size]);
                let old = hits.partition_point(|h| h.ts() < cutoff);
                let kept = len - old;
                if kept == 0 {
                    self.o.at[uid] = NONE;
                } else {
                    self.arena[write] = header(uid, kept);
                    self.arena.copy_within(read + 1 + old * w..read + size, write + 1);
                    self.o.at[uid] = write as u32;
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
        self.o.garbage = 0;
        self.o.entries = entries;
    }
}

/// What the engine and snapshots ask of a store: a user's hits copied
/// out, and one hit added to them.
pub trait Segments {
    /// The entry the store keeps.
    type Entry: Entry;

    /// Puts the user's hits, sorted, in `out` (cleared first).
    fn load(&self, uid: u32, out: &mut Vec<Self::Entry>);

    /// Makes `hits` the user's, where they are the user's hits (as
    /// [`Segments::load`] gave them) with `hits[pos]` inserted; false,
    /// changing nothing, when the store is full even after a compaction.
    fn insert(&mut self, uid: u32, hits: &[Self::Entry], pos: usize) -> bool;

    /// Hits per user (for snapshots).
    fn lens(&self) -> impl Iterator<Item = u32> + '_;

    /// The store of a snapshot's `lens` (hits per user) and `entries` (all
    /// users' hits in user order), as [`Segments::lens`] and
    /// [`Segments::load`] gave them; `None` when they do not add up or a
    /// user's hits are not sorted and distinct.
    fn from_parts(lens: &[u32], entries: &[Self::Entry]) -> Option<Self>
    where
        Self: Sized;

    /// Where users' segments start, and the arena's counts.
    fn offsets(&self) -> &Offsets;

    /// The same, to change.
    fn offsets_mut(&mut self) -> &mut Offsets;

    /// Adds a user with no entries.
    fn push_user(&mut self) {
        self.offsets_mut().at.push(NONE);
    }

    /// Users known.
    fn users(&self) -> usize {
        self.offsets().at.len()
    }

    /// Entries held by all users.
    fn entries(&self) -> usize {
        self.offsets().entries
    }
}

impl<E: Entry> Segments for FunnelStore<E> {
    type Entry = E;

    fn load(&self, uid: u32, out: &mut Vec<E>) {
        out.clear();
        out.extend_from_slice(self.hits(uid));
    }

    fn insert(&mut self, uid: u32, hits: &[E], pos: usize) -> bool {
        self.insert_at(uid, pos, hits[pos])
    }

    fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.o.at.len() as u32).map(|u| self.span(u).map_or(0, |(_, len)| len as u32))
    }

    fn from_parts(lens: &[u32], entries: &[E]) -> Option<Self> {
        let mut arena = Vec::new();
        arena.reserve_exact(lens.iter().filter(|&&l| l > 0).count() + entries.len() * Self::WORDS);
        let o = Offsets::rebuilt(lens, entries, &mut arena, |arena, u, user| {
            arena.push(header(u, user.len()));
            arena.extend_from_slice(bytemuck::cast_slice(user));
        })?;
        Some(FunnelStore { o, arena, entry: PhantomData })
    }

    fn offsets(&self) -> &Offsets {
        &self.o
    }

    fn offsets_mut(&mut self) -> &mut Offsets {
        &mut self.o
    }
}

/// The entries of the packed funnels for every user of a shard, in an
/// arena of 16-bit units with no padding. A segment is a header unit (see
/// `Head`; two more units hold the size of a segment of 8 191 units or
/// more), then the user's hits, each written against the one before it:
///
/// - the first in three units (its time in 42 bits above its steps in 6)
///   when its steps are among the store's first six, else as a [`Packed`]
///   in four;
/// - every later one as its milliseconds after the one before and its
///   steps: two units (top bit set, then 7 bits of steps and 24 of
///   milliseconds: under 4.6 hours) when they fit, else three (15 bits of
///   steps, then 32 of milliseconds: under 49.7 days).
///
/// A segment whose hits do not fit that (a gap of 2^32 ms or more, steps
/// above the 15th) holds [`Packed`] entries of four units each, which its
/// header says. A user of four entries, two of them minutes after the one
/// before, takes 22 bytes.
///
/// The header does not name the user: compaction finds each live
/// segment's owner by threading. It first writes each user's index over
/// the first two units of their segment, keeping those units in the
/// user's offset; sliding down, a segment without the garbage flag is
/// then a live one, whose owner its first two units name. Moves and
/// garbage otherwise work as in [`FunnelStore`] (the module docs).
#[derive(Debug, Clone, Default)]
pub struct CompactStore {
    o: Offsets,
    arena: Vec<u16>,
}

/// A segment header: its layout and its size past the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// Units past the header.
    body: usize,
    /// The hits are [`Packed`] entries, four units each.
    full: bool,
    /// The first hit takes three units, not four.
    short_first: bool,
}

/// In a header unit: the segment is garbage (no user points to it).
const DEAD: u16 = 1 << 15;
/// In a header unit: the segment holds [`Packed`] entries.
const FULL: u16 = 1 << 14;
/// In a header unit: the first entry takes three units.
const SHORT_FIRST: u16 = 1 << 13;
/// The header unit's size that says the size follows in two units.
const LONG_SIZE: u16 = SHORT_FIRST - 1;
/// In a later entry's first unit: the entry takes two units.
const SHORT: u16 = 1 << 15;
/// Compaction of a [`CompactStore`] waits for at least this much garbage
/// (units: as many bytes as [`MIN_GARBAGE`] words).
const MIN_GARBAGE_UNITS: usize = MIN_GARBAGE * 4;
/// Garbage left after a segment moved to the arena's end by an appended
/// entry: room for a few more (two or three units each).
const SLACK_UNITS: usize = 10;
/// Units of a [`Packed`] entry.
const QUAD: usize = 4;
/// Units of a first entry whose steps are among the first six: its time
/// in 42 bits above its steps in 6.
const SHORT_FIRST_UNITS: usize = 3;
/// The most users a compact store can thread (their index must leave the
/// garbage flag clear): the most one shard tracks (`max_users`).
pub const MAX_USERS: usize = 1 << 31;

impl Head {
    fn units(self) -> usize {
        header_units(self.body) + self.body
    }

    /// Units of the first entry.
    #[inline]
    fn first_units(self) -> usize {
        first_units(self.short_first)
    }
}

#[inline]
fn header_units(body: usize) -> usize {
    if body < usize::from(LONG_SIZE) { 1 } else { 3 }
}

/// The units a later entry of `delta` milliseconds and `mask` takes in a
/// segment of deltas, if it fits one.
#[inline]
fn later_units(delta: i64, mask: u32) -> Option<usize> {
    if delta < 1 << 24 && mask < 1 << 7 {
        Some(2)
    } else if delta <= i64::from(u32::MAX) && mask < 1 << 15 {
        Some(3)
    } else {
        None
    }
}

fn short_first(first: Packed) -> bool {
    first.mask() < 1 << 6
}

/// Units of a first entry, of three when `short`.
#[inline]
fn first_units(short: bool) -> usize {
    if short { SHORT_FIRST_UNITS } else { QUAD }
}

/// The units of `hits` (sorted, not empty) as a segment of deltas, if they
/// fit one.
fn delta_body(hits: &[Packed]) -> Option<usize> {
    let first = first_units(short_first(hits[0]));
    hits.windows(2).try_fold(first, |units, w| Some(units + later_units(w[1].ts() - w[0].ts(), w[1].mask())?))
}

fn read_quad(units: &[u16]) -> u64 {
    units[..QUAD].iter().rev().fold(0, |w, &u| w << 16 | u64::from(u))
}

fn push_quad(arena: &mut Vec<u16>, w: u64) {
    arena.extend_from_slice(&[w as u16, (w >> 16) as u16, (w >> 32) as u16, (w >> 48) as u16]);
}

/// A later entry of `delta` and `mask`, in the form [`later_units`] says
/// (it fits one): its units, and how many of them it takes.
#[inline]
fn later_entry(delta: i64, mask: u32) -> ([u16; 3], usize) {
    let d = delta as u32;
    if later_units(delta, mask) == Some(2) {
        ([SHORT | (mask as u16) << 8 | (d >> 16) as u16, d as u16, 0], 2)
    } else {
        ([mask as u16, d as u16, (d >> 16) as u16], 3)
    }
}

/// Appends a later entry of `delta` and `mask` (see [`later_entry`]).
#[inline]
fn push_later(arena: &mut Vec<u16>, delta: i64, mask: u32) {
    let (entry, n) = later_entry(delta, mask);
    arena.extend_from_slice(&entry[..n]);
}

/// Appends a segment's first entry, in three units when `short`.
fn push_first(arena: &mut Vec<u16>, first: Packed, short: bool) {
    if short {
        let w = (first.ts() as u64) << 6 | u64::from(first.mask());
        arena.extend_from_slice(&[w as u16, (w >> 16) as u16, (w >> 32) as u16]);
    } else {
        push_quad(arena, first.raw());
    }
}

/// The first entry of a segment's body, read from the body's start (a
/// full segment's is a quad: `write` never marks one short first).
#[inline]
fn read_first(body: &[u16], head: Head) -> Packed {
    if head.short_first {
        let w = u64::from(body[0]) | u64::from(body[1]) << 16 | u64::from(body[2]) << 32;
        Packed::from_hit(Hit { ts: (w >> 6) as i64, mask: (w & 0x3f) as u32, tag: 0 })
    } else {
        Packed::from_raw(read_quad(body))
    }
}

/// The hits of a segment's body into `out`.
fn decode(body: &[u16], head: Head, out: &mut Vec<Packed>) {
    if head.full {
        out.extend(body.chunks_exact(QUAD).map(|q| Packed::from_raw(read_quad(q))));
        return;
    }
    out.reserve(body.len() / 2);
    let first = read_first(body, head);
    out.push(first);
    let (mut ts, mut rest) = (first.ts(), &body[head.first_units()..]);
    // Slice patterns: one length test an entry, no index checks.
    loop {
        let (delta, mask) = match *rest {
            [u, lo, ref tail @ ..] if u & SHORT != 0 => {
                rest = tail;
                (i64::from(u & 0xff) << 16 | i64::from(lo), u32::from(u >> 8 & 0x7f))
            }
            [mask, lo, hi, ref tail @ ..] => {
                rest = tail;
                (i64::from(lo) | i64::from(hi) << 16, u32::from(mask))
            }
            _ => break,
        };
        ts += delta;
        out.push(Packed::from_hit(Hit { ts, mask, tag: 0 }));
    }
}

/// Entries in a segment's body (for snapshots and counts).
fn entry_count(body: &[u16], head: Head) -> usize {
    if head.full {
        return body.len() / QUAD;
    }
    let (mut at, mut count) = (head.first_units(), 1);
    while at < body.len() {
        at += if body[at] & SHORT != 0 { 2 } else { 3 };
        count += 1;
    }
    count
}

impl CompactStore {
    /// Heap bytes held (offsets and the arena's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.o.at.capacity() * 4 + self.arena.capacity() * 2
    }

    #[inline]
    fn head_at(&self, at: usize) -> Head {
        let unit = self.arena[at];
        let size = unit & LONG_SIZE;
        let body = if size == LONG_SIZE {
            usize::from(self.arena[at + 1]) | usize::from(self.arena[at + 2]) << 16
        } else {
            usize::from(size)
        };
        Head { body, full: unit & FULL != 0, short_first: unit & SHORT_FIRST != 0 }
    }

    fn head(&self, uid: u32) -> Option<(usize, Head)> {
        self.o.get(uid).map(|at| (at, self.head_at(at)))
    }

    fn body(&self, at: usize, head: Head) -> &[u16] {
        &self.arena[at + header_units(head.body)..at + head.units()]
    }

    /// Writes the header of a segment of `head` at `at`, where one of the
    /// same width was or is to be.
    fn set_header(arena: &mut [u16], at: usize, head: Head) {
        let flags = if head.full { FULL } else { 0 } | if head.short_first { SHORT_FIRST } else { 0 };
        match u16::try_from(head.body).ok().filter(|&b| b < LONG_SIZE) {
            Some(short) => arena[at] = flags | short,
            None => arena[at..at + 3].copy_from_slice(&[flags | LONG_SIZE, head.body as u16, (head.body >> 16) as u16]),
        }
    }

    /// Appends the segment of `hits` (sorted, distinct, not empty).
    fn write(arena: &mut Vec<u16>, hits: &[Packed]) {
        let deltas = delta_body(hits);
        let head = Head {
            body: deltas.unwrap_or(hits.len() * QUAD),
            full: deltas.is_none(),
            short_first: deltas.is_some() && short_first(hits[0]),
        };
        let at = arena.len();
        arena.resize(at + header_units(head.body), 0);
        Self::set_header(arena, at, head);
        arena.reserve(head.body);
        if head.full {
            hits.iter().for_each(|h| push_quad(arena, h.raw()));
            return;
        }
        push_first(arena, hits[0], head.short_first);
        for w in hits.windows(2) {
            push_later(arena, w[1].ts() - w[0].ts(), w[1].mask());
        }
        debug_assert_eq!(arena.len(), at + head.units());
    }

    /// Takes the first `units` of the garbage segment at `at`, if there is
    /// one that large, for the live segment before it to grow into: what
    /// is left stays garbage under a header of its own. Growing leaves no
    /// garbage where a move would leave the whole segment.
    fn take_garbage(&mut self, at: usize, units: usize) -> bool {
        if self.arena[at] & DEAD == 0 {
            return false;
        }
        let Some(rest) = self.head_at(at).units().checked_sub(units) else {
            return false;
        };
        if rest > 0 {
            // A garbage segment of `rest` units, if a header fits it.
            let fits = |&body: &usize| header_units(body) + body == rest;
            let Some(body) = [rest - 1, rest.saturating_sub(3)].into_iter().find(fits) else {
                return false;
            };
            let head = Head { body, full: false, short_first: false };
            Self::set_header(&mut self.arena, at + units, head);
            self.arena[at + units] |= DEAD;
        }
        self.o.garbage -= units;
        true
    }

    /// Appends [`SLACK_UNITS`] of garbage, for the segment before it to
    /// grow into: the next few entries appended to a moved segment then
    /// take them instead of moving it again.
    fn push_slack(&mut self) {
        let at = self.arena.len();
        self.arena.resize(at + SLACK_UNITS, 0);
        let head = Head { body: SLACK_UNITS - 1, full: false, short_first: false };
        Self::set_header(&mut self.arena, at, head);
        self.arena[at] |= DEAD;
        self.o.garbage += SLACK_UNITS;
    }

    /// Marks the segment at `at` garbage.
    fn discard(&mut self, at: usize, head: Head) {
        self.arena[at] |= DEAD;
        self.o.garbage += head.units();
    }

    /// Makes `hits` (sorted and distinct, steps never empty) the user's.
    #[cfg(test)]
    fn save(&mut self, uid: u32, hits: &[Packed]) -> bool {
        let old_len = self.head(uid).map_or(0, |(at, h)| entry_count(self.body(at, h), h));
        self.replace(uid, hits, old_len)
    }

    /// Makes `hits` (sorted and distinct, steps never empty) the user's,
    /// who had `old_len` of them; false, changing nothing, when the arena
    /// is full even after a compaction.
    fn replace(&mut self, uid: u32, hits: &[Packed], old_len: usize) -> bool {
        let old = self.head(uid);
        match old {
            Some((at, head)) if at + head.units() == self.arena.len() => {
                // The segment ends the arena: rewrite it where it is.
                self.arena.truncate(at);
                if hits.is_empty() {
                    self.o.at[uid as usize] = NONE;
                } else {
                    Self::write(&mut self.arena, hits);
                }
            }
            _ => {
                let offset = match self.o.end(self.arena.len()) {
                    Some(offset) => offset,
                    None if hits.is_empty() => NONE,
                    None if self.o.garbage == 0 => return false,
                    None => {
                        self.compact(i64::MIN);
                        return self.replace(uid, hits, old_len);
                    }
                };
                if let Some((at, head)) = old {
                    self.discard(at, head);
                }
                self.o.entries = self.o.entries + hits.len() - old_len;
                if hits.is_empty() {
                    self.o.at[uid as usize] = NONE;
                    return true;
                }
                Self::write(&mut self.arena, hits);
                self.o.at[uid as usize] = offset;
                if self.o.compaction_due(self.arena.len(), MIN_GARBAGE_UNITS) {
                    self.compact(i64::MIN);
                }
                return true;
            }
        }
        self.o.entries = self.o.entries + hits.len() - old_len;
        true
    }

    /// Drops hits before `cutoff` (epoch ms), and the garbage, in one pass.
    pub fn prune(&mut self, cutoff: i64) {
        self.compact(cutoff);
    }

    fn compact(&mut self, cutoff: i64) {
        // Threading: each live segment's first two units go to its user's
        // offset, and the user's index takes their place.
        for (u, at) in self.o.at.iter_mut().enumerate() {
            if *at != NONE {
                let s = *at as usize;
                *at = u32::from(self.arena[s]) | u32::from(self.arena[s + 1]) << 16;
                self.arena[s..s + 2].copy_from_slice(&[(u >> 16) as u16, u as u16]);
            }
        }
        let (mut read, mut write, mut dropped) = (0, 0, 0);
        let (mut hits, mut segment) = (Vec::new(), Vec::new());
        // Consecutive segments that slide down as they are move in one
        // copy: where the run starts in the arena, and where it goes.
        let mut run: Option<(usize, usize)> = None;
        while read < self.arena.len() {
            let unit = self.arena[read];
            let owner = (unit & DEAD == 0).then(|| usize::from(unit) << 16 | usize::from(self.arena[read + 1]));
            if let Some(u) = owner {
                let kept = self.o.at[u];
                self.arena[read..read + 2].copy_from_slice(&[kept as u16, (kept >> 16) as u16]);
            }
            let head = self.head_at(read);
            let size = head.units();
            // A compaction for garbage alone (no cutoff) keeps every live
            // segment whole, without reading its first hit.
            if let Some(u) = owner
                && (cutoff == i64::MIN || self.first_ts(read, head) >= cutoff)
            {
                run.get_or_insert((read, write));
                self.o.at[u] = write as u32;
                write += size;
                read += size;
                continue;
            }
            if let Some((from, to)) = run.take() {
                self.arena.copy_within(from..read, to);
            }
            if let Some(u) = owner {
                // Hits to drop: the rest is written anew.
                hits.clear();
                decode(self.body(read, head), head, &mut hits);
                let old = hits.partition_point(|h| h.ts() < cutoff);
                dropped += old;
                if old == hits.len() {
                    self.o.at[u] = NONE;
                } else {
                    // Fewer hits: never more units than the segment had,
                    // so written where it goes.
                    segment.clear();
                    Self::write(&mut segment, &hits[old..]);
                    debug_assert!(segment.len() <= size);
                    self.arena[write..write + segment.len()].copy_from_slice(&segment);
                    self.o.at[u] = write as u32;
                    write += segment.len();
                }
            }
            read += size;
        }
        if let Some((from, to)) = run {
            self.arena.copy_within(from..read, to);
        }
        self.arena.truncate(write);
        if self.arena.capacity() > 2 * write.max(MIN_GARBAGE_UNITS) {
            self.arena.shrink_to(write + write / 4);
        }
        self.o.garbage = 0;
        self.o.entries -= dropped;
    }

    /// The time of the first hit of the segment at `at`.
    fn first_ts(&self, at: usize, head: Head) -> i64 {
        read_first(&self.arena[at + header_units(head.body)..], head).ts()
    }
}

impl Segments for CompactStore {
    type Entry = Packed;

    fn insert(&mut self, uid: u32, hits: &[Packed], pos: usize) -> bool {
        // The user's hits before: all of `hits` but the new one.
        let Some((at, head)) = self.head(uid) else {
            return self.replace(uid, hits, hits.len() - 1);
        };
        let new = hits[pos];
        let later = match pos.checked_sub(1) {
            Some(prev) if pos + 1 == hits.len() && !head.full => later_units(new.ts() - hits[prev].ts(), new.mask()),
            _ => None,
        };
        let Some(units) = later.filter(|&n| header_units(head.body + n) == header_units(head.body)) else {
            return self.replace(uid, hits, hits.len() - 1);
        };
        // The usual case: a later entry appended to a segment of deltas,
        // where the segment is, when it ends the arena or garbage follows
        // it, or at the end.
        let size = head.units();
        let moved = !(at + size == self.arena.len() || self.take_garbage(at + size, units));
        let at = if moved {
            let Some(offset) = self.o.end(self.arena.len()) else {
                if self.o.garbage == 0 {
                    return false;
                }
                self.compact(i64::MIN);
                return self.insert(uid, hits, pos);
            };
            self.arena.reserve(size + units + SLACK_UNITS);
            self.arena.extend_from_within(at..at + size);
            self.discard(at, head);
            self.o.at[uid as usize] = offset;
            offset as usize
        } else {
            at
        };
        // After the segment: the arena's end, or garbage now its own.
        let (entry, n) = later_entry(new.ts() - hits[pos - 1].ts(), new.mask());
        let end = at + size;
        if end == self.arena.len() {
            self.arena.extend_from_slice(&entry[..n]);
        } else {
            self.arena[end..end + n].copy_from_slice(&entry[..n]);
        }
        Self::set_header(&mut self.arena, at, Head { body: head.body + units, ..head });
        if moved {
            self.push_slack();
        }
        self.o.entries += 1;
        if self.o.compaction_due(self.arena.len(), MIN_GARBAGE_UNITS) {
            self.compact(i64::MIN);
        }
        true
    }

    fn load(&self, uid: u32, out: &mut Vec<Packed>) {
        out.clear();
        if let Some((at, head)) = self.head(uid) {
            decode(self.body(at, head), head, out);
        }
    }

    fn lens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.o.at.len() as u32).map(|u| self.head(u).map_or(0, |(at, h)| entry_count(self.body(at, h), h) as u32))
    }

    fn from_parts(lens: &[u32], entries: &[Packed]) -> Option<Self> {
        if lens.len() > MAX_USERS {
            return None;
        }
        let mut arena = Vec::new();
        arena.reserve_exact(lens.iter().filter(|&&l| l > 0).count() * 4 + entries.len() * 2);
        let o = Offsets::rebuilt(lens, entries, &mut arena, |arena, _, user| Self::write(arena, user))?;
        Some(CompactStore { o, arena })
    }

    fn offsets(&self) -> &Offsets {
        &self.o
    }

    fn offsets_mut(&mut self) -> &mut Offsets {
        &mut self.o
    }

    fn push_user(&mut self) {
        // Past 2^31 users of one shard there is no way on: compaction
        // writes a user's index where the garbage flag must stay clear.
        // The configuration's `max_users` stops the engine before.
        assert!(self.o.at.len() < MAX_USERS, "a funnel store outgrew 2^31 users in one shard");
        self.o.at.push(NONE);
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

/// A store in the entry layout its funnels allow: [`Packed`] entries
/// (kept compact) unless distinct events at one millisecond can matter
/// (see [`Packed`]).
#[derive(Debug, Clone)]
pub enum Store {
    /// Hits without tags: 4 to 8 bytes each (see [`CompactStore`]).
    Packed(CompactStore),
    /// Hits with tags, 16 bytes an entry.
    Wide(FunnelStore<Hit>),
}

impl Store {
    /// Lowers the arena's limit (tests of a full store).
    #[cfg(test)]
    pub fn limit_arena(&mut self, units: usize) {
        match self {
            Store::Packed(s) => s.o.limit = units,
            Store::Wide(s) => s.o.limit = units,
        }
    }

    /// An empty store, with tags or without.
    pub fn new(wide: bool) -> Self {
        if wide { Store::Wide(FunnelStore::default()) } else { Store::Packed(CompactStore::default()) }
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

    /// How full the arena is: its units over those its offsets can reach
    /// (past 1, hits that need room are refused).
    pub fn fill(&self) -> f64 {
        let (len, o) = match self {
            Store::Packed(s) => (s.arena.len(), &s.o),
            Store::Wide(s) => (s.arena.len(), &s.o),
        };
        if o.limit == 0 { 1.0 } else { len as f64 / o.limit as f64 }
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
}
