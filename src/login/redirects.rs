//! The redirect allow-list: where a login or logout may send the browser afterwards. Anything
//! not provably on an allowed origin (and under an allowed path prefix) is refused, so
//! `/auth/login` is never an open redirect.
//!
//! The check runs on the URL as a browser would read it, after refusing every spelling that
//! browsers and URL parsers read differently: backslashes (`https:\\evil` is `https://evil`
//! to a browser), control characters and spaces (the WHATWG parser drops tabs and newlines
//! silently), non-ASCII text (look-alike hosts), userinfo (`https://app@evil`), and
//! scheme-relative or otherwise relative forms other than one absolute path.

use openidconnect::url::Url;

/// The most a `redirect_uri` may be.
const MAX_REDIRECT_BYTES: usize = 2048;

/// One allowed origin, with a path prefix when the entry has one.
#[derive(Debug, Clone)]
struct Allowed {
    origin: openidconnect::url::Origin,
    /// `None`: the whole origin. Otherwise a path that ends with `/`, or that a matching
    /// path equals or continues with `/`.
    prefix: Option<String>,
}

/// The parsed allow-list, with the origin relative redirects resolve against.
#[derive(Debug, Clone)]
pub struct AllowList {
    allowed: Vec<Allowed>,
    base: Url,
}

impl AllowList {
    /// `entries` are origins or URL prefixes; `base` (heimdall's public callback URL) is what a
    /// relative redirect (`/app`) resolves against.
    pub fn new(entries: &[String], base: &str) -> Result<Self, String> {
        let base = Url::parse(base).map_err(|e| format!("`redirect_url` is not a URL: {e}"))?;
        let mut allowed = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.trim();
            let url = Url::parse(entry).map_err(|e| {
                format!(
                    "`{}` is not an absolute URL: {e}",
                    crate::redact::untrusted(entry, 200)
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "`{}` is not an http(s) origin or URL prefix",
                    crate::redact::untrusted(entry, 200)
                ));
            }
            if !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(format!(
                    "`{}` has userinfo, a query or a fragment; an entry is an origin or a path prefix",
                    crate::redact::untrusted(entry, 200)
                ));
            }
            let prefix = (url.path() != "/").then(|| url.path().to_owned());
            allowed.push(Allowed {
                origin: url.origin(),
                prefix,
            });
        }
        Ok(Self { allowed, base })
    }

    /// Whether nothing is allowed (every `redirect_uri` is refused).
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// The URL to send the browser to, or why `raw` is refused.
    pub fn check(&self, raw: &str) -> Result<Url, &'static str> {
        if raw.is_empty() {
            return Err("redirect_uri is empty");
        }
        if raw.len() > MAX_REDIRECT_BYTES {
            return Err("redirect_uri is longer than 2048 bytes");
        }
        if raw.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(
                "redirect_uri may hold printable ASCII only (no spaces, controls or non-ASCII)",
            );
        }
        if raw.contains('\\') {
            return Err("redirect_uri may not contain a backslash");
        }
        let url = if raw.starts_with('/') {
            if raw.starts_with("//") {
                return Err("redirect_uri may not be scheme-relative (`//host`)");
            }
            self.base
                .join(raw)
                .map_err(|_| "redirect_uri is not a valid path")?
        } else {
            let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                return Err(
                    "redirect_uri must be an absolute http(s) URL or a path starting with `/`",
                );
            }
            Url::parse(raw).map_err(|_| "redirect_uri is not a valid URL")?
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("redirect_uri may not carry userinfo");
        }
        let origin = url.origin();
        let path = url.path();
        let allowed = self.allowed.iter().any(|a| {
            a.origin == origin
                && a.prefix.as_deref().is_none_or(|prefix| {
                    path == prefix
                        || (path.starts_with(prefix)
                            && (prefix.ends_with('/')
                                || path.as_bytes().get(prefix.len()) == Some(&b'/')))
                })
        });
        if allowed {
            Ok(url)
        } else {
            Err("redirect_uri is not on the allow-list (login.allowed_redirects)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> AllowList {
        AllowList::new(
            &[
                "https://app.example.com".to_owned(),
                "https://docs.example.com/guide/".to_owned(),
                "http://127.0.0.1:3000/ui".to_owned(),
            ],
            "https://app.example.com/auth/callback",
        )
        .unwrap()
    }

    #[test]
    fn allowed_origins_prefixes_and_paths_pass() {
        let list = list();
        for (raw, expected) in [
            ("https://app.example.com/", "https://app.example.com/"),
            (
                "https://app.example.com/a/b?x=1#f",
                "https://app.example.com/a/b?x=1#f",
            ),
            ("HTTPS://APP.EXAMPLE.COM:443/x", "https://app.example.com/x"),
            (
                "/dashboard?tab=2",
                "https://app.example.com/dashboard?tab=2",
            ),
            (
                "https://docs.example.com/guide/intro",
                "https://docs.example.com/guide/intro",
            ),
            ("http://127.0.0.1:3000/ui", "http://127.0.0.1:3000/ui"),
            (
                "http://127.0.0.1:3000/ui/page",
                "http://127.0.0.1:3000/ui/page",
            ),
            // A path that leaves the origin's root only looks strange: it stays on the origin.
            (
                "/%2F%2Fevil.example",
                "https://app.example.com/%2F%2Fevil.example",
            ),
        ] {
            assert_eq!(
                list.check(raw).map(|u| u.to_string()),
                Ok(expected.to_owned()),
                "{raw}"
            );
        }
    }

    /// The open-redirect corpus: every spelling that a browser could read as another host.
    #[test]
    fn open_redirect_spellings_are_refused() {
        let list = list();
        for raw in [
            "",
            "//evil.example",
            "//evil.example/https://app.example.com",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https:\\\\evil.example",
            "https:/\\evil.example",
            "https://app.example.com\\@evil.example",
            "https://app.example.com@evil.example",
            "https://app.example.com:x@evil.example/",
            "https://user@app.example.com/",
            "https://evil.example#@app.example.com",
            "https://evil.example?@app.example.com",
            "https://app.example.com.evil.example/",
            "https://evil.example/https://app.example.com",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "https:evil.example",
            "https:/evil.example",
            "javascript:alert(1)",
            "JavaScript://app.example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://app.example.com/",
            "evil.example",
            "%2F%2Fevil.example",
            "%5C%5Cevil.example",
            "https://app.example.com/\t",
            "/\t/evil.example",
            "/ /evil.example",
            "https://app.exam\nple.com/",
            "https://аpp.example.com/",
            "https://docs.example.com/guidebook",
            "https://docs.example.com/",
            "https://docs.example.com/guide/../admin",
            "http://127.0.0.1:3000/uix",
            "http://127.0.0.1:3000/",
            "http://127.0.0.1:3001/ui",
            "https://[::1]/",
        ] {
            assert!(list.check(raw).is_err(), "{raw:?} was allowed");
        }
        let long = format!("/{}", "a".repeat(3000));
        assert!(list.check(&long).is_err());
    }

    proptest::proptest! {
        /// Whatever the spelling, an accepted redirect is on an allowed origin, has no
        /// userinfo, and its raw text held no backslash, control, space or non-ASCII.
        #[test]
        fn an_accepted_redirect_is_always_on_the_list(
            raw in "(https?:|//|/|\\\\|[a-z.@:%]){0,3}[a-zA-Z0-9./@:%?#\\\\ \t-]{0,40}"
        ) {
            let list = list();
            if let Ok(url) = list.check(&raw) {
                let allowed = ["https://app.example.com", "https://docs.example.com", "http://127.0.0.1:3000"]
                    .map(|o| Url::parse(o).unwrap().origin());
                proptest::prop_assert!(allowed.contains(&url.origin()), "{raw:?} -> {url}");
                proptest::prop_assert!(url.username().is_empty() && url.password().is_none());
                proptest::prop_assert!(raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
            }
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry() {
        for entry in [
            "app.example.com",
            "https://user:pw@app.example.com",
            "https://app.example.com/?x=1",
            "javascript:alert(1)",
        ] {
            let error =
                AllowList::new(&[entry.to_owned()], "https://app.example.com/cb").unwrap_err();
            assert!(error.contains('`'), "{entry}: {error}");
        }
        assert!(
            AllowList::new(&[], "https://app.example.com/cb")
                .unwrap()
                .is_empty()
        );
    }
}
