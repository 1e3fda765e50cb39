//! The interface between the shard and its metric families.
//!
//! The shard ([`super::Engine`]) keeps what every family reads: the users'
//! ids, their first-seen day and active days ([`super::users::Users`]),
//! the calendar and the watermark. A family keeps the rest of what it
//! measures: its per-user columns, its per-day rows and its figures. The
//! shard drives each family through [`Family`], calling them in a fixed
//! order (a list in `engine/mod.rs`, statically dispatched: no virtual
//! call per event).

use std::io::Write;

use super::StateMismatch;
use super::breakdown::Move;
use super::calendar::{Calendar, Day};
use super::class::Class;
use super::def::EngineConfig;
use super::figures::Figures;
use super::users::Users;
use crate::event::Event;

/// What the shard passes a family besides its own state.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The definitions and limits.
    pub cfg: &'a EngineConfig,
    /// Business days in the configured zone.
    pub cal: &'a Calendar,
}

/// An accepted event, after the shard has recorded it in the users'
/// shared columns.
#[derive(Debug)]
pub struct Touch<'a> {
    /// The event itself (its props, for filters and tags).
    pub ev: &'a Event<'a>,
    /// What its name means to each family.
    pub class: &'a Class,
    /// Its user's index in the shared columns.
    pub uid: u32,
    /// Its time, epoch ms.
    pub ts: i64,
    /// The business day of `ts`.
    pub day: Day,
    /// Whether `day` is a new active day of the user.
    pub newly_active: bool,
    /// The user's latest active day before this event.
    pub prev_latest_active: Option<Day>,
    /// The user's first day seen before this event (or [`super::days::NO_DAY`]).
    pub old_first: Day,
    /// Per breakdown, the user's slot (their value) with this event.
    pub labels: &'a [u8],
}

/// What a maintenance pass (the watermark entered a new day) lets a
/// family drop.
#[derive(Debug, Clone, Copy)]
pub struct Horizon {
    /// Day rows before this day can no longer change nor be exported.
    pub keep_from: Day,
    /// No event before this time (ms) can be accepted any more.
    pub horizon_ms: i64,
}

/// The days a family publishes figures of, and the watermark that says
/// which are mature.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// The first day shown.
    pub from: Day,
    /// The last day shown.
    pub to: Day,
    /// The watermark (`i64::MIN` before any event).
    pub watermark_ms: i64,
}

/// A metric family: see the module docs.
pub trait Family {
    /// The family's state for a configuration, with no users.
    fn new(ctx: Ctx<'_>) -> Self
    where
        Self: Sized;

    /// A new user: each per-user column grows by one.
    fn push_user(&mut self);

    /// What an accepted event does to the family's figures. `users` holds
    /// the event already.
    fn record(&mut self, ctx: Ctx<'_>, users: &Users, touch: &Touch<'_>);

    /// User `uid`'s value of a breakdown moves (see
    /// [`super::breakdown::Move`]), before the event that moves it reaches
    /// the families: a family splitting figures by that breakdown moves
    /// the user's share of them from the old value's rows to the new one's.
    fn relabel(&mut self, ctx: Ctx<'_>, users: &Users, uid: u32, change: Move) {
        let _ = (ctx, users, uid, change);
    }

    /// Drops what no accepted event can change and no export shows.
    fn maintain(&mut self, ctx: Ctx<'_>, horizon: Horizon);

    /// How many days a row must be kept after the horizon for late events
    /// to be counted right (a retention N, an activity or funnel window).
    fn reach_days(&self, ctx: Ctx<'_>) -> i32;

    /// Adds the family's figures of the days in `view`.
    fn publish(&self, ctx: Ctx<'_>, view: View, out: &mut Figures);

    /// The heap bytes of its state.
    fn heap_bytes(&self) -> usize;

    /// The snapshot's head section: everything but the per-user columns,
    /// and their shapes (postcard).
    fn write_head(&self) -> Result<Vec<u8>, postcard::Error>;

    /// The per-user columns, in the order [`Family::read_columns`] takes them.
    fn write_columns(&self, out: &mut dyn Write) -> std::io::Result<()>;

    /// Takes a head written by [`Family::write_head`], and says how many
    /// bytes of columns it announces for `users` users.
    fn read_head(&mut self, ctx: Ctx<'_>, head: &[u8], users: u64) -> Result<u64, StateMismatch>;

    /// Reads the columns the head announced.
    fn read_columns(&mut self, ctx: Ctx<'_>, columns: &mut Columns<'_>) -> Result<(), StateMismatch>;
}

pub use super::state::{Columns, column};
