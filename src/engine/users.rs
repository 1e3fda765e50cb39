//! What every metric family reads: the users' ids, the first day each was
//! seen and the days each was active.

use super::calendar::Day;
use super::days::{Day16, DaySets, NO_DAY};
use super::ids::UserIds;

/// The shared per-user columns. A user is an index into them, given in
/// arrival order.
#[derive(Debug, Clone)]
pub struct Users {
    ids: UserIds,
    /// Per user: the first day seen (any event).
    first_seen: Vec<Day16>,
    /// Per user: the days with any event.
    active: DaySets,
}

/// What an event did to its user's shared columns.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Whether its day is a new active day of the user.
    pub newly_active: bool,
    /// The user's latest active day before it.
    pub prev_latest_active: Option<Day>,
    /// The user's first day seen before it, or [`NO_DAY`].
    pub old_first: Day,
}

impl Users {
    /// No users, with active-day sets that see `history_days` back.
    pub fn new(history_days: u32) -> Self {
        Users { ids: UserIds::default(), first_seen: Vec::new(), active: DaySets::for_history(history_days) }
    }

    /// Users remembered.
    pub fn len(&self) -> usize {
        self.first_seen.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
    }

    /// The index of user `id`, if known.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.ids.get(id)
    }

    /// Adds user `id` with no days (`None` when the ids are full).
    pub fn push(&mut self, id: &str) -> Option<u32> {
        let i = self.ids.push(id)?;
        self.first_seen.push(Day16::pack(NO_DAY));
        self.active.push_empty();
        Some(i)
    }

    /// Records that user `u` did something on `day`.
    pub fn touch(&mut self, u: u32, day: Day) -> Seen {
        let u = u as usize;
        let prev_latest_active = self.active.latest(u);
        let newly_active = self.active.insert(u, day);
        let old_first = self.first_seen[u].unpack();
        if old_first == NO_DAY || day < old_first {
            self.first_seen[u] = Day16::pack(day);
        }
        Seen { newly_active, prev_latest_active, old_first }
    }

    /// User `u`'s first day seen, or [`NO_DAY`].
    pub fn first_seen(&self, u: u32) -> Day {
        self.first_seen[u as usize].unpack()
    }

    /// The users' active days.
    pub fn active(&self) -> &DaySets {
        &self.active
    }

    /// The heap bytes they hold.
    pub fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes() + self.first_seen.capacity() * std::mem::size_of::<Day16>() + self.active.heap_bytes()
    }

    /// The parts a snapshot holds: the ids, the first days and the
    /// active-day sets.
    pub fn parts(&self) -> (&UserIds, &[Day16], &DaySets) {
        (&self.ids, &self.first_seen, &self.active)
    }

    /// Users from their parts; `None` when they do not agree in length.
    pub fn from_parts(ids: UserIds, first_seen: Vec<Day16>, active: DaySets) -> Option<Self> {
        (ids.len() == first_seen.len() && active.len() == first_seen.len()).then_some(Users { ids, first_seen, active })
    }
}
