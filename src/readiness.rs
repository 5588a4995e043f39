//! Readiness: `/ready` answers 200 only once every part that blocks it has reported in (rules
//! compiled, listeners bound, Cerbos serving, the NATS consumer live).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The parts not ready yet, each with how many live guards block it: two guards of one name
/// (a watcher re-blocking while an older guard still lives) keep it pending until both drop.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<RwLock<BTreeMap<&'static str, usize>>>,
}

/// Blocks readiness until dropped.
#[must_use = "readiness is blocked only while the guard lives"]
pub struct BlockReady {
    readiness: Readiness,
    name: &'static str,
}

impl Readiness {
    /// Registers `name` as not ready.
    pub fn block(&self, name: &'static str) -> BlockReady {
        if let Ok(mut pending) = self.pending.write() {
            let count = pending.entry(name).or_insert(0);
            *count = count.saturating_add(1);
        }
        BlockReady {
            readiness: self.clone(),
            name,
        }
    }

    /// The parts still pending (empty = ready).
    pub fn pending(&self) -> Vec<&'static str> {
        // A poisoned lock means a panic while holding it: report not ready.
        self.pending
            .read()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_else(|_| vec!["readiness state"])
    }

    pub fn is_ready(&self) -> bool {
        self.pending().is_empty()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.readiness.pending.write()
            && let Some(count) = pending.get_mut(self.name)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_stays_pending_until_its_last_guard_drops() {
        let readiness = Readiness::default();
        assert!(readiness.is_ready());
        let first = readiness.block("cerbos");
        let second = readiness.block("cerbos");
        let other = readiness.block("nats");
        assert_eq!(readiness.pending(), vec!["cerbos", "nats"]);
        drop(first);
        assert_eq!(readiness.pending(), vec!["cerbos", "nats"]);
        drop(other);
        assert_eq!(readiness.pending(), vec!["cerbos"]);
        drop(second);
        assert!(readiness.is_ready());
        let again = readiness.block("cerbos");
        assert_eq!(readiness.pending(), vec!["cerbos"]);
        drop(again);
        assert!(readiness.pending().is_empty());
    }
}
