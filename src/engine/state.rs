//! An engine's state as a snapshot holds it, and back.
//!
//! The per-user columns, which are almost all of it, are written as they
//! lie in memory (little-endian arrays of plain records, through
//! `bytemuck`): encoding is a few copies, not a walk over every field, and
//! decoding is a copy per column. The small rest (day rows, counters,
//! histograms, the columns' shapes) is postcard, a section per metric
//! family. The layout:
//!
//! ```text
//! head length u64 | head (postcard: shared fields, then a section per family)
//!   | id bytes | id ends [u32; n] | first days [Day16; n] | active day sets [u16; n × (1 + words)]
//!   | per family, in the shard's order: its columns
//! ```
//!
//! The families' columns: breakdowns, per breakdown, the users' values
//! and their times [u64; n]; retention, per definition, cohort days [Day16; n]
//! (unless another's serve), latest return days [Day16; n] or return day
//! sets; funnels, per store, hits per user [u32; n] and hits [Packed or
//! Hit; total] in user order (which funnels share a store follows from
//! the definitions). The user id index is rebuilt on a thread of its own
//! while the families read, and each funnel store on one.

use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Engine;
use super::calendar::Day;
use super::days::{Day16, DaySets};
use super::def::EngineConfig;
use super::figures::Counters;
use super::ids::UserIds;
use super::users::Users;

#[cfg(target_endian = "big")]
compile_error!("snapshots store little-endian columns as they lie in memory: big-endian targets are not supported");

/// Why a snapshot's state cannot be loaded into an engine.
#[derive(Debug, thiserror::Error)]
#[error("snapshot state does not fit the configuration: {0}")]
pub struct StateMismatch(String);

impl StateMismatch {
    pub(crate) fn new(why: impl Into<String>) -> Self {
        StateMismatch(why.into())
    }
}

/// Everything but the per-user columns, and the columns' shapes.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    users: u64,
    /// Words of each day set (4 or 8, from `history_days`, which a
    /// snapshot's configuration fingerprint holds).
    day_words: u8,
    id_bytes: u64,
    max_ts: Option<i64>,
    maintained_day: Day,
    counters: Counters,
    /// Per family, in the shard's order: its head (postcard).
    sections: Vec<Vec<u8>>,
}

/// Writes `values` as they lie in memory.
pub fn column<T: bytemuck::NoUninit>(out: &mut dyn Write, values: &[T]) -> std::io::Result<()> {
    out.write_all(bytemuck::cast_slice(values))
}

/// Columns read off a snapshot in order, each straight into its final
/// vector (no intermediate copy of the whole payload).
pub struct Columns<'r> {
    reader: &'r mut dyn Read,
    users: usize,
}

impl Columns<'_> {
    /// The users each column has a value for.
    pub fn users(&self) -> usize {
        self.users
    }

    /// The next `n` values.
    pub fn take<T: bytemuck::Pod>(&mut self, n: usize) -> Result<Vec<T>, StateMismatch> {
        let mut v = vec![T::zeroed(); n];
        self.reader
            .read_exact(bytemuck::cast_slice_mut(&mut v))
            .map_err(|e| StateMismatch(format!("cannot read a column: {e}")))?;
        Ok(v)
    }

    /// The next column of day sets of `words` words, one per user.
    pub fn day_sets(&mut self, words: usize) -> Result<DaySets, StateMismatch> {
        let cells = self.take(self.users.saturating_mul(1 + words))?;
        DaySets::from_cells(words, cells).ok_or_else(|| StateMismatch("day sets of another width".into()))
    }

    /// A count from a head, as a length.
    pub fn count(&self, n: u64) -> Result<usize, StateMismatch> {
        count(n)
    }
}

fn count(n: u64) -> Result<usize, StateMismatch> {
    usize::try_from(n).map_err(|_| StateMismatch("count out of range".into()))
}

impl Engine {
    /// Writes the mutable state for a snapshot to `out` (see the module
    /// docs), column by column: nothing the size of the state is built in
    /// memory first.
    pub fn write_state<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        let (ids, first_seen, active) = self.users.parts();
        let id_bytes = ids.bytes();
        let sections = self.families().map(|f| f.write_head()).into_iter().collect::<Result<Vec<_>, _>>();
        let head = Head {
            users: first_seen.len() as u64,
            day_words: active.words() as u8,
            id_bytes: id_bytes.len() as u64,
            max_ts: self.max_ts,
            maintained_day: self.maintained_day,
            counters: self.counters.clone(),
            sections: sections.map_err(std::io::Error::other)?,
        };
        let head = postcard::to_stdvec(&head).map_err(std::io::Error::other)?;
        out.write_all(&(head.len() as u64).to_le_bytes())?;
        out.write_all(&head)?;
        out.write_all(id_bytes)?;
        // Built a block at a time: the ids keep lengths, not ends.
        let mut ends = ids.ends().peekable();
        let mut block = Vec::with_capacity(4096);
        while ends.peek().is_some() {
            block.clear();
            block.extend(ends.by_ref().take(4096));
            column(out, &block)?;
        }
        column(out, first_seen)?;
        column(out, active.cells())?;
        for family in self.families() {
            family.write_columns(out)?;
        }
        Ok(())
    }

    /// An engine for `cfg` holding the state that `reader` yields, `len`
    /// bytes written by [`Engine::write_state`]; refused when they do not
    /// decode, or the state's shape does not fit the configuration's
    /// definitions. The columns' sizes are checked against `len` before
    /// anything is allocated for them.
    pub fn read_state<R: Read>(cfg: Arc<EngineConfig>, reader: &mut R, len: u64) -> Result<Self, StateMismatch> {
        let io = |e: std::io::Error| StateMismatch(format!("cannot read: {e}"));
        let mut len_bytes = [0u8; 8];
        reader.read_exact(&mut len_bytes).map_err(io)?;
        let head_len = u64::from_le_bytes(len_bytes);
        if head_len > len.saturating_sub(8) {
            return Err(StateMismatch("head longer than the state".into()));
        }
        let mut head = vec![0u8; count(head_len)?];
        reader.read_exact(&mut head).map_err(io)?;
        let head: Head = postcard::from_bytes(&head).map_err(|e| StateMismatch(format!("cannot decode: {e}")))?;

        let mut engine = Engine::new(cfg);
        let words = engine.users.active().words();
        if usize::from(head.day_words) != words {
            return Err(StateMismatch("day sets of another width".into()));
        }
        if head.sections.len() != engine.families().len() {
            return Err(StateMismatch("the metric families differ".into()));
        }
        let day = std::mem::size_of::<Day16>() as u64;
        let shared = head.users.checked_mul(4 + day + day * (1 + words as u64));
        let mut columns_len = shared.and_then(|s| s.checked_add(head.id_bytes));
        let (ctx, families) = engine.families_mut();
        for (family, section) in families.into_iter().zip(&head.sections) {
            let family_len = family.read_head(ctx, section, head.users)?;
            columns_len = columns_len.and_then(|l| l.checked_add(family_len));
        }
        if columns_len != Some(len - 8 - head_len) {
            return Err(StateMismatch("the columns do not fill the state".into()));
        }

        let n = count(head.users)?;
        let mut columns = Columns { reader, users: n };
        let id_bytes: Vec<u8> = columns.take(count(head.id_bytes)?)?;
        let id_ends: Vec<u32> = columns.take(n)?;
        let first_seen: Vec<Day16> = columns.take(n)?;
        let active = columns.day_sets(words)?;
        // The id index is rebuilt while the families read their columns.
        let (ids, read) = std::thread::scope(|scope| {
            let ids = scope.spawn(move || UserIds::from_parts(id_bytes, id_ends));
            let (ctx, families) = engine.families_mut();
            let read: Result<(), StateMismatch> =
                families.into_iter().try_for_each(|family| family.read_columns(ctx, &mut columns));
            let ids = ids.join().map_err(|_| StateMismatch("decoding panicked".into()));
            (ids, read)
        });
        read?;
        let ids = ids?.map_err(|e| StateMismatch(e.to_string()))?;
        engine.users = Users::from_parts(ids, first_seen, active)
            .ok_or_else(|| StateMismatch("the user columns differ in length".into()))?;
        engine.max_ts = head.max_ts;
        engine.maintained_day = head.maintained_day;
        engine.counters = head.counters;
        Ok(engine)
    }
}
