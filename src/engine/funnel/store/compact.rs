//! [`CompactStore`]: [`Packed`] entries, each written against the one
//! before it in two to four 16-bit units (the encoding is in
//! [`super::encoding`]).

use super::encoding::{
    DEAD, FULL, Head, LONG_SIZE, MIN_GARBAGE_UNITS, QUAD, SHORT_FIRST, SLACK_UNITS, decode, delta_body, entry_count,
    header_units, later_entry, later_units, push_first, push_later, push_quad, read_first, short_first,
};
use super::{NONE, Offsets, Segments};
use crate::engine::def::MAX_USERS;
use crate::engine::funnel::{Entry, Packed};

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
/// garbage otherwise work as in [`super::FunnelStore`] (the module docs).
#[derive(Debug, Clone, Default)]
pub struct CompactStore {
    pub(super) o: Offsets,
    pub(super) arena: Vec<u16>,
}

impl CompactStore {
    /// Heap bytes held (offsets and the arena's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.o.at.capacity() * 4 + self.arena.capacity() * 2
    }

    #[inline]
    pub(super) fn head_at(&self, at: usize) -> Head {
        let unit = self.arena[at];
        let size = unit & LONG_SIZE;
        let body = if size == LONG_SIZE {
            usize::from(self.arena[at + 1]) | usize::from(self.arena[at + 2]) << 16
        } else {
            usize::from(size)
        };
        Head { body, full: unit & FULL != 0, short_first: unit & SHORT_FIRST != 0 }
    }

    pub(super) fn head(&self, uid: u32) -> Option<(usize, Head)> {
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
    pub(super) fn save(&mut self, uid: u32, hits: &[Packed]) -> bool {
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

    pub(super) fn compact(&mut self, cutoff: i64) {
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
