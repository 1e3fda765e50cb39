//! What an event name means to each metric family, computed once per name
//! at start so that an event costs one hash lookup.

use std::collections::HashMap;

use super::def::EngineConfig;
use super::{funnel, retention, revenue, trend};

/// An event name's meaning: a part per family that asks about names.
#[derive(Debug, Clone, Default)]
pub struct Class {
    /// Which retention definitions it is a cohort or return event of.
    pub retention: retention::Bits,
    /// Which funnel steps it fills.
    pub funnel: funnel::Fills,
    /// Which trends count it.
    pub trend: trend::Fills,
    /// 1 + its index among the payment events, or 0.
    pub revenue: u32,
}

/// The classes of the names the definitions name, and of every other.
#[derive(Debug, Clone)]
pub struct Classes {
    named: HashMap<Box<str>, Class, foldhash::fast::RandomState>,
    /// The class of names no definition names.
    other: Class,
}

impl Classes {
    /// The classes `cfg`'s definitions give.
    pub fn new(cfg: &EngineConfig) -> Self {
        let of = |name: Option<&str>| Class {
            retention: retention::classify(cfg, name),
            funnel: funnel::classify(cfg, name),
            trend: trend::classify(cfg, name),
            revenue: revenue::classify(cfg, name),
        };
        let mut named: HashMap<Box<str>, Class, _> = HashMap::default();
        for name in retention::names(cfg).chain(funnel::names(cfg)).chain(trend::names(cfg)).chain(revenue::names(cfg))
        {
            if !named.contains_key(name) {
                named.insert(name.into(), of(Some(name)));
            }
        }
        Classes { named, other: of(None) }
    }

    /// The class of events named `name`.
    pub fn get(&self, name: &str) -> &Class {
        self.named.get(name).unwrap_or(&self.other)
    }
}
