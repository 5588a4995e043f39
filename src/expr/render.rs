//! Turning an evaluation's result into what the caller asked for: a header value, a list of
//! strings, JSON or a boolean. Works on any CEL value through its capabilities, so a lazily
//! bound map (see [`super::bind`]) converts as a built one does.

use cel::common::types::{CelBool, CelDouble, CelInt, CelString, CelUInt, Kind};
use cel::common::value::Val;

/// The name of a value's type in messages.
pub(super) fn type_name(value: &dyn Val) -> String {
    match value.get_type().kind() {
        Kind::Boolean => "bool",
        Kind::Double => "float",
        Kind::NullType => "null",
        Kind::String => "string",
        Kind::Int => "int",
        Kind::UInt => "uint",
        Kind::List => "list",
        Kind::Map => "map",
        _ => return value.get_type().name().to_owned(),
    }
    .to_owned()
}

/// Renders a value for a header or body: strings as they are, lists joined with `,`, numbers
/// and booleans formatted, `null` as empty. `Err` carries the offending value's type.
pub(super) fn render(value: &dyn Val, out: &mut String) -> Result<(), String> {
    use std::fmt::Write as _;
    if let Some(s) = value.downcast_ref::<CelString>() {
        out.push_str(s.inner());
    } else if let Some(i) = value.downcast_ref::<CelInt>() {
        let _ = write!(out, "{}", i.inner());
    } else if let Some(u) = value.downcast_ref::<CelUInt>() {
        let _ = write!(out, "{}", u.inner());
    } else if let Some(f) = value.downcast_ref::<CelDouble>() {
        let _ = write!(out, "{}", f.inner());
    } else if let Some(b) = value.downcast_ref::<CelBool>() {
        let _ = write!(out, "{}", b.inner());
    } else if value.get_type().kind() == Kind::NullType {
    } else if let (Kind::List, Some(items)) = (value.get_type().kind(), value.as_iterable()) {
        let mut items = items.iter();
        let mut first = true;
        while let Some(item) = items.next() {
            if !first {
                out.push(',');
            }
            first = false;
            render(item, out)?;
        }
    } else {
        return Err(type_name(value));
    }
    Ok(())
}

/// A value as JSON; `Err` with the type of the first part JSON cannot carry (bytes, …).
pub(super) fn to_json(value: &dyn Val) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(if let Some(s) = value.downcast_ref::<CelString>() {
        J::String(s.inner().to_owned())
    } else if let Some(i) = value.downcast_ref::<CelInt>() {
        J::from(*i.inner())
    } else if let Some(u) = value.downcast_ref::<CelUInt>() {
        J::from(*u.inner())
    } else if let Some(f) = value.downcast_ref::<CelDouble>() {
        serde_json::Number::from_f64(*f.inner()).map_or(J::Null, J::Number)
    } else if let Some(b) = value.downcast_ref::<CelBool>() {
        J::Bool(*b.inner())
    } else {
        match (value.get_type().kind(), value.as_iterable()) {
            (Kind::NullType, _) => J::Null,
            (Kind::List, Some(items)) => {
                let mut items = items.iter();
                let mut out = Vec::new();
                while let Some(item) = items.next() {
                    out.push(to_json(item)?);
                }
                J::Array(out)
            }
            (Kind::Map, Some(keys)) => {
                let indexer = value.as_indexer().ok_or_else(|| type_name(value))?;
                let mut keys = keys.iter();
                let mut out = serde_json::Map::new();
                while let Some(key) = keys.next() {
                    let name = match to_json(key)? {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    let item = indexer.get(key).map_err(|_| type_name(value))?;
                    out.insert(name, to_json(&*item)?);
                }
                J::Object(out)
            }
            _ => return Err(type_name(value)),
        }
    })
}

/// A value as a list of strings: a string is a list of one; `Err` with the offending type.
pub(super) fn to_strings(value: &dyn Val) -> Result<Vec<String>, String> {
    if let Some(s) = value.downcast_ref::<CelString>() {
        return Ok(vec![s.inner().to_owned()]);
    }
    let (Kind::List, Some(items)) = (value.get_type().kind(), value.as_iterable()) else {
        return Err(type_name(value));
    };
    let mut items = items.iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        let s = item
            .downcast_ref::<CelString>()
            .ok_or_else(|| type_name(item))?;
        out.push(s.inner().to_owned());
    }
    Ok(out)
}
