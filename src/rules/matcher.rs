//! The compiled request matcher: host, then path, then method, without scanning every rule.
//!
//! Hosts are grouped (exact names in a hash map, `*.suffix` wildcards longest first, then any
//! host); each group holds radix-tree routers (`matchit`) per method plus one for any method.
//! The most specific match wins: a more specific host beats a more specific path, which beats a
//! specific method.

use std::borrow::Cow;
use std::collections::HashMap;

use smallvec::SmallVec;

/// Path parameters of a match, decoded.
pub type Captures<'a> = SmallVec<[(&'a str, Cow<'a, str>); 4]>;

#[derive(Debug, Clone, Copy)]
struct Route {
    rule: usize,
    score: u32,
}

#[derive(Default)]
struct MethodTable {
    by_method: Vec<(Box<str>, matchit::Router<Route>)>,
    any: matchit::Router<Route>,
    /// `(method or "*", normalized pattern)` → rule id, to name both rules of a conflict.
    owners: HashMap<(Box<str>, String), String>,
}

/// A path pattern translated for the router, with its specificity.
#[derive(Debug, Clone)]
pub struct PathPattern {
    route: String,
    score: u32,
}

impl PathPattern {
    /// Parses `/documents/:id`, `/files/*rest` or a literal path.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path `{pattern}` must start with `/`"));
        }
        let mut route = String::with_capacity(pattern.len() + 8);
        let mut literal = 0u32;
        let mut catch_all = false;
        let mut names: Vec<&str> = Vec::new();
        let segments: Vec<&str> = pattern.split('/').skip(1).collect();
        for (i, segment) in segments.iter().enumerate() {
            route.push('/');
            literal += 1;
            if let Some(name) = segment.strip_prefix(':') {
                check_name(pattern, name, &mut names)?;
                route.push('{');
                route.push_str(name);
                route.push('}');
            } else if let Some(name) = segment.strip_prefix('*') {
                if i + 1 != segments.len() {
                    return Err(format!(
                        "path `{pattern}`: `*{name}` must be the last segment"
                    ));
                }
                check_name(pattern, name, &mut names)?;
                route.push_str("{*");
                route.push_str(name);
                route.push('}');
                catch_all = true;
            } else {
                if segment.contains([':', '*']) {
                    return Err(format!(
                        "path `{pattern}`: `:name` and `*name` must fill a whole segment"
                    ));
                }
                literal += u32::try_from(segment.len()).unwrap_or(u32::MAX / 8);
                // The router's own syntax uses braces; a literal brace is doubled.
                route.push_str(&segment.replace('{', "{{").replace('}', "}}"));
            }
        }
        let score = literal
            .saturating_mul(4)
            .saturating_add(if catch_all { 0 } else { 2 });
        Ok(Self { route, score })
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

impl MethodTable {
    fn insert(
        &mut self,
        method: Option<&str>,
        pattern: &PathPattern,
        rule: usize,
        rule_id: &str,
    ) -> Result<(), String> {
        let key = (Box::from(method.unwrap_or("*")), pattern.route.clone());
        if let Some(owner) = self.owners.get(&key) {
            return Err(format!(
                "rule `{rule_id}` and rule `{owner}` both match {} `{}`",
                method.unwrap_or("any method"),
                pattern.route
            ));
        }
        let router = match method {
            None => &mut self.any,
            Some(m) => match self.by_method.iter().position(|(name, _)| &**name == m) {
                Some(i) => match self.by_method.get_mut(i) {
                    Some((_, r)) => r,
                    None => return Err("internal: method table index".into()),
                },
                None => {
                    self.by_method.push((Box::from(m), matchit::Router::new()));
                    match self.by_method.last_mut() {
                        Some((_, r)) => r,
                        None => return Err("internal: method table push".into()),
                    }
                }
            },
        };
        router
            .insert(
                pattern.route.clone(),
                Route {
                    rule,
                    score: pattern.score,
                },
            )
            .map_err(|e| {
                format!(
                    "rule `{rule_id}`: path `{}` cannot be routed: {e}",
                    pattern.route
                )
            })?;
        self.owners.insert(key, rule_id.to_owned());
        Ok(())
    }

    fn find<'r, 'p>(
        &'r self,
        method: &str,
        path: &'p str,
    ) -> Option<matchit::Match<'r, 'p, &'r Route>> {
        let specific = self
            .by_method
            .iter()
            .find(|(m, _)| &**m == method)
            .and_then(|(_, r)| r.at(path).ok());
        let any = self.any.at(path).ok();
        match (specific, any) {
            (Some(s), Some(a)) => Some(if a.value.score > s.value.score { a } else { s }),
            (s, a) => s.or(a),
        }
    }
}

/// Finds the rule for a request.
#[derive(Default)]
pub struct Matcher {
    exact: HashMap<Box<str>, MethodTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard: Vec<(Box<str>, MethodTable)>,
    any_host: MethodTable,
}

/// A match: the rule index and its decoded path parameters.
pub struct Found<'a> {
    pub rule: usize,
    pub captures: Captures<'a>,
}

impl Matcher {
    /// Adds a rule for every host × path × method combination.
    pub fn add(
        &mut self,
        rule: usize,
        rule_id: &str,
        hosts: &[String],
        paths: &[PathPattern],
        methods: &[String],
    ) -> Result<(), String> {
        let any_host = [String::from("*")];
        let hosts = if hosts.is_empty() {
            &any_host[..]
        } else {
            hosts
        };
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let table = if host == "*" {
                &mut self.any_host
            } else if let Some(suffix) = host.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                    return Err(format!(
                        "rule `{rule_id}`: host `{host}` must be a name, `*.domain` or `*`"
                    ));
                }
                let position = match self.wildcard.iter().position(|(s, _)| **s == *suffix) {
                    Some(p) => p,
                    None => {
                        self.wildcard
                            .push((Box::from(suffix), MethodTable::default()));
                        self.wildcard.len() - 1
                    }
                };
                match self.wildcard.get_mut(position) {
                    Some((_, t)) => t,
                    None => return Err("internal: wildcard index".into()),
                }
            } else {
                if host.contains(['*', '/', ' ']) || host.is_empty() {
                    return Err(format!(
                        "rule `{rule_id}`: host `{host}` must be a name, `*.domain` or `*`"
                    ));
                }
                self.exact.entry(Box::from(host.as_str())).or_default()
            };
            for path in paths {
                if methods.is_empty() {
                    table.insert(None, path, rule, rule_id)?;
                }
                for method in methods {
                    table.insert(Some(method), path, rule, rule_id)?;
                }
            }
        }
        self.wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(())
    }

    /// The most specific rule for `method host path`.
    pub fn find<'a>(&'a self, method: &str, host: &str, path: &'a str) -> Option<Found<'a>> {
        let lowered: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let host = lowered.as_ref();
        let found = self
            .exact
            .get(host)
            .and_then(|t| t.find(method, path))
            .or_else(|| {
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                    .find_map(|(_, t)| t.find(method, path))
            })
            .or_else(|| self.any_host.find(method, path))?;
        let captures = found
            .params
            .iter()
            .map(|(name, value)| {
                (
                    name,
                    percent_encoding::percent_decode_str(value).decode_utf8_lossy(),
                )
            })
            .collect();
        Some(Found {
            rule: found.value.rule,
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
            m.add(i, id, &hosts, &paths, &methods).unwrap();
        }
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
        assert_eq!(rule("GET", "API.example.com", "/documents/1"), Some(3));
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
        let found = m.find("GET", "h", "/documents/x%2Fy").unwrap();
        assert_eq!(found.captures[0].1, "x/y");
        assert!(m.find("GET", "h", "/other").is_none());
    }

    #[test]
    fn conflicts_name_both_rules() {
        let mut m = Matcher::default();
        let p = [PathPattern::parse("/a/:id").unwrap()];
        m.add(0, "first", &[], &p, &["GET".into()]).unwrap();
        let err = m.add(1, "second", &[], &p, &["GET".into()]).unwrap_err();
        assert!(err.contains("`second`") && err.contains("`first`"), "{err}");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("documents").is_err());
        assert!(PathPattern::parse("/files/*rest/more").is_err());
        assert!(PathPattern::parse("/a/:").is_err());
        assert!(PathPattern::parse("/a/b:c").is_err());
        assert!(PathPattern::parse("/a/:x/:x").is_err());
    }
}
