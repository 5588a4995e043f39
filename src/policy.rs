//! The policy decision point seam: the questions heimdall asks a PDP (may this principal do these
//! actions on these resources? under which condition may it list them?) in PDP-neutral types,
//! and the [`PolicyDecisionPoint`] trait a policy engine implements ([`crate::cerbos::Cerbos`]
//! today). Only the engine's own module knows its wire types.
//!
//! A question borrows the request's principal ([`PrincipalInput`]): asking the PDP, and keying
//! its decision cache, copies nothing on a cache hit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;
use smallvec::SmallVec;

type Map = serde_json::Map<String, serde_json::Value>;

/// A policy decision point: answers checks and plans. The hot path calls it through a generic
/// parameter, so every call is static dispatch with no boxed future.
pub trait PolicyDecisionPoint: Send + Sync + 'static {
    type Error: DecisionError;

    /// The effect of each action on each resource, in the order asked.
    fn check(
        &self,
        request_id: &str,
        principal: &PrincipalInput<'_>,
        resources: &[ResourceCheck],
    ) -> impl Future<Output = Result<Arc<[ResourceResult]>, Self::Error>> + Send;

    /// The condition under which `principal` may do `actions` on resources of `resource.kind`.
    fn plan(
        &self,
        request_id: &str,
        principal: &PrincipalInput<'_>,
        resource: &ResourceInput,
        actions: &[String],
    ) -> impl Future<Output = Result<Plan, Self::Error>> + Send;
}

/// Why a PDP gave no decision.
pub trait DecisionError: std::error::Error + Send + Sync + 'static {
    /// Whether the question itself was refused as invalid (a denial), as opposed to a PDP that
    /// could not answer (an outage).
    fn is_refusal(&self) -> bool;
}

/// The principal of a question, borrowed from the request's principal (or an API body).
#[derive(Debug, Clone, PartialEq)]
pub struct PrincipalInput<'a> {
    pub id: &'a str,
    pub roles: SmallVec<[&'a str; 4]>,
    pub attr: Attributes<'a>,
    /// The KV revision of the stored attributes in `attr` (0: none); joins the decision cache
    /// key. Never read from a request body.
    pub attributes_revision: u64,
}

impl<'a> From<&'a crate::subject::Principal> for PrincipalInput<'a> {
    fn from(principal: &'a crate::subject::Principal) -> Self {
        Self {
            id: &principal.id,
            roles: principal.roles.iter().map(|r| &**r).collect(),
            attr: match &principal.stored {
                Some(stored) => Attributes::layered(&stored.record.attributes, &principal.claims),
                None => Attributes::new(&principal.claims),
            },
            attributes_revision: principal.attributes_revision(),
        }
    }
}

/// A principal's attributes as up to two layers: a name in `over` (stored facts) hides the same
/// name in `under` (token claims). Iterated in name order, as one map would be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    over: Option<&'a Map>,
    under: Option<&'a Map>,
}

impl<'a> Attributes<'a> {
    /// One map.
    pub fn new(map: &'a Map) -> Self {
        Self {
            over: None,
            under: Some(map),
        }
    }

    /// `over`'s entries, then `under`'s whose names `over` lacks.
    pub fn layered(over: &'a Map, under: &'a Map) -> Self {
        Self {
            over: Some(over),
            under: Some(under),
        }
    }

    /// The attribute called `name`.
    pub fn get(&self, name: &str) -> Option<&'a serde_json::Value> {
        self.over
            .and_then(|m| m.get(name))
            .or_else(|| self.under.and_then(|m| m.get(name)))
    }

    /// Every attribute, each name once, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a String, &'a serde_json::Value)> + 'a {
        Merged {
            over: self.over.map(|m| m.iter()).into_iter().flatten().peekable(),
            under: self
                .under
                .map(|m| m.iter())
                .into_iter()
                .flatten()
                .peekable(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.over.is_none_or(Map::is_empty) && self.under.is_none_or(Map::is_empty)
    }
}

impl PartialEq for Attributes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Two name-ordered iterators merged, the first's entry winning a tie.
struct Merged<I: Iterator> {
    over: std::iter::Peekable<I>,
    under: std::iter::Peekable<I>,
}

impl<'a, I> Iterator for Merged<I>
where
    I: Iterator<Item = (&'a String, &'a serde_json::Value)>,
{
    type Item = (&'a String, &'a serde_json::Value);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.over.peek(), self.under.peek()) {
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => self.over.next(),
                std::cmp::Ordering::Greater => self.under.next(),
                std::cmp::Ordering::Equal => {
                    self.under.next();
                    self.over.next()
                }
            },
            (Some(_), None) => self.over.next(),
            (None, _) => self.under.next(),
        }
    }
}

/// A principal as an API body states it (owned); [`OwnedPrincipal::as_input`] asks about it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwnedPrincipal {
    pub id: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub attr: Map,
    /// As [`PrincipalInput::attributes_revision`]; never read from a request body.
    #[serde(skip)]
    pub attributes_revision: u64,
}

impl OwnedPrincipal {
    pub fn as_input(&self) -> PrincipalInput<'_> {
        PrincipalInput {
            id: &self.id,
            roles: self.roles.iter().map(String::as_str).collect(),
            attr: Attributes::new(&self.attr),
            attributes_revision: self.attributes_revision,
        }
    }
}

/// A resource of a check.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceInput {
    pub kind: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub attr: Map,
}

/// One resource and the actions asked about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceCheck {
    pub resource: ResourceInput,
    pub actions: Vec<String>,
}

/// The effects the PDP decided for one resource, by action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceResult {
    pub id: String,
    pub kind: String,
    pub actions: BTreeMap<String, bool>,
}

impl ResourceResult {
    /// Whether every action is allowed (and there is at least one).
    pub fn all_allowed(&self) -> bool {
        !self.actions.is_empty() && self.actions.values().all(|allowed| *allowed)
    }
}

/// A query plan for listing resources.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    AlwaysAllowed,
    AlwaysDenied,
    /// Allowed where the condition holds: the expression tree, as JSON in Cerbos's own shape
    /// (`{"expression": {"operator": …, "operands": […]}}`), and a readable rendering.
    Conditional {
        tree: serde_json::Value,
        expression: String,
    },
}

/// `roles` without empty names and repeats, in first-seen order.
pub fn dedup_roles(roles: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(roles.len());
    roles
        .iter()
        .filter(|role| !role.is_empty() && seen.insert(role.as_str()))
        .cloned()
        .collect()
}

/// A decision cache key: a BLAKE3 hash of every input of the decision, walked in a canonical
/// order over the borrowed question. Equal questions hash equally (attributes are walked in
/// name order whatever their layering); any changed input changes the key, because every
/// string and sequence is length-prefixed and every JSON value tagged with its type.
pub fn decision_key(principal: &PrincipalInput<'_>, resources: &[ResourceCheck]) -> [u8; 32] {
    let mut key = KeyHasher(smallvec::SmallVec::new());
    key.u64(principal.attributes_revision);
    key.str(principal.id);
    key.len(principal.roles.len());
    for role in &principal.roles {
        key.str(role);
    }
    key.entries(principal.attr.iter());
    key.len(resources.len());
    for check in resources {
        key.str(&check.resource.kind);
        key.str(&check.resource.id);
        key.entries(check.resource.attr.iter());
        key.len(check.actions.len());
        for action in &check.actions {
            key.str(action);
        }
    }
    *blake3::hash(&key.0).as_bytes()
}

/// Writes a canonical, self-delimiting encoding of the walk, hashed once at the end: BLAKE3 of
/// the whole is the same as feeding it piece by piece, and one call over a contiguous buffer
/// costs a fraction of dozens of small `update`s (each with its own buffering). Questions of
/// the usual size fit the inline buffer; larger ones spill to the heap.
struct KeyHasher(smallvec::SmallVec<[u8; 512]>);

impl KeyHasher {
    fn update(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn u64(&mut self, n: u64) {
        self.update(&n.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        self.u64(u64::try_from(n).unwrap_or(u64::MAX));
    }

    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.update(s.as_bytes());
    }

    /// Map entries: each behind a `1`, the end a `0` (the merged count is not known up front).
    fn entries<'v>(&mut self, entries: impl Iterator<Item = (&'v String, &'v serde_json::Value)>) {
        for (name, value) in entries {
            self.tag(1);
            self.str(name);
            self.value(value);
        }
        self.tag(0);
    }

    fn value(&mut self, value: &serde_json::Value) {
        use serde_json::Value as J;
        match value {
            J::Null => self.tag(b'n'),
            J::Bool(b) => self.tag(if *b { b't' } else { b'f' }),
            J::Number(n) => {
                // serde_json keeps the three kinds apart (`1` is not `1.0`), as its text does.
                if let Some(u) = n.as_u64() {
                    self.tag(b'u');
                    self.u64(u);
                } else if let Some(i) = n.as_i64() {
                    self.tag(b'i');
                    self.update(&i.to_le_bytes());
                } else {
                    self.tag(b'd');
                    self.u64(n.as_f64().unwrap_or(f64::NAN).to_bits());
                }
            }
            J::String(s) => {
                self.tag(b's');
                self.str(s);
            }
            J::Array(items) => {
                self.tag(b'a');
                self.len(items.len());
                for item in items {
                    self.value(item);
                }
            }
            J::Object(map) => {
                self.tag(b'o');
                self.entries(map.iter());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: serde_json::Value) -> Map {
        match value {
            serde_json::Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn check(kind: &str, id: &str, attr: serde_json::Value, actions: &[&str]) -> ResourceCheck {
        ResourceCheck {
            resource: ResourceInput {
                kind: kind.into(),
                id: id.into(),
                attr: map(attr),
            },
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn principal<'a>(id: &'a str, roles: &[&'a str], attr: &'a Map) -> PrincipalInput<'a> {
        PrincipalInput {
            id,
            roles: roles.iter().copied().collect(),
            attr: Attributes::new(attr),
            attributes_revision: 0,
        }
    }

    #[test]
    fn equal_questions_share_a_key_and_any_difference_changes_it() {
        let attr = map(json!({"dept": "eng", "level": 3, "tags": ["a", {"b": null}]}));
        // Built in another insertion order: the same map.
        let mut same = Map::new();
        same.insert("tags".into(), json!(["a", {"b": null}]));
        same.insert("level".into(), json!(3));
        same.insert("dept".into(), json!("eng"));
        let resources = [check(
            "doc",
            "1",
            json!({"owner": "alice"}),
            &["view", "edit"],
        )];
        let base = decision_key(&principal("alice", &["user"], &attr), &resources);
        assert_eq!(
            base,
            decision_key(&principal("alice", &["user"], &same), &resources.clone())
        );

        let mut keys = vec![base];
        let mut differs = |key: [u8; 32], what: &str| {
            assert!(!keys.contains(&key), "{what}: collides with an earlier key");
            keys.push(key);
        };
        let revised = PrincipalInput {
            attributes_revision: 7,
            ..principal("alice", &["user"], &attr)
        };
        differs(decision_key(&revised, &resources), "revision");
        differs(
            decision_key(&principal("bob", &["user"], &attr), &resources),
            "id",
        );
        differs(
            decision_key(&principal("alice", &["user", "admin"], &attr), &resources),
            "roles",
        );
        // Boundaries between strings move: `id` + `roles` re-split the same characters.
        differs(
            decision_key(&principal("aliceu", &["ser"], &attr), &resources),
            "id/role boundary",
        );
        for (i, changed) in [
            json!({"dept": "eng", "level": 3.0, "tags": ["a", {"b": null}]}),
            json!({"dept": "eng", "level": "3", "tags": ["a", {"b": null}]}),
            json!({"dept": "eng", "level": 3, "tags": ["a", {"b": false}]}),
            json!({"dept": "eng", "level": 3, "tags": [["a"], {"b": null}]}),
            json!({"dept": "eng", "level": 3, "tags": ["a", {"b": null}], "x": null}),
            json!({"dept": "eng", "level": -3, "tags": ["a", {"b": null}]}),
            json!({"dept": "eng", "tags": ["a", {"b": null}]}),
        ]
        .into_iter()
        .enumerate()
        {
            let changed = map(changed);
            differs(
                decision_key(&principal("alice", &["user"], &changed), &resources),
                &format!("principal attribute change {i}"),
            );
        }
        let variants = [
            check("doc", "2", json!({"owner": "alice"}), &["view", "edit"]),
            check("do", "c1", json!({"owner": "alice"}), &["view", "edit"]),
            check("doc", "1", json!({"owner": "bob"}), &["view", "edit"]),
            check("doc", "1", json!({"owner": "alice"}), &["edit", "view"]),
            check("doc", "1", json!({"owner": "alice"}), &["viewedit"]),
            check("doc", "1", json!({}), &["view", "edit"]),
        ];
        for (i, variant) in variants.into_iter().enumerate() {
            differs(
                decision_key(&principal("alice", &["user"], &attr), &[variant]),
                &format!("resource change {i}"),
            );
        }
        let two = [resources[0].clone(), resources[0].clone()];
        differs(
            decision_key(&principal("alice", &["user"], &attr), &two),
            "a resource asked twice",
        );
    }

    #[test]
    fn layered_attributes_read_and_hash_as_their_merge() {
        let stored = map(json!({"dept": "ops", "plan": "enterprise"}));
        let claims = map(json!({"dept": "eng", "email": "a@example.com", "zone": 1}));
        let merged =
            map(json!({"dept": "ops", "email": "a@example.com", "plan": "enterprise", "zone": 1}));
        let layered = Attributes::layered(&stored, &claims);
        assert_eq!(layered.get("dept"), Some(&json!("ops")));
        assert_eq!(layered.get("zone"), Some(&json!(1)));
        assert_eq!(layered.get("nope"), None);
        let names: Vec<&str> = layered.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["dept", "email", "plan", "zone"]);
        assert_eq!(layered, Attributes::new(&merged));
        let as_layers = PrincipalInput {
            attr: layered,
            ..principal("alice", &["user"], &merged)
        };
        let resources = [check("doc", "1", json!({}), &["view"])];
        assert_eq!(
            decision_key(&as_layers, &resources),
            decision_key(&principal("alice", &["user"], &merged), &resources)
        );
        assert!(Attributes::default().is_empty());
        assert!(!layered.is_empty());
    }

    #[test]
    fn a_principal_is_borrowed_as_it_is() {
        let p = crate::subject::Principal::new(
            "alice",
            vec!["user".into(), "editor".into()],
            map(json!({"dept": "eng"})),
            "bearer",
        );
        let owned = OwnedPrincipal {
            id: "alice".into(),
            roles: vec!["user".into(), "editor".into()],
            attr: map(json!({"dept": "eng"})),
            attributes_revision: 0,
        };
        let input = PrincipalInput::from(&p);
        assert_eq!(input.id, "alice");
        assert_eq!(input.roles.as_slice(), ["user", "editor"]);
        assert_eq!(input.attr.get("dept"), Some(&json!("eng")));
        assert_eq!(owned.as_input(), input);
    }
}
