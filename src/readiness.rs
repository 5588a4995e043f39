//! Readiness: `/ready` answers 200 only once every part that blocks it has reported in
//! (rules compiled, listeners bound; later issues add their dependencies).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// The set of parts not ready yet.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<RwLock<BTreeSet<&'static str>>>,
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
            pending.insert(name);
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
            .map(|p| p.iter().copied().collect())
            .unwrap_or_else(|_| vec!["readiness state"])
    }

    pub fn is_ready(&self) -> bool {
        self.pending().is_empty()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.readiness.pending.write() {
            pending.remove(self.name);
        }
    }
}
