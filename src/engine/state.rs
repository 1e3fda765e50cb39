//! An engine's state as a snapshot holds it, and back.
//!
//! The per-user columns, which are almost all of it, are written as they
//! lie in memory (little-endian arrays of plain records, through
//! `bytemuck`): encoding is a few copies, not a walk over every field, and
//! decoding is a copy per column. The small rest (day rows, counters,
//! histograms, the columns' shapes) is postcard. The layout:
//!
//! ```text
//! head length u64 | head (postcard) | id bytes | id ends [u32; n] | first days [Day16; n]
//!   | active day sets [u16; n × (1 + words)]
//!   | per retention definition: cohort days [Day16; n] (unless another's serve), latest return days [Day16; n] or return day sets [u16; n × (1 + words)]
//!   | per funnel store: hits per user [u32; n], hits [Packed or Hit; total] in user order
//! ```
//!
//! Which funnels share a store follows from the definitions
//! ([`super::store::Layout`]). Decoding runs on a thread per store (its
//! arena) besides the one that rebuilds the user id index.

use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::calendar::Day;
use super::days::{Day16, DayRows, DaySets};
use super::def::EngineConfig;
use super::figures::Counters;
use super::ids::UserIds;
use super::store::{Segments, Store};
use super::{ActivityCounts, Cohort, CohortCounts, Engine, Returns};

#[cfg(target_endian = "big")]
compile_error!("snapshots store little-endian columns as they lie in memory: big-endian targets are not supported");

/// Why a snapshot's state cannot be loaded into an engine.
#[derive(Debug, thiserror::Error)]
#[error("snapshot state does not fit the configuration: {0}")]
pub struct StateMismatch(String);

/// Everything but the per-user columns, and the columns' shapes.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    users: u64,
    /// Words of each day set (4 or 8, from `history_days`, which a
    /// snapshot's configuration fingerprint holds).
    day_words: u8,
    id_bytes: u64,
    retention: Vec<RetentionHead>,
    funnels: Vec<FunnelHead>,
    stores: Vec<StoreHead>,
    activity: DayRows<ActivityCounts>,
    max_ts: Option<i64>,
    maintained_day: Day,
    counters: Counters,
}

#[derive(Debug, Serialize, Deserialize)]
struct RetentionHead {
    /// Whether a cohort column follows (not when the cohort is the first
    /// day seen, or an earlier definition's column serves).
    cohort: bool,
    /// 0: no return column, 1: latest return days, 2: return day sets.
    returns: u8,
    rows: DayRows<CohortCounts>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoreHead {
    /// Bytes an entry takes: 8 (packed) or 16 (with tags).
    entry_bytes: u8,
    entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FunnelHead {
    rows: DayRows<Vec<i64>>,
    conversions: Vec<u64>,
    /// Per step: (value, count) pairs of the time-to-convert histogram.
    time_to_convert: Vec<Vec<(u64, u64)>>,
}

impl Head {
    /// The bytes the columns take, from the shapes the head gives.
    fn columns_len(&self) -> Option<u64> {
        let n = self.users;
        let day = std::mem::size_of::<Day16>() as u64;
        let set = day * (1 + u64::from(self.day_words));
        let mut total = self.id_bytes.checked_add(n.checked_mul(4 + day + set)?)?;
        for r in &self.retention {
            let per_user = day * u64::from(r.cohort)
                + match r.returns {
                    0 => 0,
                    1 => day,
                    _ => set,
                };
            total = total.checked_add(n.checked_mul(per_user)?)?;
        }
        for f in &self.stores {
            total = total.checked_add(n.checked_mul(4)?)?;
            total = total.checked_add(f.entries.checked_mul(u64::from(f.entry_bytes))?)?;
        }
        Some(total)
    }
}

fn column<T: bytemuck::NoUninit, W: Write>(out: &mut W, values: &[T]) -> std::io::Result<()> {
    out.write_all(bytemuck::cast_slice(values))
}

/// Columns read off a snapshot in order, each straight into its final
/// vector (no intermediate copy of the whole payload).
struct Columns<'r, R> {
    reader: &'r mut R,
}

impl<R: Read> Columns<'_, R> {
    fn take<T: bytemuck::Pod>(&mut self, n: usize) -> Result<Vec<T>, StateMismatch> {
        let mut v = vec![T::zeroed(); n];
        self.reader
            .read_exact(bytemuck::cast_slice_mut(&mut v))
            .map_err(|e| StateMismatch(format!("cannot read a column: {e}")))?;
        Ok(v)
    }
}

fn write_store<S: Segments, W: Write>(out: &mut W, store: &S) -> std::io::Result<()> {
    for len in store.lens() {
        out.write_all(&len.to_le_bytes())?;
    }
    let mut hits = Vec::new();
    for u in 0..store.users() {
        store.load(u as u32, &mut hits);
        column(out, &hits)?;
    }
    Ok(())
}

fn rebuild<S: Segments>(lens: &[u32], words: &[u64]) -> Option<S> {
    S::from_parts(lens, bytemuck::try_cast_slice(words).ok()?)
}

fn count(n: u64) -> Result<usize, StateMismatch> {
    usize::try_from(n).map_err(|_| StateMismatch("count out of range".into()))
}

impl Engine {
    /// Writes the mutable state for a snapshot to `out` (see the module
    /// docs), column by column: nothing the size of the state is built in
    /// memory first.
    pub fn write_state<W: Write>(&self, out: &mut W) -> std::io::Result<()> {
        let id_bytes = self.user_ids.bytes();
        let head = Head {
            users: self.first_seen.len() as u64,
            day_words: self.active.words() as u8,
            id_bytes: id_bytes.len() as u64,
            retention: self
                .retention
                .iter()
                .map(|r| RetentionHead {
                    cohort: matches!(r.cohort, Cohort::Own(_)),
                    returns: match r.returns {
                        Returns::Active => 0,
                        Returns::Latest(_) => 1,
                        Returns::Days(_) => 2,
                    },
                    rows: r.rows.clone(),
                })
                .collect(),
            funnels: self
                .funnels
                .iter()
                .map(|f| FunnelHead {
                    rows: f.tally.rows.clone(),
                    conversions: f.tally.conversions.clone(),
                    time_to_convert: f
                        .tally
                        .time_to_convert
                        .iter()
                        .map(|h| h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
                        .collect(),
                })
                .collect(),
            stores: self
                .stores
                .iter()
                .map(|s| StoreHead { entry_bytes: s.entry_bytes() as u8, entries: s.entries() as u64 })
                .collect(),
            activity: self.activity.clone(),
            max_ts: self.max_ts,
            maintained_day: self.maintained_day,
            counters: self.counters.clone(),
        };
        let head = postcard::to_stdvec(&head).map_err(std::io::Error::other)?;
        out.write_all(&(head.len() as u64).to_le_bytes())?;
        out.write_all(&head)?;
        out.write_all(id_bytes)?;
        // Built a block at a time: the ids keep lengths, not ends.
        let mut ends = self.user_ids.ends().peekable();
        let mut block = Vec::with_capacity(4096);
        while ends.peek().is_some() {
            block.clear();
            block.extend(ends.by_ref().take(4096));
            column(out, &block)?;
        }
        column(out, &self.first_seen)?;
        column(out, self.active.cells())?;
        for r in &self.retention {
            if let Cohort::Own(cohort) = &r.cohort {
                column(out, cohort)?;
            }
            match &r.returns {
                Returns::Active => {}
                Returns::Latest(v) => column(out, v)?,
                Returns::Days(v) => column(out, v.cells())?,
            }
        }
        for store in &self.stores {
            match store {
                Store::Packed(s) => write_store(out, s)?,
                Store::Wide(s) => write_store(out, s)?,
            }
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
        if head.columns_len() != Some(len - 8 - head_len) {
            return Err(StateMismatch("the columns do not fill the state".into()));
        }

        let mut engine = Engine::new(cfg);
        if head.retention.len() != engine.retention.len()
            || head.funnels.len() != engine.funnels.len()
            || head.stores.len() != engine.stores.len()
        {
            return Err(StateMismatch("the number of retention definitions, funnels or funnel stores differs".into()));
        }
        let n = count(head.users)?;
        let mut columns = Columns { reader };
        let id_bytes: Vec<u8> = columns.take(count(head.id_bytes)?)?;
        let id_ends: Vec<u32> = columns.take(n)?;
        let words = usize::from(head.day_words);
        let sets = |columns: &mut Columns<'_, R>| -> Result<DaySets, StateMismatch> {
            let cells = columns.take(n.saturating_mul(1 + words))?;
            DaySets::from_cells(words, cells)
                .filter(|s| s.words() == engine.active.words())
                .ok_or_else(|| StateMismatch("day sets of another width".into()))
        };
        let first_seen: Vec<Day16> = columns.take(n)?;
        let active = sets(&mut columns)?;
        for (r, h) in head.retention.into_iter().enumerate() {
            let state = &mut engine.retention[r];
            if matches!(state.cohort, Cohort::Own(_)) != h.cohort {
                let name = &engine.cfg.retention[r].name;
                return Err(StateMismatch(format!("retention definition {name} has another shape")));
            }
            if h.cohort {
                state.cohort = Cohort::Own(columns.take(n)?);
            }
            state.returns = match (&state.returns, h.returns) {
                (Returns::Active, 0) => Returns::Active,
                (Returns::Latest(_), 1) => Returns::Latest(columns.take(n)?),
                (Returns::Days(_), 2) => Returns::Days(sets(&mut columns)?),
                _ => {
                    let name = &engine.cfg.retention[r].name;
                    return Err(StateMismatch(format!("retention definition {name} has another shape")));
                }
            };
            state.rows = h.rows;
        }
        let mut funnel_columns = Vec::with_capacity(head.stores.len());
        for (store, h) in engine.stores.iter().zip(&head.stores) {
            if usize::from(h.entry_bytes) != store.entry_bytes() {
                return Err(StateMismatch("a funnel store's entries have another layout".into()));
            }
            let lens: Vec<u32> = columns.take(n)?;
            let words = count(h.entries)?.saturating_mul(store.entry_bytes() / 8);
            funnel_columns.push((store, lens, columns.take::<u64>(words)?));
        }

        // A thread per store lays out its arena while this one rebuilds
        // the id index.
        let (ids, stores) = std::thread::scope(|scope| {
            let jobs: Vec<_> = funnel_columns
                .into_iter()
                .map(|(store, lens, words)| {
                    scope.spawn(move || {
                        let rebuilt = match store {
                            Store::Packed(_) => rebuild(&lens, &words).map(Store::Packed),
                            Store::Wide(_) => rebuild(&lens, &words).map(Store::Wide),
                        };
                        rebuilt
                            .ok_or_else(|| StateMismatch("a funnel's entries do not add up or are out of order".into()))
                    })
                })
                .collect();
            let ids = UserIds::from_parts(id_bytes, id_ends).map_err(|e| StateMismatch(e.to_string()));
            let stores: Vec<_> = jobs
                .into_iter()
                .map(|job| job.join().unwrap_or_else(|_| Err(StateMismatch("decoding panicked".into()))))
                .collect();
            (ids, stores)
        });
        engine.user_ids = ids?;
        engine.first_seen = first_seen;
        engine.active = active;
        for (slot, store) in engine.stores.iter_mut().zip(stores) {
            *slot = store?;
        }
        for (state, h) in engine.funnels.iter_mut().zip(head.funnels) {
            let tally = &mut state.tally;
            let steps = tally.conversions.len();
            if h.conversions.len() != steps || h.time_to_convert.len() != steps {
                return Err(StateMismatch("a funnel has another number of steps".into()));
            }
            tally.rows = h.rows;
            tally.conversions = h.conversions;
            for (hist, values) in tally.time_to_convert.iter_mut().zip(h.time_to_convert) {
                for (value, count) in values {
                    hist.saturating_record_n(value, count);
                }
            }
        }
        engine.activity = head.activity;
        engine.max_ts = head.max_ts;
        engine.maintained_day = head.maintained_day;
        engine.counters = head.counters;
        Ok(engine)
    }
}
