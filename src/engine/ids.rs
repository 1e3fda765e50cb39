//! User ids interned into one byte arena: a user costs its id's bytes, a
//! 4-byte end offset and a 4-byte slot of an open-addressing table, with no
//! allocation of its own, and a snapshot stores the arena as it is.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Ids of one shard's users, numbered densely from 0 in order of arrival.
#[derive(Debug, Clone, Default)]
pub struct UserIds {
    /// Every id's bytes, one after the other.
    bytes: Vec<u8>,
    /// `ends[i]`: where id i ends in `bytes` (it starts where i-1 ends).
    ends: Vec<u32>,
    /// Indexes into `ends`, found by the id's hash.
    table: HashTable<u32>,
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
        self.ends.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The index of `id`, if it is known.
    pub fn get(&self, id: &str) -> Option<u32> {
        let (bytes, ends) = (&self.bytes, &self.ends);
        self.table.find(hash(id.as_bytes()), |&i| id_in(bytes, ends, i) == id.as_bytes()).copied()
    }

    /// Adds a new id (not already present: check with [`UserIds::get`]) and
    /// returns its index; `None` when the arena is full (4 GiB of ids).
    pub fn push(&mut self, id: &str) -> Option<u32> {
        let end = u32::try_from(self.bytes.len() + id.len()).ok()?;
        let i = u32::try_from(self.ends.len()).ok()?;
        self.bytes.extend_from_slice(id.as_bytes());
        self.ends.push(end);
        let (bytes, ends) = (&self.bytes, &self.ends);
        self.table.insert_unique(hash(id.as_bytes()), i, |&j| hash(id_in(bytes, ends, j)));
        Some(i)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4 + self.table.capacity() * 5
    }

    /// The arena and offsets, as a snapshot stores them.
    pub fn parts(&self) -> (&[u8], &[u32]) {
        (&self.bytes, &self.ends)
    }

    /// The table of a snapshot's arena and offsets, checked.
    pub fn from_parts(bytes: Vec<u8>, ends: Vec<u32>) -> Result<Self, IdsError> {
        let mut start = 0u32;
        for &end in &ends {
            if end < start {
                return Err(IdsError::BadOffsets);
            }
            start = end;
        }
        if start as usize != bytes.len() {
            return Err(IdsError::BadOffsets);
        }
        let mut table = HashTable::with_capacity(ends.len());
        for i in 0..ends.len() as u32 {
            let id = id_in(&bytes, &ends, i);
            match table.entry(hash(id), |&j| id_in(&bytes, &ends, j) == id, |&j| hash(id_in(&bytes, &ends, j))) {
                Entry::Occupied(_) => return Err(IdsError::Duplicate),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        Ok(UserIds { bytes, ends, table })
    }
}

fn id_in<'a>(bytes: &'a [u8], ends: &[u32], i: u32) -> &'a [u8] {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
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
        assert_eq!(id_in(&ids.bytes, &ids.ends, 2), "user-ü".as_bytes());

        let (bytes, ends) = ids.parts();
        let back = UserIds::from_parts(bytes.to_vec(), ends.to_vec()).expect("valid parts");
        assert_eq!(back.len(), 1003);
        assert_eq!(back.get("u500"), Some(503));
        assert_eq!(back.get("user-ü"), Some(2));
    }

    #[test]
    fn refuses_bad_parts() {
        assert!(matches!(UserIds::from_parts(b"ab".to_vec(), vec![1]), Err(IdsError::BadOffsets)));
        assert!(matches!(UserIds::from_parts(b"ab".to_vec(), vec![2, 1]), Err(IdsError::BadOffsets)));
        assert!(matches!(UserIds::from_parts(b"abab".to_vec(), vec![2, 4]), Err(IdsError::Duplicate)));
        assert!(UserIds::from_parts(Vec::new(), Vec::new()).is_ok_and(|ids| ids.is_empty()));
    }
}
