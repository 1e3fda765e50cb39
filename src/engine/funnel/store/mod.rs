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
//! take without a move, which spares most compactions for garbage and
//! much of the inserts' work (BENCHMARKS-HISTORY.md). Compaction slides the live segments down in
//! one pass over the arena, when garbage (slack included) passes an eighth
//! of the arena, and once a day when old hits are dropped.

mod compact;
mod encoding;
mod layout;
mod tagged;
#[cfg(test)]
mod tests;

use super::{Entry, Hit, Packed};

/// The offset of a user with no segment.
const NONE: u32 = u32::MAX;
/// Compaction waits for at least this much garbage (words).
const MIN_GARBAGE: usize = 1 << 16;

pub use compact::CompactStore;
pub use layout::Layout;
pub use tagged::FunnelStore;

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
