//! The variables of one evaluation, bound lazily: `request`, `subject` and `error` are values
//! over the borrowed request view, subject and step error whose fields are looked up only when
//! an expression reads them. Binding copies nothing; reading `subject.attr.plan` converts one
//! attribute, not the document. Iterating a map, its `size()` or comparing it whole builds the
//! map once, on first use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use cel::ExecutionError;
use cel::common::traits::{Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt, MAP_TYPE,
    Type,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;

use super::fields::{ErrorField, PeerField, RequestField, ResponseField, SubjectField};
use crate::decision::StepError;
use crate::request::{Headers, Peer, RequestView};
use crate::subject::{Principal, Subject};

/// The entries of a map once it is built whole.
type Entries<'a> = HashMap<CelMapKey<'a>, Box<dyn Val + 'a>>;

/// The path parameters of the matched rule (decoded).
pub(super) type Captures<'a> = &'a [(&'a str, Cow<'a, str>)];

/// What a [`LazyMap`] looks its string keys up in.
pub(super) trait Source<'a>: Clone + std::fmt::Debug + Send + Sync + 'a {
    /// The value at `key`, or `None` when there is none.
    fn lookup<'b>(&'b self, key: &str) -> Option<CowVal<'b, 'a>>;

    /// Every entry, for what needs the whole map.
    fn entries(&self) -> Entries<'a>;
}

/// A CEL map whose values are looked up in `source` on demand.
#[derive(Debug)]
pub(super) struct LazyMap<'a, S> {
    source: S,
    /// The whole map, built on the first iteration, `size()`, comparison or non-string key.
    whole: OnceLock<CelMap<'a>>,
}

impl<'a, S: Source<'a>> LazyMap<'a, S> {
    pub(super) fn new(source: S) -> Self {
        Self {
            source,
            whole: OnceLock::new(),
        }
    }

    fn whole(&self) -> &CelMap<'a> {
        self.whole
            .get_or_init(|| CelMap::from(self.source.entries()))
    }
}

impl<'a, S: Source<'a>> Clone for LazyMap<'a, S> {
    fn clone(&self) -> Self {
        Self::new(self.source.clone())
    }
}

impl<'a, S: Source<'a>> Val for LazyMap<'a, S> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        self.whole().equals(other)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(self.clone())
    }
}

impl<'a, S: Source<'a>> Indexer for LazyMap<'a, S> {
    fn get<'b, 'v>(&'b self, key: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match key.downcast_ref::<CelString>() {
            Some(name) => self
                .source
                .lookup(name.inner())
                .ok_or_else(|| ExecutionError::no_such_key(name.inner())),
            // Other key types are as rare as they are odd: answer as the built map would.
            None => self.whole().get(key),
        }
    }

    fn steal<'v>(self: Box<Self>, key: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(key).map(CowVal::into_owned)
    }
}

impl<'a, S: Source<'a>> Container for LazyMap<'a, S> {
    fn contains(&self, key: &dyn Val) -> Result<bool, ExecutionError> {
        match key.downcast_ref::<CelString>() {
            Some(name) => Ok(self.source.lookup(name.inner()).is_some()),
            None => self.whole().contains(key),
        }
    }
}

impl<'a, S: Source<'a>> Iterable for LazyMap<'a, S> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn cel::common::traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Iterable::iter(self.whole())
    }
}

impl<'a, S: Source<'a>> Sizer for LazyMap<'a, S> {
    fn size(&self) -> CelInt {
        self.whole().size()
    }
}

impl<'a, S: Source<'a>> Zeroer for LazyMap<'a, S> {
    fn is_zero_value(&self) -> bool {
        self.whole().is_zero_value()
    }
}

fn key(s: &str) -> CelMapKey<'_> {
    CelMapKey::from(s)
}

fn borrowed<'b, 'a>(value: &'b (dyn Val + 'a)) -> Option<CowVal<'b, 'a>> {
    Some(CowVal::Borrowed(value))
}

/// `request`.
#[derive(Clone)]
pub(super) struct RequestSource<'a> {
    view: RequestView<'a>,
    id: CelString<'a>,
    method: CelString<'a>,
    scheme: CelString<'a>,
    host: CelString<'a>,
    authority: CelString<'a>,
    path: CelString<'a>,
    raw_query: CelString<'a>,
    query: LazyMap<'a, QuerySource<'a>>,
    headers: LazyMap<'a, HeadersSource<'a>>,
    captures: LazyMap<'a, CapturesSource<'a>>,
    peer: LazyMap<'a, PeerSource<'a>>,
}

impl std::fmt::Debug for RequestSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSource")
            .field("method", &self.view.method)
            .field("path", &self.view.path)
            .finish_non_exhaustive()
    }
}

impl<'a> RequestSource<'a> {
    pub(super) fn new(view: &RequestView<'a>, captures: Captures<'a>) -> Self {
        Self {
            view: *view,
            id: view.id.into(),
            method: view.method.into(),
            scheme: view.scheme.into(),
            host: view.host.into(),
            authority: view.authority.into(),
            path: view.path.into(),
            raw_query: view.query.into(),
            query: LazyMap::new(QuerySource(view.query)),
            headers: LazyMap::new(HeadersSource(view.headers)),
            captures: LazyMap::new(CapturesSource(captures)),
            peer: LazyMap::new(PeerSource(view.peer)),
        }
    }

    pub(super) fn view(&self) -> &RequestView<'a> {
        &self.view
    }

    pub(super) fn captures(&self) -> Captures<'a> {
        self.captures.source.0
    }

    fn field<'b>(&'b self, field: RequestField) -> &'b (dyn Val + 'a) {
        match field {
            RequestField::Id => &self.id,
            RequestField::Method => &self.method,
            RequestField::Scheme => &self.scheme,
            RequestField::Host => &self.host,
            RequestField::Authority => &self.authority,
            RequestField::Path => &self.path,
            RequestField::RawQuery => &self.raw_query,
            RequestField::Query => &self.query,
            RequestField::Headers => &self.headers,
            RequestField::Captures => &self.captures,
            RequestField::Peer => &self.peer,
        }
    }
}

impl<'a> Source<'a> for RequestSource<'a> {
    fn lookup<'b>(&'b self, key: &str) -> Option<CowVal<'b, 'a>> {
        borrowed(self.field(RequestField::parse(key)?))
    }

    fn entries(&self) -> Entries<'a> {
        RequestField::ALL
            .iter()
            .map(|f| (key(f.name()), self.field(*f).clone_as_boxed()))
            .collect()
    }
}

/// `request.headers`: looked up as [`Headers::get`] does (case-insensitively where the header
/// source is), first value wins; pseudo-headers are exposed through the named fields instead.
#[derive(Clone, Copy)]
pub(super) struct HeadersSource<'a>(pub(super) Headers<'a>);

impl std::fmt::Debug for HeadersSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadersSource")
    }
}

impl<'a> Source<'a> for HeadersSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        if name.starts_with(':') {
            return None;
        }
        self.0
            .get(name)
            .map(|value| CowVal::owned(CelString::from(value)))
    }

    fn entries(&self) -> Entries<'a> {
        let mut headers = Entries::new();
        self.0.for_each(|name, value| {
            if !name.starts_with(':') {
                headers
                    .entry(key(name))
                    .or_insert_with(|| Box::new(CelString::from(value)));
            }
        });
        headers
    }
}

/// `request.query`: the decoded parameters, first value wins (as most frameworks read a
/// single-valued parameter).
#[derive(Debug, Clone, Copy)]
pub(super) struct QuerySource<'a>(&'a str);

impl<'a> QuerySource<'a> {
    fn pairs(self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        query_pairs(self.0)
    }
}

/// The decoded `(name, value)` pairs of a raw query string, in order.
pub(super) fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (
            percent_encoding::percent_decode_str(k).decode_utf8_lossy(),
            percent_encoding::percent_decode_str(v).decode_utf8_lossy(),
        )
    })
}

impl<'a> Source<'a> for QuerySource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        self.pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| CowVal::owned(CelString::from(v)))
    }

    fn entries(&self) -> Entries<'a> {
        let mut query = Entries::new();
        for (k, v) in self.pairs() {
            query
                .entry(CelMapKey::String(CelString::from(k)))
                .or_insert_with(|| Box::new(CelString::from(v)));
        }
        query
    }
}

/// `request.captures`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CapturesSource<'a>(Captures<'a>);

impl<'a> Source<'a> for CapturesSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| CowVal::owned(CelString::from(v.as_ref())))
    }

    fn entries(&self) -> Entries<'a> {
        self.0
            .iter()
            .map(|(n, v)| {
                (
                    key(n),
                    Box::new(CelString::from(v.as_ref())) as Box<dyn Val + 'a>,
                )
            })
            .collect()
    }
}

/// `request.peer`.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerSource<'a>(Peer<'a>);

impl<'a> PeerSource<'a> {
    fn field(self, field: PeerField) -> &'a str {
        match field {
            PeerField::Address => self.0.address,
            PeerField::Principal => self.0.principal,
        }
    }
}

impl<'a> Source<'a> for PeerSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        let field = PeerField::parse(name)?;
        Some(CowVal::owned(CelString::from(self.field(field))))
    }

    fn entries(&self) -> Entries<'a> {
        PeerField::ALL
            .iter()
            .map(|f| {
                (
                    key(f.name()),
                    Box::new(CelString::from(self.field(*f))) as Box<dyn Val + 'a>,
                )
            })
            .collect()
    }
}

/// `subject` (the primary principal's fields, and `principals`) or one of
/// `subject.principals` (`subject: None`). No principal reads as an empty one.
#[derive(Debug, Clone)]
pub(super) struct PrincipalSource<'a> {
    principal: Option<&'a Principal>,
    subject: Option<&'a Subject>,
    id: CelString<'a>,
    mechanism: CelString<'a>,
    roles: OnceLock<CelList<'a>>,
    attr: LazyMap<'a, AttrSource<'a>>,
}

impl<'a> PrincipalSource<'a> {
    pub(super) fn subject(subject: &'a Subject) -> Self {
        Self {
            subject: Some(subject),
            ..Self::principal(subject.primary())
        }
    }

    fn principal(principal: Option<&'a Principal>) -> Self {
        Self {
            principal,
            subject: None,
            id: principal.map_or("", |p| &p.id).into(),
            mechanism: principal.map_or("", |p| &p.mechanism).into(),
            roles: OnceLock::new(),
            attr: LazyMap::new(AttrSource(principal)),
        }
    }

    pub(super) fn raw(&self) -> Option<&'a Subject> {
        self.subject
    }

    fn field<'b>(&'b self, field: SubjectField) -> Option<CowVal<'b, 'a>> {
        match field {
            SubjectField::Id => borrowed(&self.id),
            SubjectField::Mechanism => borrowed(&self.mechanism),
            SubjectField::Roles => borrowed(self.roles.get_or_init(|| {
                let roles = self.principal.map_or(&[][..], |p| &p.roles);
                CelList::from(
                    roles
                        .iter()
                        .map(|r| Box::new(CelString::from(&**r)) as Box<dyn Val + 'a>)
                        .collect::<Vec<_>>(),
                )
            })),
            SubjectField::Attr => borrowed(&self.attr),
            SubjectField::Principals => {
                let subject = self.subject?;
                Some(CowVal::owned(LazyMap::new(PrincipalsSource(subject))))
            }
        }
    }
}

impl<'a> Source<'a> for PrincipalSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        self.field(SubjectField::parse(name)?)
    }

    fn entries(&self) -> Entries<'a> {
        SubjectField::ALL
            .iter()
            .filter_map(|f| Some((key(f.name()), self.field(*f)?.into_owned())))
            .collect()
    }
}

/// `subject.principals`: every principal by the name the rule gave it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PrincipalsSource<'a>(&'a Subject);

impl<'a> Source<'a> for PrincipalsSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        let (_, principal) = self.0.iter().find(|(n, _)| *n == name)?;
        Some(CowVal::owned(LazyMap::new(PrincipalSource::principal(
            Some(principal),
        ))))
    }

    fn entries(&self) -> Entries<'a> {
        self.0
            .iter()
            .map(|(name, principal)| {
                (
                    key(name),
                    Box::new(LazyMap::new(PrincipalSource::principal(Some(principal))))
                        as Box<dyn Val + 'a>,
                )
            })
            .collect()
    }
}

/// `subject.attr`: the stored attributes over the token's claims (see [`Principal::attr`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct AttrSource<'a>(Option<&'a Principal>);

impl<'a> Source<'a> for AttrSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        self.0?.attr(name).map(|v| CowVal::Owned(json_val(v)))
    }

    fn entries(&self) -> Entries<'a> {
        self.0
            .into_iter()
            .flat_map(Principal::attrs)
            .map(|(k, v)| (key(k), json_val(v)))
            .collect()
    }
}

/// A JSON object, as a CEL map.
#[derive(Debug, Clone, Copy)]
pub(super) struct ObjectSource<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl<'a> Source<'a> for ObjectSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        self.0.get(name).map(|v| CowVal::Owned(json_val(v)))
    }

    fn entries(&self) -> Entries<'a> {
        self.0.iter().map(|(k, v)| (key(k), json_val(v))).collect()
    }
}

/// A JSON value as a CEL value, borrowing its strings; an object stays lazy, an array is built
/// (its elements are, again, lazy objects or scalars).
pub(super) fn json_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as J;
    match value {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        J::String(s) => Box::new(CelString::from(s.as_str())),
        J::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(map) => Box::new(LazyMap::new(ObjectSource(map))),
    }
}

/// `error`, in the error pipeline.
#[derive(Debug, Clone)]
pub(super) struct ErrorSource<'a> {
    kind: CelString<'a>,
    message: CelString<'a>,
    mechanism: CelString<'a>,
}

impl<'a> ErrorSource<'a> {
    fn field<'b>(&'b self, field: ErrorField) -> &'b CelString<'a> {
        match field {
            ErrorField::Kind => &self.kind,
            ErrorField::Message => &self.message,
            ErrorField::Mechanism => &self.mechanism,
        }
    }
}

impl<'a> Source<'a> for ErrorSource<'a> {
    fn lookup<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'a>> {
        borrowed(self.field(ErrorField::parse(name)?))
    }

    fn entries(&self) -> Entries<'a> {
        ErrorField::ALL
            .iter()
            .map(|f| {
                (
                    key(f.name()),
                    Box::new(self.field(*f).clone()) as Box<dyn Val + 'a>,
                )
            })
            .collect()
    }
}

/// `response`: an outbound call's status, headers (as `request.headers` reads them) and body
/// (the parsed JSON, or the text).
#[derive(Debug, Clone)]
pub(super) struct ResponseSource<'a> {
    status: CelInt,
    headers: LazyMap<'a, HeadersSource<'a>>,
    body: ResponseBody<'a>,
}

/// A `Box<dyn Val>` that is `Clone`, for [`Source`].
#[derive(Debug)]
struct ResponseBody<'a>(Box<dyn Val + 'a>);

impl Clone for ResponseBody<'_> {
    fn clone(&self) -> Self {
        Self(self.0.clone_as_boxed())
    }
}

impl<'a> ResponseSource<'a> {
    fn field<'b>(&'b self, field: ResponseField) -> &'b (dyn Val + 'a) {
        match field {
            ResponseField::Status => &self.status,
            ResponseField::Headers => &self.headers,
            ResponseField::Body => &*self.body.0,
        }
    }
}

impl<'a> Source<'a> for ResponseSource<'a> {
    fn lookup<'b>(&'b self, key: &str) -> Option<CowVal<'b, 'a>> {
        borrowed(self.field(ResponseField::parse(key)?))
    }

    fn entries(&self) -> Entries<'a> {
        ResponseField::ALL
            .iter()
            .map(|f| (key(f.name()), self.field(*f).clone_as_boxed()))
            .collect()
    }
}

/// The variables of one evaluation, borrowing from the request, the subject and the error.
#[derive(Debug, Default)]
pub struct Vars<'a> {
    request: Option<LazyMap<'a, RequestSource<'a>>>,
    subject: Option<LazyMap<'a, PrincipalSource<'a>>>,
    error: Option<LazyMap<'a, ErrorSource<'a>>>,
    response: Option<LazyMap<'a, ResponseSource<'a>>>,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let value: &'b dyn Val = match variable {
            "request" => self.request.as_ref()?,
            "subject" => self.subject.as_ref()?,
            "error" => self.error.as_ref()?,
            "response" => self.response.as_ref()?,
            _ => return None,
        };
        Some(CowVal::Borrowed(value))
    }
}

impl<'a> Vars<'a> {
    /// Binds `request`; `captures` are the path parameters of the matched rule (decoded).
    pub fn bind_request(&mut self, req: &RequestView<'a>, captures: Captures<'a>) {
        self.request = Some(LazyMap::new(RequestSource::new(req, captures)));
    }

    /// Binds `subject`: the first principal's fields at the top, every principal by name under
    /// `principals`.
    pub fn bind_subject(&mut self, subject: &'a Subject) {
        self.subject = Some(LazyMap::new(PrincipalSource::subject(subject)));
    }

    /// Binds `error` for the error pipeline.
    pub fn bind_error(&mut self, error: &'a StepError) {
        self.error = Some(LazyMap::new(ErrorSource {
            kind: error.kind.as_str().into(),
            message: error.message.as_str().into(),
            mechanism: (&*error.mechanism).into(),
        }));
    }

    /// Binds `response`: an outbound call's `status`, `headers` and `body` (JSON, or text).
    pub fn bind_response(
        &mut self,
        status: u16,
        headers: &'a http::HeaderMap,
        body: &'a serde_json::Value,
    ) {
        self.response = Some(LazyMap::new(ResponseSource {
            status: CelInt::from(i64::from(status)),
            headers: LazyMap::new(HeadersSource(Headers::Http(headers))),
            body: ResponseBody(json_val(body)),
        }));
    }

    /// The subject bound for this evaluation.
    pub fn subject(&self) -> Option<&'a Subject> {
        self.subject.as_ref().and_then(|s| s.source.raw())
    }

    /// The request bound for this evaluation.
    pub fn request(&self) -> Option<&RequestView<'a>> {
        self.request.as_ref().map(|r| r.source.view())
    }

    /// The path parameters bound with the request.
    pub fn captures(&self) -> Captures<'a> {
        self.request.as_ref().map_or(&[], |r| r.source.captures())
    }
}
