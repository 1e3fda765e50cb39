//! How a [`super::CompactStore`] segment is laid out in 16-bit units: its
//! header, a first entry of three or four units, later ones of two or
//! three written against the one before.

use super::MIN_GARBAGE;
use crate::engine::funnel::{Entry, Hit, Packed};

/// A segment header: its layout and its size past the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    /// Units past the header.
    pub(super) body: usize,
    /// The hits are [`Packed`] entries, four units each.
    pub(super) full: bool,
    /// The first hit takes three units, not four.
    pub(super) short_first: bool,
}

/// In a header unit: the segment is garbage (no user points to it).
pub(super) const DEAD: u16 = 1 << 15;
/// In a header unit: the segment holds [`Packed`] entries.
pub(super) const FULL: u16 = 1 << 14;
/// In a header unit: the first entry takes three units.
pub(super) const SHORT_FIRST: u16 = 1 << 13;
/// The header unit's size that says the size follows in two units.
pub(super) const LONG_SIZE: u16 = SHORT_FIRST - 1;
/// In a later entry's first unit: the entry takes two units.
pub(super) const SHORT: u16 = 1 << 15;
/// Compaction of a [`CompactStore`] waits for at least this much garbage
/// (units: as many bytes as [`MIN_GARBAGE`] words).
pub(super) const MIN_GARBAGE_UNITS: usize = MIN_GARBAGE * 4;
/// Garbage left after a segment moved to the arena's end by an appended
/// entry: room for a few more (two or three units each).
pub(super) const SLACK_UNITS: usize = 10;
/// Units of a [`Packed`] entry.
pub(super) const QUAD: usize = 4;
/// Units of a first entry whose steps are among the first six: its time
/// in 42 bits above its steps in 6.
pub(super) const SHORT_FIRST_UNITS: usize = 3;

impl Head {
    pub(super) fn units(self) -> usize {
        header_units(self.body) + self.body
    }

    /// Units of the first entry.
    #[inline]
    fn first_units(self) -> usize {
        first_units(self.short_first)
    }
}

#[inline]
pub(super) fn header_units(body: usize) -> usize {
    if body < usize::from(LONG_SIZE) { 1 } else { 3 }
}

/// The units a later entry of `delta` milliseconds and `mask` takes in a
/// segment of deltas, if it fits one.
#[inline]
pub(super) fn later_units(delta: i64, mask: u32) -> Option<usize> {
    if delta < 1 << 24 && mask < 1 << 7 {
        Some(2)
    } else if delta <= i64::from(u32::MAX) && mask < 1 << 15 {
        Some(3)
    } else {
        None
    }
}

pub(super) fn short_first(first: Packed) -> bool {
    first.mask() < 1 << 6
}

/// Units of a first entry, of three when `short`.
#[inline]
pub(super) fn first_units(short: bool) -> usize {
    if short { SHORT_FIRST_UNITS } else { QUAD }
}

/// The units of `hits` (sorted, not empty) as a segment of deltas, if they
/// fit one.
pub(super) fn delta_body(hits: &[Packed]) -> Option<usize> {
    let first = first_units(short_first(hits[0]));
    hits.windows(2).try_fold(first, |units, w| Some(units + later_units(w[1].ts() - w[0].ts(), w[1].mask())?))
}

pub(super) fn read_quad(units: &[u16]) -> u64 {
    units[..QUAD].iter().rev().fold(0, |w, &u| w << 16 | u64::from(u))
}

pub(super) fn push_quad(arena: &mut Vec<u16>, w: u64) {
    arena.extend_from_slice(&[w as u16, (w >> 16) as u16, (w >> 32) as u16, (w >> 48) as u16]);
}

/// A later entry of `delta` and `mask`, in the form [`later_units`] says
/// (it fits one): its units, and how many of them it takes.
#[inline]
pub(super) fn later_entry(delta: i64, mask: u32) -> ([u16; 3], usize) {
    let d = delta as u32;
    if later_units(delta, mask) == Some(2) {
        ([SHORT | (mask as u16) << 8 | (d >> 16) as u16, d as u16, 0], 2)
    } else {
        ([mask as u16, d as u16, (d >> 16) as u16], 3)
    }
}

/// Appends a later entry of `delta` and `mask` (see [`later_entry`]).
#[inline]
pub(super) fn push_later(arena: &mut Vec<u16>, delta: i64, mask: u32) {
    let (entry, n) = later_entry(delta, mask);
    arena.extend_from_slice(&entry[..n]);
}

/// Appends a segment's first entry, in three units when `short`.
pub(super) fn push_first(arena: &mut Vec<u16>, first: Packed, short: bool) {
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
pub(super) fn read_first(body: &[u16], head: Head) -> Packed {
    if head.short_first {
        let w = u64::from(body[0]) | u64::from(body[1]) << 16 | u64::from(body[2]) << 32;
        Packed::from_hit(Hit { ts: (w >> 6) as i64, mask: (w & 0x3f) as u32, tag: 0 })
    } else {
        Packed::from_raw(read_quad(body))
    }
}

/// The hits of a segment's body into `out`.
pub(super) fn decode(body: &[u16], head: Head, out: &mut Vec<Packed>) {
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
pub(super) fn entry_count(body: &[u16], head: Head) -> usize {
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
