//! The verified identities of a request: one or more principals, each produced by an authenticator.

use std::sync::Arc;

use serde_json::{Map, Value};
use smallvec::SmallVec;
use time::OffsetDateTime;

use crate::attributes::record::PrincipalRecord;
use crate::attributes::store::{AttributeSource, LookupError};

/// A verified identity. Cloning it is cheap (shared strings and maps): a contextualizer clones
/// the principal to layer stored attributes over it on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: Arc<str>,
    pub roles: Arc<[Box<str>]>,
    /// The token's attribute claims, shared with the verified-token cache.
    pub claims: Arc<Map<String, Value>>,
    /// The id of the mechanism that verified it.
    pub mechanism: Arc<str>,
    pub issuer: Option<Arc<str>>,
    pub expires_at: Option<OffsetDateTime>,
    pub issued_at: Option<OffsetDateTime>,
    pub token_id: Option<Arc<str>>,
    /// The stored attributes layered over the claims, once a contextualizer looked them up.
    pub stored: Option<Stored>,
    /// Attributes remote services answered during this request (the `http` contextualizer,
    /// the `remote` authorizer), layered over the stored ones and the claims.
    pub fetched: Option<Arc<Map<String, Value>>>,
}

/// A principal's stored attributes as of one KV revision, shared with the attribute cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Part of every decision cache key, so an attribute update is never answered from an
    /// older decision.
    pub revision: u64,
    pub record: Arc<PrincipalRecord>,
}

impl Principal {
    /// A principal with no token times (anonymous, tests).
    pub fn new(id: &str, roles: Vec<String>, claims: Map<String, Value>, mechanism: &str) -> Self {
        Self {
            id: Arc::from(id),
            roles: roles.into_iter().map(String::into_boxed_str).collect(),
            claims: Arc::new(claims),
            mechanism: Arc::from(mechanism),
            issuer: None,
            expires_at: None,
            issued_at: None,
            token_id: None,
            stored: None,
            fetched: None,
        }
    }

    /// The attribute `name`: a fetched one wins over a stored one, which wins over a claim of
    /// the same name: each is the newer fact.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.fetched
            .as_ref()
            .and_then(|f| f.get(name))
            .or_else(|| {
                self.stored
                    .as_ref()
                    .and_then(|s| s.record.attributes.get(name))
            })
            .or_else(|| self.claims.get(name))
    }

    /// Every attribute once, fetched ones first, then stored ones, then claims, each as
    /// [`Principal::attr`] answers it.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &Value)> {
        let fetched = self.fetched.as_deref();
        let stored = self.stored.as_ref().map(|s| &s.record.attributes);
        let shadowed = move |k: &String| {
            fetched.is_some_and(|f| f.contains_key(k)) || stored.is_some_and(|s| s.contains_key(k))
        };
        let stored_visible = stored
            .into_iter()
            .flatten()
            .filter(move |(k, _)| !fetched.is_some_and(|f| f.contains_key(*k)));
        let claims = self.claims.iter().filter(move |(k, _)| !shadowed(k));
        fetched
            .into_iter()
            .flatten()
            .chain(stored_visible)
            .chain(claims)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// This principal with `values` fetched during the request layered over its attributes (a
    /// later fetch wins over an earlier one of the same name).
    #[must_use]
    pub fn with_fetched(&self, values: Map<String, Value>) -> Self {
        let fetched = match &self.fetched {
            Some(earlier) => {
                let mut merged = (**earlier).clone();
                merged.extend(values);
                merged
            }
            None => values,
        };
        Self {
            fetched: Some(Arc::new(fetched)),
            ..self.clone()
        }
    }

    /// The number of distinct attributes.
    pub fn attr_count(&self) -> usize {
        self.attrs().count()
    }

    /// The attributes as one owned map (what the policy engine and `/check` are sent).
    pub fn attributes(&self) -> Map<String, Value> {
        self.attrs()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }

    /// The KV revision of the stored attributes layered in (0: none).
    pub fn attributes_revision(&self) -> u64 {
        self.stored.as_ref().map_or(0, |s| s.revision)
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

    /// Layers `fetched` over its principal's attributes ([`Principal::with_fetched`]); `false`
    /// when there is no such principal.
    pub fn add_fetched(&mut self, fetched: FetchedAttributes) -> bool {
        let Some(slot) = (match fetched.principal.as_deref() {
            Some(name) => self.principals.iter_mut().find(|(n, _)| &**n == name),
            None => self.principals.first_mut(),
        }) else {
            return false;
        };
        slot.1 = Arc::new(slot.1.with_fetched(fetched.values));
        true
    }
}

/// Attributes a remote service answered, for one principal (by name; `None`: the first).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedAttributes {
    pub principal: Option<Arc<str>>,
    pub values: Map<String, Value>,
}

/// `principal` with its stored attributes layered over its claims (they win on a name clash:
/// they are the newer fact), or `None` when it has no stored attributes. Shares the stored
/// document with the cache: nothing is copied but a few `Arc`s. The `principal_attributes`
/// contextualizer and the policy API enrich through this one function.
pub async fn enrich<S: AttributeSource>(
    principal: &Principal,
    source: &S,
) -> Result<Option<Arc<Principal>>, LookupError> {
    let snapshot = source.get(&principal.id).await?;
    Ok(snapshot.record.map(|record| {
        Arc::new(Principal {
            stored: Some(Stored {
                revision: snapshot.revision,
                record,
            }),
            ..principal.clone()
        })
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fetched_attributes_win_over_stored_ones_and_claims_and_accumulate() {
        let claims = json!({"plan": "free", "dept": "eng", "email": "old@x"});
        let mut principal = Principal::new(
            "alice",
            vec![],
            serde_json::from_value(claims).unwrap(),
            "bearer",
        );
        principal.stored = Some(Stored {
            revision: 3,
            record: Arc::new(PrincipalRecord {
                attributes: serde_json::from_value(json!({"plan": "pro", "seats": 5})).unwrap(),
                ..PrincipalRecord::default()
            }),
        });
        let mut subject = Subject::single(principal);
        let fetched = |values: serde_json::Value| FetchedAttributes {
            principal: None,
            values: serde_json::from_value(values).unwrap(),
        };
        assert!(subject.add_fetched(fetched(json!({"plan": "enterprise", "email": "a@x"}))));
        assert!(subject.add_fetched(fetched(json!({"team": "core", "email": "b@x"}))));
        let alice = subject.primary().unwrap();
        assert_eq!(
            Value::Object(alice.attributes()),
            json!({"plan": "enterprise", "email": "b@x", "team": "core", "seats": 5, "dept": "eng"})
        );
        assert_eq!(alice.attr_count(), 5);
        assert_eq!(alice.attr("seats"), Some(&json!(5)));
        // Layered, not merged: the token's claims and the stored record are unchanged.
        assert_eq!(alice.claims.get("plan"), Some(&json!("free")));
        assert_eq!(alice.attributes_revision(), 3);
        assert!(!subject.add_fetched(FetchedAttributes {
            principal: Some(Arc::from("workload")),
            values: Map::new(),
        }));
    }
}
