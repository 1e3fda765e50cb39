//! User ids interned into one byte arena: a user costs its id's bytes, a
//! length byte, a 4-byte slot of an open-addressing table and an eighth
//! of a 4-byte block offset, with no allocation of their own, and a
//! snapshot stores the arena as it is.

use std::ops::Range;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Ids a block offset covers.
const BLOCK: usize = 32;
/// The length byte of an id of 255 bytes or more, whose length is kept
/// apart.
const LONG: u8 = u8::MAX;

/// Ids of one shard's users, numbered densely from 0 in order of arrival.
#[derive(Debug, Clone, Default)]
pub struct UserIds {
    arena: Arena,
    /// Indexes of ids, found by the id's hash.
    table: HashTable<u32>,
}

/// Where the ids' bytes lie: id i starts where its block starts plus the
/// lengths of the ids before it in the block (at most 31 lengths to add,
/// eight at a time).
#[derive(Debug, Clone, Default)]
struct Arena {
    /// Every id's bytes, one after the other.
    bytes: Vec<u8>,
    /// Per id, its length, or [`LONG`].
    lens: Vec<u8>,
    /// Per block of [`BLOCK`] ids, where its first id starts in `bytes`.
    blocks: Vec<u32>,
    /// (index, length) of the ids of [`LONG`] bytes or more, by index.
    long: Vec<(u32, u32)>,
}

impl Arena {
    fn len_of(&self, i: usize) -> usize {
        match self.lens[i] {
            LONG => self.long[self.long.partition_point(|&(j, _)| (j as usize) < i)].1 as usize,
            len => usize::from(len),
        }
    }

    /// Where id i lies in `bytes`.
    #[inline]
    fn span(&self, i: u32) -> Range<usize> {
        let i = i as usize;
        let from = i - i % BLOCK;
        let before = &self.lens[from..i];
        let mut start = self.blocks[i / BLOCK] as usize + byte_sum(&self.lens, from, i);
        if !self.long.is_empty() && before.contains(&LONG) {
            let first = self.long.partition_point(|&(j, _)| (j as usize) < from);
            let last = self.long.partition_point(|&(j, _)| (j as usize) < i);
            start += self.long[first..last].iter().map(|&(_, len)| len as usize - usize::from(LONG)).sum::<usize>();
        }
        start..start + self.len_of(i)
    }

    #[inline]
    fn id(&self, i: u32) -> &[u8] {
        &self.bytes[self.span(i)]
    }

    /// Appends id number `i` (the next); `None` when the arena is full.
    fn push(&mut self, i: u32, id: &[u8]) -> Option<()> {
        let start = u32::try_from(self.bytes.len()).ok()?;
        u32::try_from(self.bytes.len() + id.len()).ok()?;
        self.push_len(i, start, id.len());
        self.bytes.extend_from_slice(id);
        Some(())
    }

    /// The length of id number `i` (the next), which starts at `start`.
    fn push_len(&mut self, i: u32, start: u32, len: usize) {
        if (i as usize).is_multiple_of(BLOCK) {
            self.blocks.push(start);
        }
        match u8::try_from(len).ok().filter(|&l| l != LONG) {
            Some(len) => self.lens.push(len),
            None => {
                self.lens.push(LONG);
                self.long.push((i, len as u32));
            }
        }
    }
}

/// The sum of a word's eight bytes: added in pairs into 16-bit lanes,
/// which one multiplication adds up.
#[inline]
fn word_sum(w: u64) -> usize {
    const LOW: u64 = 0x00ff_00ff_00ff_00ff;
    let pairs = (w & LOW) + (w >> 8 & LOW);
    (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize
}

/// The sum of `bytes[from..to]`, eight at a time; the last few bytes are
/// read as a word and masked when `bytes` reaches far enough.
#[inline]
fn byte_sum(bytes: &[u8], from: usize, to: usize) -> usize {
    let words = bytes[from..to].chunks_exact(8);
    let rest = words.remainder();
    let sum: usize = words.filter_map(|w| w.first_chunk()).map(|&w| word_sum(u64::from_le_bytes(w))).sum();
    if rest.is_empty() {
        return sum;
    }
    match bytes[to - rest.len()..].first_chunk::<8>() {
        Some(&w) => sum + word_sum(u64::from_le_bytes(w) & (u64::MAX >> (64 - 8 * rest.len()))),
        None => sum + rest.iter().map(|&b| usize::from(b)).sum::<usize>(),
    }
}

/// Why [`UserIds::from_parts`] refused its input.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    /// The offsets do not describe the bytes.
    #[error("user id offsets do not fit the id bytes")]
    BadOffsets,
    /// Two users have one id.
    #[error("a user id appears twice")]
    Duplicate,
}

fn hash(id: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x7573_6572_5f69_6473).hash_one(id)
}

impl UserIds {
    /// Ids in the table.
    pub fn len(&self) -> usize {
        self.arena.lens.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.arena.lens.is_empty()
    }

    /// The index of `id`, if it is known.
    pub fn get(&self, id: &str) -> Option<u32> {
        let arena = &self.arena;
        self.table.find(hash(id.as_bytes()), |&i| arena.id(i) == id.as_bytes()).copied()
    }

    /// Adds a new id (not already present: check with [`UserIds::get`]) and
    /// returns its index; `None` when the arena is full (4 GiB of ids).
    pub fn push(&mut self, id: &str) -> Option<u32> {
        let i = u32::try_from(self.len()).ok().filter(|&i| i != u32::MAX)?;
        self.arena.push(i, id.as_bytes())?;
        let arena = &self.arena;
        self.table.insert_unique(hash(id.as_bytes()), i, |&j| hash(arena.id(j)));
        Some(i)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let a = &self.arena;
        a.bytes.capacity()
            + a.lens.capacity()
            + a.blocks.capacity() * 4
            + a.long.capacity() * 8
            + self.table.capacity() * 5
    }

    /// The arena, as a snapshot stores it.
    pub fn bytes(&self) -> &[u8] {
        &self.arena.bytes
    }

    /// Where each id ends in [`UserIds::bytes`] (it starts where the one
    /// before ends), as a snapshot stores them.
    pub fn ends(&self) -> impl Iterator<Item = u32> + '_ {
        let mut long = self.arena.long.iter().map(|&(_, len)| len);
        self.arena.lens.iter().scan(0u32, move |end, &len| {
            *end += match len {
                LONG => long.next().unwrap_or(0),
                len => u32::from(len),
            };
            Some(*end)
        })
    }

    /// The table of a snapshot's arena and offsets, checked.
    pub fn from_parts(bytes: Vec<u8>, ends: Vec<u32>) -> Result<Self, IdsError> {
        let mut arena = Arena::default();
        arena.lens.reserve_exact(ends.len());
        arena.blocks.reserve_exact(ends.len().div_ceil(BLOCK));
        let mut start = 0u32;
        for (i, &end) in ends.iter().enumerate() {
            let id = bytes.get(start as usize..end as usize).ok_or(IdsError::BadOffsets)?;
            // Lengths and blocks: the bytes are taken whole below.
            arena.push_len(i as u32, start, id.len());
            start = end;
        }
        if start as usize != bytes.len() {
            return Err(IdsError::BadOffsets);
        }
        arena.bytes = bytes;
        let mut table = HashTable::with_capacity(ends.len());
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            // The ends are at hand: no sums of lengths but for a match.
            let (id, i) = (&arena.bytes[start..end as usize], i as u32);
            start = end as usize;
            match table.entry(hash(id), |&j| arena.id(j) == id, |&j| hash(arena.id(j))) {
                Entry::Occupied(_) => return Err(IdsError::Duplicate),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        Ok(UserIds { arena, table })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_and_finds() {
        let mut ids = UserIds::default();
        assert_eq!(ids.get("a"), None);
        assert_eq!(ids.push("a"), Some(0));
        assert_eq!(ids.push(""), Some(1));
        assert_eq!(ids.push("user-ü"), Some(2));
        for i in 0..1000 {
            ids.push(&format!("u{i}"));
        }
        assert_eq!(ids.get("a"), Some(0));
        assert_eq!(ids.get(""), Some(1));
        assert_eq!(ids.get("user-ü"), Some(2));
        assert_eq!(ids.get("u999"), Some(1002));
        assert_eq!(ids.get("u1000"), None);
        assert_eq!(ids.arena.id(2), "user-ü".as_bytes());

        let back = UserIds::from_parts(ids.bytes().to_vec(), ids.ends().collect()).expect("valid parts");
        assert_eq!(back.len(), 1003);
        assert_eq!(back.get("u500"), Some(503));
        assert_eq!(back.get("user-ü"), Some(2));
    }

    #[test]
    fn refuses_bad_parts() {
        assert!(matches!(UserIds::from_parts(b"ab".to_vec(), vec![1]), Err(IdsError::BadOffsets)));
        assert!(matches!(UserIds::from_parts(b"ab".to_vec(), vec![2, 1]), Err(IdsError::BadOffsets)));
        assert!(matches!(UserIds::from_parts(b"ab".to_vec(), vec![3]), Err(IdsError::BadOffsets)));
        assert!(matches!(UserIds::from_parts(b"abab".to_vec(), vec![2, 4]), Err(IdsError::Duplicate)));
        assert!(UserIds::from_parts(Vec::new(), Vec::new()).is_ok_and(|ids| ids.is_empty()));
    }

    proptest::proptest! {
        #[test]
        fn sums_bytes_eight_at_a_time(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            from in 0..80usize,
            len in 0..64usize,
        ) {
            let from = from.min(bytes.len());
            let to = (from + len).min(bytes.len());
            let want: usize = bytes[from..to].iter().map(|&b| usize::from(b)).sum();
            proptest::prop_assert_eq!(byte_sum(&bytes, from, to), want);
        }

        /// Ids of every length around the length byte's limit, across
        /// blocks, against the list of them: each is found at its index,
        /// none other is, and a snapshot's parts give the same table.
        #[test]
        fn finds_every_id_at_its_index(
            lens in proptest::collection::vec(
                proptest::prop_oneof![4 => 0..12usize, 1 => 250..300usize],
                0..300,
            ),
        ) {
            let mut ids = UserIds::default();
            let mut list: Vec<String> = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                // Distinct: the index leads, padded to the length.
                let mut id = format!("{i}.");
                while id.len() < *len {
                    id.push(char::from(b'a' + (i % 26) as u8));
                }
                if ids.get(&id).is_none() {
                    proptest::prop_assert_eq!(ids.push(&id), Some(list.len() as u32));
                    list.push(id);
                }
            }
            let back = UserIds::from_parts(ids.bytes().to_vec(), ids.ends().collect()).expect("valid parts");
            let mut end = 0;
            for (i, (id, want_end)) in list.iter().zip(ids.ends()).enumerate() {
                end += id.len() as u32;
                proptest::prop_assert_eq!(want_end, end);
                proptest::prop_assert_eq!(ids.get(id), Some(i as u32));
                proptest::prop_assert_eq!(back.get(id), Some(i as u32));
                proptest::prop_assert_eq!(ids.get(&format!("{id}x")), None);
            }
        }
    }
}
