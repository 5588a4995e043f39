//! The compiled request matcher: host, then path, then method, without scanning every rule.
//!
//! Hosts are grouped (exact names in a hash map, `*.suffix` wildcards longest first, then any
//! host); each group holds radix-tree routers (`matchit`) per method plus one for any method,
//! once for case-sensitive rules and once, over lower-cased paths, for `case_insensitive` ones.
//! The most specific match wins: a more specific host beats a more specific path, which beats a
//! specific method.
//!
//! Matching reads the canonical path ([`crate::canonical`]) and means what a rule says:
//! `/admin/*rest` also covers `/admin` and `/admin/`, and a trailing slash never moves a request
//! to another rule (`/api/documents/1/` is judged by the rule for `/api/documents/:id`).

use std::borrow::Cow;
use std::collections::HashMap;

use smallvec::SmallVec;

use crate::canonical::{PathPolicy, canonical_host, canonical_path};

/// Path parameters of a match, decoded.
pub type Captures<'a> = SmallVec<[(&'a str, Cow<'a, str>); 4]>;

#[derive(Debug, Clone, Copy)]
struct Route {
    rule: usize,
    score: u32,
    /// For the prefix route a catch-all implies (`/admin` for `/admin/*rest`): the index of the
    /// catch-all's name in [`Matcher::names`], captured as empty.
    empty_capture: Option<usize>,
}

#[derive(Default)]
struct Routers {
    by_method: Vec<(Box<str>, matchit::Router<Route>)>,
    any: matchit::Router<Route>,
}

impl Routers {
    fn router_mut(&mut self, method: Option<&str>) -> &mut matchit::Router<Route> {
        let Some(m) = method else {
            return &mut self.any;
        };
        let position = match self.by_method.iter().position(|(name, _)| &**name == m) {
            Some(i) => i,
            None => {
                self.by_method.push((Box::from(m), matchit::Router::new()));
                self.by_method.len() - 1
            }
        };
        // `position` indexes an element that exists; `any` is never reached.
        match self.by_method.get_mut(position) {
            Some((_, router)) => router,
            None => &mut self.any,
        }
    }

    /// The best of the method-specific and the any-method match of `path`, ties to the
    /// specific method. Parameters are returned as byte ranges of `path`.
    fn find<'r>(&'r self, method: &str, path: &str, best: &mut Option<Hit<'r>>) {
        let specific = self
            .by_method
            .iter()
            .find(|(m, _)| &**m == method)
            .map(|(_, router)| router);
        for router in specific.into_iter().chain(std::iter::once(&self.any)) {
            if let Ok(found) = router.at(path)
                && best
                    .as_ref()
                    .is_none_or(|b| found.value.score > b.route.score)
            {
                let base = path.as_ptr().addr();
                *best = Some(Hit {
                    route: *found.value,
                    params: found
                        .params
                        .iter()
                        .map(|(name, value)| {
                            let start = value.as_ptr().addr().saturating_sub(base);
                            (name, start, start + value.len())
                        })
                        .collect(),
                });
            }
        }
    }
}

/// A router match: the route and its parameters as `(name, start, end)` in the path looked up.
struct Hit<'r> {
    route: Route,
    params: SmallVec<[(&'r str, usize, usize); 4]>,
}

#[derive(Default)]
struct MethodTable {
    exact_case: Routers,
    folded_case: Routers,
    /// `(method or "*", case-folded?, normalized route)` → rule id, to name both rules of a
    /// conflict.
    owners: HashMap<(Box<str>, bool, String), String>,
    /// Whether any route is case-insensitive (else `folded_case` is not searched).
    any_folded: bool,
}

/// A path pattern translated for the router, with its specificity.
#[derive(Debug, Clone)]
pub struct PathPattern {
    route: String,
    score: u32,
    /// The prefix a trailing catch-all also covers, with the catch-all's name.
    prefix: Option<(String, String)>,
}

/// A route's specificity: literal characters and segments count, a catch-all counts less than
/// a whole route, and an implied prefix route less than the same route written out.
fn score(literal: u32, catch_all: bool) -> u32 {
    literal
        .saturating_mul(4)
        .saturating_add(if catch_all { 0 } else { 2 })
}

impl PathPattern {
    /// Parses `/documents/:id`, `/files/*rest` or a literal path. Literal segments must be in
    /// canonical form (see [`crate::canonical`]), since they are compared with canonical paths.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path `{pattern}` must start with `/`"));
        }
        if pattern.len() > 1 && pattern.ends_with('/') {
            return Err(format!(
                "path `{pattern}` must not end with `/`: `{}` also matches it",
                pattern.trim_end_matches('/')
            ));
        }
        let mut route = String::with_capacity(pattern.len() + 8);
        let mut literal = 0u32;
        let mut prefix = None;
        let mut names: Vec<&str> = Vec::new();
        let segments: Vec<&str> = pattern.split('/').skip(1).collect();
        for (i, segment) in segments.iter().enumerate() {
            if let Some(name) = segment.strip_prefix('*') {
                if i + 1 != segments.len() {
                    return Err(format!(
                        "path `{pattern}`: `*{name}` must be the last segment"
                    ));
                }
                check_name(pattern, name, &mut names)?;
                let bare = if route.is_empty() {
                    "/"
                } else {
                    route.as_str()
                };
                prefix = Some((bare.to_owned(), name.to_owned()));
                route.push_str("/{*");
                route.push_str(name);
                route.push('}');
                continue;
            }
            route.push('/');
            literal += 1;
            if let Some(name) = segment.strip_prefix(':') {
                check_name(pattern, name, &mut names)?;
                route.push('{');
                route.push_str(name);
                route.push('}');
            } else if segment.is_empty() && segments.len() == 1 {
                // The root, `/`.
            } else {
                if segment.contains([':', '*']) {
                    return Err(format!(
                        "path `{pattern}`: `:name` and `*name` must fill a whole segment"
                    ));
                }
                let written = format!("/{segment}");
                match canonical_path(&written, &PathPolicy::default()) {
                    Ok(canonical) if canonical == written && !segment.is_empty() => {}
                    Ok(canonical) => {
                        return Err(format!(
                            "path `{pattern}`: segment `{segment}` is not canonical (requests are matched as `{}`)",
                            canonical.trim_start_matches('/')
                        ));
                    }
                    Err(refusal) => {
                        return Err(format!(
                            "path `{pattern}`: segment `{segment}` can never match: {refusal}"
                        ));
                    }
                }
                literal += u32::try_from(segment.len()).unwrap_or(u32::MAX / 8);
                // The router's own syntax uses braces; a literal brace is doubled.
                route.push_str(&segment.replace('{', "{{").replace('}', "}}"));
            }
        }
        let catch_all = prefix.is_some();
        Ok(Self {
            route,
            score: score(literal, catch_all),
            prefix,
        })
    }
}

fn check_name<'a>(pattern: &str, name: &'a str, names: &mut Vec<&'a str>) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "path `{pattern}`: parameter name `{name}` must be letters, digits or `_`"
        ));
    }
    if names.contains(&name) {
        return Err(format!(
            "path `{pattern}`: parameter `{name}` appears twice"
        ));
    }
    names.push(name);
    Ok(())
}

/// One route to insert.
struct Insert<'a> {
    method: Option<&'a str>,
    route: &'a str,
    value: Route,
    folded: bool,
    rule_id: &'a str,
}

impl MethodTable {
    /// Inserts a route written in a rule; two rules claiming the same route are an error.
    fn insert(&mut self, insert: &Insert<'_>) -> Result<(), String> {
        let route = if insert.folded {
            Cow::Owned(fold_route(insert.route))
        } else {
            Cow::Borrowed(insert.route)
        };
        let key = (
            Box::from(insert.method.unwrap_or("*")),
            insert.folded,
            route.clone().into_owned(),
        );
        if let Some(owner) = self.owners.get(&key) {
            if owner == insert.rule_id {
                // The same rule twice (its own pattern and a prefix it implies): nothing to do.
                return Ok(());
            }
            return Err(format!(
                "rule `{}` and rule `{owner}` both match {} `{}`",
                insert.rule_id,
                insert.method.unwrap_or("any method"),
                insert.route
            ));
        }
        self.any_folded |= insert.folded;
        let routers = if insert.folded {
            &mut self.folded_case
        } else {
            &mut self.exact_case
        };
        routers
            .router_mut(insert.method)
            .insert(route.as_ref(), insert.value)
            .map_err(|e| {
                format!(
                    "rule `{}`: path `{}` cannot be routed: {e}",
                    insert.rule_id, insert.route
                )
            })?;
        self.owners.insert(key, insert.rule_id.to_owned());
        Ok(())
    }

    /// Inserts the prefix route a catch-all implies, unless a rule wrote that route out.
    fn insert_implied(&mut self, insert: &Insert<'_>) {
        let key = (
            Box::from(insert.method.unwrap_or("*")),
            insert.folded,
            if insert.folded {
                fold_route(insert.route)
            } else {
                insert.route.to_owned()
            },
        );
        if !self.owners.contains_key(&key) {
            let _ = self.insert(insert);
        }
    }

    /// The best match of `path` (and of `folded`, its lower-case form, for case-insensitive
    /// rules), also without a trailing slash.
    fn find<'r>(&'r self, method: &str, path: &str, folded: &str) -> Option<Hit<'r>> {
        let mut best = None;
        let trimmed = (path.len() > 1).then(|| path.strip_suffix('/')).flatten();
        for candidate in std::iter::once(path).chain(trimmed) {
            self.exact_case.find(method, candidate, &mut best);
            if self.any_folded {
                let folded = folded.get(..candidate.len()).unwrap_or(folded);
                self.folded_case.find(method, folded, &mut best);
            }
        }
        best
    }
}

/// A route with its literal parts lower-cased, parameter names kept (`/Docs/{Id}` →
/// `/docs/{Id}`).
fn fold_route(route: &str) -> String {
    let mut out = String::with_capacity(route.len());
    let mut chars = route.chars().peekable();
    let mut in_param = false;
    while let Some(c) = chars.next() {
        match c {
            '{' if !in_param && chars.peek() == Some(&'{') => {
                out.push_str("{{");
                chars.next();
            }
            '{' if !in_param => {
                in_param = true;
                out.push(c);
            }
            '}' if in_param => {
                in_param = false;
                out.push(c);
            }
            c if in_param => out.push(c),
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

/// Which group of hosts a rule's host belongs to.
#[derive(Clone)]
enum HostKey {
    Exact(Box<str>),
    Wildcard(Box<str>),
    Any,
}

/// A prefix route a catch-all implies, waiting for [`Matcher::finish`].
struct Implied {
    host: HostKey,
    method: Option<Box<str>>,
    route: String,
    value: Route,
    folded: bool,
    rule_id: String,
}

/// Finds the rule for a request.
#[derive(Default)]
pub struct Matcher {
    exact: HashMap<Box<str>, MethodTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(Box<str>, MethodTable)>,
    any_host: MethodTable,
    /// Catch-all names captured empty by implied prefix routes.
    names: Vec<Box<str>>,
    /// Implied prefix routes, inserted by [`Matcher::finish`] after every written route.
    implied: Vec<Implied>,
    /// Whether any rule matches paths case-insensitively (else no lower-case copy is made).
    any_folded: bool,
}

/// A match: the rule index and its decoded path parameters.
pub struct Found<'a> {
    pub rule: usize,
    pub captures: Captures<'a>,
}

/// What one rule matches.
pub struct RuleMatch<'a> {
    pub hosts: &'a [String],
    pub paths: &'a [PathPattern],
    pub methods: &'a [String],
    pub case_insensitive: bool,
}

impl Matcher {
    fn table(&mut self, key: &HostKey) -> &mut MethodTable {
        match key {
            HostKey::Any => &mut self.any_host,
            HostKey::Exact(host) => self.exact.entry(host.clone()).or_default(),
            HostKey::Wildcard(suffix) => {
                let position = match self.wildcard.iter().position(|(s, _)| s == suffix) {
                    Some(p) => p,
                    None => {
                        self.wildcard.push((suffix.clone(), MethodTable::default()));
                        self.wildcard.len() - 1
                    }
                };
                match self.wildcard.get_mut(position) {
                    Some((_, table)) => table,
                    None => &mut self.any_host,
                }
            }
        }
    }

    fn host_key(rule_id: &str, host: &str) -> Result<HostKey, String> {
        let invalid = || {
            format!("rule `{rule_id}`: host `{host}` must be a name, `*.domain` or `*` (no port)")
        };
        if host == "*" {
            return Ok(HostKey::Any);
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, host),
        };
        if name.contains(['*', ':', '@']) {
            return Err(invalid());
        }
        let canonical = canonical_host(name).map_err(|_| invalid())?;
        Ok(if wildcard {
            HostKey::Wildcard(Box::from(format!(".{canonical}")))
        } else {
            HostKey::Exact(Box::from(canonical.as_ref()))
        })
    }

    /// Adds a rule for every host × path × method combination.
    pub fn add(&mut self, rule: usize, rule_id: &str, spec: &RuleMatch<'_>) -> Result<(), String> {
        let hosts: Vec<HostKey> = if spec.hosts.is_empty() {
            vec![HostKey::Any]
        } else {
            spec.hosts
                .iter()
                .map(|h| Self::host_key(rule_id, h))
                .collect::<Result<_, _>>()?
        };
        self.any_folded |= spec.case_insensitive;
        let methods: Vec<Option<&str>> = if spec.methods.is_empty() {
            vec![None]
        } else {
            spec.methods.iter().map(|m| Some(m.as_str())).collect()
        };
        for host in &hosts {
            for path in spec.paths {
                let value = Route {
                    rule,
                    score: path.score,
                    empty_capture: None,
                };
                for method in &methods {
                    self.table(host).insert(&Insert {
                        method: *method,
                        route: &path.route,
                        value,
                        folded: spec.case_insensitive,
                        rule_id,
                    })?;
                    if let Some((prefix, name)) = &path.prefix {
                        self.names.push(Box::from(name.as_str()));
                        let implied = Route {
                            rule,
                            score: path.score.saturating_sub(1),
                            empty_capture: Some(self.names.len() - 1),
                        };
                        self.implied.push(Implied {
                            host: host.clone(),
                            method: method.map(Box::from),
                            route: prefix.clone(),
                            value: implied,
                            folded: spec.case_insensitive,
                            rule_id: rule_id.to_owned(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Inserts the prefix routes catch-alls imply, where no rule wrote the route out. Call once
    /// every rule is added.
    pub fn finish(&mut self) {
        self.wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        for implied in std::mem::take(&mut self.implied) {
            self.table(&implied.host).insert_implied(&Insert {
                method: implied.method.as_deref(),
                route: &implied.route,
                value: implied.value,
                folded: implied.folded,
                rule_id: &implied.rule_id,
            });
        }
    }

    /// The most specific rule for `method host path` (all three canonical).
    pub fn find<'a>(&'a self, method: &str, host: &str, path: &'a str) -> Option<Found<'a>> {
        let folded: Cow<'_, str> =
            if self.any_folded && path.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(path.to_ascii_lowercase())
            } else {
                Cow::Borrowed(path)
            };
        let hit = self
            .exact
            .get(host)
            .and_then(|t| t.find(method, path, &folded))
            .or_else(|| {
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                    .find_map(|(_, t)| t.find(method, path, &folded))
            })
            .or_else(|| self.any_host.find(method, path, &folded))?;
        let mut captures: Captures<'a> = hit
            .params
            .iter()
            .map(|&(name, start, end)| {
                let raw = path.get(start..end).unwrap_or("");
                let value = if raw.contains('%') {
                    percent_encoding::percent_decode_str(raw).decode_utf8_lossy()
                } else {
                    Cow::Borrowed(raw)
                };
                (name, value)
            })
            .collect();
        if let Some(name) = hit.route.empty_capture.and_then(|i| self.names.get(i)) {
            captures.push((name, Cow::Borrowed("")));
        }
        Some(Found {
            rule: hit.route.rule,
            captures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(rule id, hosts, paths, methods)`.
    type RuleRow<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    fn matcher(rules: &[RuleRow<'_>]) -> Matcher {
        let mut m = Matcher::default();
        for (i, (id, hosts, paths, methods)) in rules.iter().enumerate() {
            let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
            let paths: Vec<PathPattern> = paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect();
            let methods: Vec<String> = methods.iter().map(|s| s.to_string()).collect();
            let spec = RuleMatch {
                hosts: &hosts,
                paths: &paths,
                methods: &methods,
                case_insensitive: id.ends_with("_ci"),
            };
            m.add(i, id, &spec).unwrap();
        }
        m.finish();
        m
    }

    #[test]
    fn most_specific_wins() {
        let m = matcher(&[
            ("catch_all", &[], &["/*rest"], &[]),
            ("documents", &[], &["/documents/:id"], &[]),
            ("documents_put", &[], &["/documents/:id"], &["PUT"]),
            ("host", &["api.example.com"], &["/*rest"], &[]),
            ("wild", &["*.example.com"], &["/documents/:id"], &["GET"]),
            ("literal", &[], &["/documents/new"], &[]),
        ]);
        let rule = |method, host, path| m.find(method, host, path).map(|f| f.rule);
        assert_eq!(rule("GET", "other", "/documents/42"), Some(1));
        assert_eq!(rule("PUT", "other", "/documents/42"), Some(2));
        assert_eq!(rule("GET", "other", "/documents/new"), Some(5));
        assert_eq!(rule("GET", "other", "/x/y"), Some(0));
        assert_eq!(rule("GET", "api.example.com", "/documents/1"), Some(3));
        assert_eq!(rule("GET", "a.example.com", "/documents/1"), Some(4));
        // A wildcard host table without a matching method falls through to any host.
        assert_eq!(rule("POST", "a.example.com", "/documents/1"), Some(1));
        assert_eq!(rule("GET", "example.com", "/documents/1"), Some(1));
    }

    #[test]
    fn captures_are_decoded() {
        let m = matcher(&[
            ("files", &[], &["/files/*path"], &[]),
            ("doc", &[], &["/documents/:id"], &[]),
        ]);
        let found = m.find("GET", "h", "/files/a/b%20c").unwrap();
        assert_eq!(
            found.captures.as_slice(),
            &[("path", Cow::Borrowed("a/b c"))]
        );
        let found = m.find("GET", "h", "/documents/x%3Fy").unwrap();
        assert_eq!(found.captures[0].1, "x?y");
        assert!(m.find("GET", "h", "/other").is_none());
    }

    #[test]
    fn conflicts_name_both_rules() {
        let mut m = Matcher::default();
        let p = [PathPattern::parse("/a/:id").unwrap()];
        let get = ["GET".to_string()];
        let spec = RuleMatch {
            hosts: &[],
            paths: &p,
            methods: &get,
            case_insensitive: false,
        };
        m.add(0, "first", &spec).unwrap();
        let err = m.add(1, "second", &spec).unwrap_err();
        assert!(err.contains("`second`") && err.contains("`first`"), "{err}");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("documents").is_err());
        assert!(PathPattern::parse("/files/*rest/more").is_err());
        assert!(PathPattern::parse("/a/:").is_err());
        assert!(PathPattern::parse("/a/b:c").is_err());
        assert!(PathPattern::parse("/a/:x/:x").is_err());
        // Literal segments are compared with canonical paths: other spellings never match.
        for pattern in [
            "/a//b", "/a/../b", "/a;b", "/%61", "/a%2fb", "/a/", "/a/./b",
        ] {
            assert!(PathPattern::parse(pattern).is_err(), "{pattern}");
        }
        assert!(PathPattern::parse("/a%3Fb").is_ok());
    }

    #[test]
    fn catch_all_covers_its_prefix() {
        let m = matcher(&[
            ("root", &[], &["/*path"], &[]),
            ("admin", &[], &["/admin/*rest"], &[]),
            ("exact", &[], &["/docs", "/docs/*rest"], &[]),
            ("explicit", &[], &["/files"], &["GET"]),
            ("files", &[], &["/files/*rest"], &[]),
        ]);
        let found = |path| {
            m.find("GET", "h", path)
                .map(|f| (f.rule, f.captures.to_vec()))
        };
        assert_eq!(
            found("/admin"),
            Some((1, vec![("rest", Cow::Borrowed(""))]))
        );
        assert_eq!(
            found("/admin/"),
            Some((1, vec![("rest", Cow::Borrowed(""))]))
        );
        assert_eq!(
            found("/admin/x"),
            Some((1, vec![("rest", Cow::Borrowed("x"))]))
        );
        assert_eq!(found("/administrator").map(|f| f.0), Some(0));
        assert_eq!(found("/").map(|f| f.0), Some(0));
        assert_eq!(found("/docs").map(|f| f.0), Some(2));
        // A route written out beats the one a catch-all implies.
        assert_eq!(found("/files").map(|f| f.0), Some(3));
        assert_eq!(m.find("POST", "h", "/files").map(|f| f.rule), Some(4));
    }

    #[test]
    fn a_trailing_slash_never_changes_the_rule() {
        let m = matcher(&[
            ("api", &[], &["/api/*rest"], &[]),
            (
                "documents",
                &[],
                &["/api/documents", "/api/documents/:id"],
                &["PUT"],
            ),
        ]);
        let rule = |path| m.find("PUT", "h", path).map(|f| f.rule);
        assert_eq!(rule("/api/documents/1"), Some(1));
        assert_eq!(rule("/api/documents/1/"), Some(1));
        assert_eq!(rule("/api/documents/"), Some(1));
        assert_eq!(rule("/api/other/"), Some(0));
    }

    #[test]
    fn case_insensitive_rules_match_any_case() {
        let m = matcher(&[
            ("root", &[], &["/*path"], &[]),
            ("admin_ci", &[], &["/Admin/*rest", "/Docs/:Id"], &[]),
        ]);
        let found = |path| {
            m.find("GET", "h", path)
                .map(|f| (f.rule, f.captures.to_vec()))
        };
        assert_eq!(found("/ADMIN/x").map(|f| f.0), Some(1));
        assert_eq!(found("/admin").map(|f| f.0), Some(1));
        assert_eq!(found("/aDmIn/").map(|f| f.0), Some(1));
        // Captures keep the case the request had.
        assert_eq!(
            found("/DOCS/AbC"),
            Some((1, vec![("Id", Cow::Borrowed("AbC"))]))
        );
        let sensitive = matcher(&[
            ("root", &[], &["/*path"], &[]),
            ("admin", &[], &["/admin/*rest"], &[]),
        ]);
        assert_eq!(
            sensitive.find("GET", "h", "/Admin/x").map(|f| f.rule),
            Some(0)
        );
    }

    #[test]
    fn rule_hosts_are_canonical() {
        let m = matcher(&[
            ("any", &[], &["/*path"], &[]),
            ("host", &["API.Example.com."], &["/*path"], &[]),
            ("wild", &["*.Example.org"], &["/*path"], &[]),
        ]);
        assert_eq!(
            m.find("GET", "api.example.com", "/x").map(|f| f.rule),
            Some(1)
        );
        assert_eq!(
            m.find("GET", "a.example.org", "/x").map(|f| f.rule),
            Some(2)
        );
        for host in ["api.example.com:443", "user@api", "*.a.*"] {
            let hosts = [host.to_string()];
            let spec = RuleMatch {
                hosts: &hosts,
                paths: &[],
                methods: &[],
                case_insensitive: false,
            };
            assert!(Matcher::default().add(0, "r", &spec).is_err(), "{host}");
        }
    }
}
