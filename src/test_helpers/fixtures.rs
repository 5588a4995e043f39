//! Shared configuration fixtures (`tests/fixtures/*.yaml`) and a way to extend one.

use serde_yaml_ng::Value;

/// Principal attributes from NATS: a paseto bearer, the `principal_attributes` contextualizer and
/// CEL authorizers on the merged attributes (`tests/fixtures/attributes.yaml`).
pub const ATTRIBUTES: &str = include_str!("../../tests/fixtures/attributes.yaml");

/// The integration tests' rules (`tests/fixtures/rules.yaml`).
pub const RULES: &str = include_str!("../../tests/fixtures/rules.yaml");

/// `base` with `overlay` merged in: mappings key by key (recursively), lists appended, anything
/// else replaced. So a test adds a mechanism, a rule or a section to a shared fixture without
/// copying it.
pub fn merge_yaml(base: &str, overlay: &str) -> Result<String, String> {
    let mut base: Value =
        serde_yaml_ng::from_str(base).map_err(|e| format!("the base configuration: {e}"))?;
    let overlay: Value =
        serde_yaml_ng::from_str(overlay).map_err(|e| format!("the overlay: {e}"))?;
    merge(&mut base, overlay);
    serde_yaml_ng::to_string(&base).map_err(|e| format!("the merged configuration: {e}"))
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(overlay)) => base.extend(overlay),
        (base, overlay) => *base = overlay,
    }
}
