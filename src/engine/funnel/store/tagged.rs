//! [`FunnelStore`]: entries with tags, as 64-bit words after a header word
//! naming the user and the count.

use std::marker::PhantomData;

use super::{MIN_GARBAGE, NONE, Offsets, Segments};
use crate::engine::funnel::Entry;

/// The entries of a store for every user of a shard, as 64-bit words.
#[derive(Debug, Clone)]
pub struct FunnelStore<E> {
    pub(super) o: Offsets,
    pub(super) arena: Vec<u64>,
    entry: PhantomData<E>,
}

impl<E> Default for FunnelStore<E> {
    fn default() -> Self {
        FunnelStore { o: Offsets::default(), arena: Vec::new(), entry: PhantomData }
    }
}

fn header(uid: usize, len: usize) -> u64 {
    (uid as u64) << 32 | len as u64
}

pub(super) fn header_parts(word: u64) -> (usize, usize) {
    ((word >> 32) as usize, (word & 0xffff_ffff) as usize)
}

impl<E: Entry> FunnelStore<E> {
    pub(super) const WORDS: usize = {
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

    pub(super) fn compact(&mut self, cutoff: i64) {
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
