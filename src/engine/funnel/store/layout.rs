//! Which funnels share a store, and where each one's steps lie in the
//! store's masks.

use crate::engine::def::{EventMatch, FunnelDef, FunnelMode};
use crate::engine::funnel::{Packed, Steps};

/// Which store each funnel of a configuration uses. Funnels of [`Packed`]
/// entries share a store while their steps fit its mask (first fit, in
/// the configuration's order), each at its own bit offset; a funnel whose
/// entries need tags has a store of its own. It depends on the
/// definitions alone, so a snapshot's stores fit any engine of its
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per funnel: its store, and where its steps lie in the store's masks.
    pub funnels: Vec<(usize, Steps)>,
    /// Per store: whether its entries carry tags ([`super::Store::Wide`]).
    pub wide: Vec<bool>,
}

impl Layout {
    /// The layout of `defs`.
    pub fn of(defs: &[FunnelDef]) -> Self {
        let mut layout = Layout { funnels: Vec::with_capacity(defs.len()), wide: Vec::new() };
        // Per store: the mask bits taken (None for a store with tags).
        let mut taken: Vec<Option<usize>> = Vec::new();
        for def in defs {
            let count = def.steps.len();
            if needs_tags(def) {
                layout.funnels.push((taken.len(), Steps { count, shift: 0 }));
                taken.push(None);
                layout.wide.push(true);
                continue;
            }
            let fits = taken.iter().position(|t| t.is_some_and(|used| used + count <= Packed::MAX_STEPS));
            let store = fits.unwrap_or_else(|| {
                taken.push(Some(0));
                layout.wide.push(false);
                taken.len() - 1
            });
            let used = taken[store].get_or_insert(0);
            layout.funnels.push((store, Steps { count, shift: *used as u32 }));
            *used += count;
        }
        layout
    }

    /// The funnels that use store `s`, in order.
    pub fn members(&self, s: usize) -> impl Iterator<Item = usize> + '_ {
        self.funnels.iter().enumerate().filter(move |(_, (store, _))| *store == s).map(|(f, _)| f)
    }
}

/// Whether the funnel needs each hit's tag: in `strict_once` one event
/// fills one step, so two distinct events at one millisecond that can both
/// fill two steps are not one; in the other modes only the union of the
/// steps a millisecond's events fill matters.
fn needs_tags(def: &FunnelDef) -> bool {
    if def.steps.len() > Packed::MAX_STEPS {
        return true;
    }
    def.mode == FunnelMode::StrictOnce
        && def.steps.iter().enumerate().any(|(k, a)| {
            def.steps[k + 1..].iter().any(|b| match (&a.event, &b.event) {
                (EventMatch::Named(x), EventMatch::Named(y)) => x == y,
                _ => true,
            })
        })
}
