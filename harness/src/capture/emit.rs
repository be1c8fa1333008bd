//! JSON values as block-style YAML, for scenario files people read and
//! edit. Strings that YAML could read as something else (numbers, booleans,
//! null, or text with syntax characters) are double-quoted with JSON
//! escapes, which YAML's double-quoted style accepts unchanged.

use serde_json::Value;

/// One document, without the `---` separator; ends with a newline.
pub fn document(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        other => {
            out.push_str(&scalar_or_flow(other));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn map(out: &mut String, m: &serde_json::Map<String, Value>, level: usize) {
    for (k, v) in m {
        indent(out, level);
        entry(out, k, v, level);
    }
}

/// `key: value` where the key's indentation is already written.
fn entry(out: &mut String, k: &str, v: &Value, level: usize) {
    out.push_str(&string(k));
    out.push(':');
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            map(out, m, level + 2);
        }
        Value::Array(a) if a.iter().any(is_block) => {
            out.push('\n');
            list(out, a, level);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar_or_flow(other));
            out.push('\n');
        }
    }
}

/// Block sequence items at `level` (Kubernetes style: `- ` at the key's
/// indentation).
fn list(out: &mut String, a: &[Value], level: usize) {
    for item in a {
        indent(out, level);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => {
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        indent(out, level + 2);
                    }
                    entry(out, k, v, level + 2);
                }
            }
            other => {
                out.push_str(&scalar_or_flow(other));
                out.push('\n');
            }
        }
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

/// Scalars, and empty or scalar-only collections in flow style.
fn scalar_or_flow(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(scalar_or_flow).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", string(k), scalar_or_flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A string, plain when YAML reads it back as the same string.
pub fn string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialize")
    }
}

fn plain_is_safe(s: &str) -> bool {
    let first = s.chars().next();
    let reserved = [
        "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
        "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
    ];
    first.is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !reserved.contains(&s)
        && s.parse::<f64>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::yaml::parse_documents;
    use serde_json::json;

    #[test]
    fn round_trips_through_the_scenario_reader() {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web", "tier": "yes"}},
            "spec": {
                "clusterIP": "10.96.0.10",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}
                ],
                "selector": {},
                "externalIPs": ["192.0.2.1"],
                "empty": [],
                "nested": [[1, 2], {"a": "b: c"}],
                "odd": ["0x10", "1e3", "null", "", " lead", "#x", "a: b", "true"],
                "flag": true,
                "none": null
            }
        });
        let text = document(&v);
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(docs[0].value, v, "{text}");
    }

    #[test]
    fn plain_where_it_is_safe() {
        assert_eq!(string("web"), "web");
        assert_eq!(string("app.kubernetes.io/name"), "app.kubernetes.io/name");
        assert_eq!(string("10"), "\"10\"");
        assert_eq!(string("on"), "\"on\"");
        assert_eq!(string("a b"), "\"a b\"");
    }
}
