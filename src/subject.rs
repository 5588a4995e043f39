//! The verified identities of a request: one or more principals, each produced by an authenticator.

use std::sync::Arc;

use smallvec::SmallVec;
use time::OffsetDateTime;

/// A verified identity. Cloning it is cheap (shared strings): a contextualizer clones the
/// principal to merge attributes into it on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: Arc<str>,
    pub roles: Arc<[Box<str>]>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The id of the mechanism that verified it.
    pub mechanism: Arc<str>,
    pub issuer: Option<Arc<str>>,
    pub expires_at: Option<OffsetDateTime>,
    pub issued_at: Option<OffsetDateTime>,
    pub token_id: Option<Arc<str>>,
    /// The KV revision of the stored attributes merged in (0: none): part of every decision
    /// cache key, so an attribute update is never answered from an older decision.
    pub attributes_revision: u64,
}

impl Principal {
    /// A principal with no token times (anonymous, tests).
    pub fn new(
        id: &str,
        roles: Vec<String>,
        attributes: serde_json::Map<String, serde_json::Value>,
        mechanism: &str,
    ) -> Self {
        Self {
            id: Arc::from(id),
            roles: roles.into_iter().map(String::into_boxed_str).collect(),
            attributes,
            mechanism: Arc::from(mechanism),
            issuer: None,
            expires_at: None,
            issued_at: None,
            token_id: None,
            attributes_revision: 0,
        }
    }
}

/// The name of the principal that authenticators target unless they say otherwise.
pub const DEFAULT_PRINCIPAL: &str = "default";

/// Every principal of a request, by the name the rule gave it; the first is the primary one.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    principals: SmallVec<[(Arc<str>, Arc<Principal>); 2]>,
}

impl Subject {
    /// A subject of one principal named [`DEFAULT_PRINCIPAL`].
    pub fn single(principal: Principal) -> Self {
        let mut subject = Self::default();
        subject.insert(Arc::from(DEFAULT_PRINCIPAL), Arc::new(principal));
        subject
    }

    /// Adds (or replaces) the principal called `name`.
    pub fn insert(&mut self, name: Arc<str>, principal: Arc<Principal>) {
        if let Some(slot) = self.principals.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = principal;
        } else {
            self.principals.push((name, principal));
        }
    }

    /// The first principal authenticated.
    pub fn primary(&self) -> Option<&Principal> {
        self.principals.first().map(|(_, p)| &**p)
    }

    /// The principal called `name`, or the first one when `name` is `None`, with its name.
    pub fn named(&self, name: Option<&str>) -> Option<(&Arc<str>, &Arc<Principal>)> {
        match name {
            Some(name) => self.principals.iter().find(|(n, _)| &**n == name),
            None => self.principals.first(),
        }
        .map(|(n, p)| (n, p))
    }

    /// Every principal with its name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Principal)> {
        self.principals.iter().map(|(n, p)| (&**n, &**p))
    }
}
