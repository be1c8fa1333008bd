//! YAML documents to JSON values, keeping where every value came from, so an
//! error about any field can name its line and column.
//!
//! Scalars resolve as kubectl's reader does (the YAML 1.2 core schema plus
//! the YAML 1.1 booleans `yes`/`no`/`on`/`off`/`y`/`n` that go-yaml v2
//! still reads): null, booleans, integers, floats, and strings otherwise;
//! quoted scalars are always strings. Merge keys (`<<`) merge mappings as
//! go-yaml does: the mapping's own keys win, then earlier merged mappings.
//! Aliases are bounded in count and in what they expand to, and nesting in
//! depth, so a small file cannot grow into gigabytes.

use std::collections::HashMap;

use super::limits::{MAX_ALIAS_NODES, MAX_ALIASES, MAX_DEPTH};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use super::limits::elide;

/// A place in the source: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl From<&Span> for Pos {
    fn from(s: &Span) -> Self {
        Pos {
            line: s.start.line(),
            col: s.start.col() + 1,
        }
    }
}

/// One YAML document as JSON, with the position of every path in it.
/// Paths are written like `spec.ports[0].port` (the form
/// `serde_path_to_error` prints); the root is the empty path.
#[derive(Clone, Debug, Default)]
pub struct Document {
    pub value: Value,
    pub positions: HashMap<String, Pos>,
    /// Position of the document's first node.
    pub start: Pos,
    /// Kind, namespace and name, kept for messages once `value` is dropped.
    pub ident: Option<Box<(String, String, String)>>,
}

impl Document {
    /// Where `path` is, or the nearest enclosing path that has a position.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None if !p.is_empty() => p.clear(),
                None => return self.start,
            }
        }
    }
}

/// A syntax error, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
        /// YAML nodes in this collection, itself included.
        nodes: usize,
    },
    Map {
        map: Map<String, Value>,
        path: String,
        anchor: usize,
        nodes: usize,
        pending_key: Option<String>,
        /// The pending key is the merge key `<<`.
        pending_merge: bool,
        /// Values of the `<<` key, merged in when the mapping ends.
        merges: Option<Value>,
    },
}

/// How much the aliases of one file have expanded so far.
#[derive(Default)]
struct AliasBudget {
    uses: usize,
    nodes: usize,
}

/// Parses every document in `src`.
pub fn parse_documents(src: &str) -> Result<Vec<Document>, YamlError> {
    let mut docs = Vec::new();
    for_each_document(src, |d| docs.push(d))?;
    Ok(docs)
}

/// Parses the documents in `src` one by one, handing each to `take` as
/// soon as it ends, so a caller need not hold them all.
pub fn for_each_document(src: &str, mut take: impl FnMut(Document)) -> Result<(), YamlError> {
    let mut doc = Document::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
    let mut budget = AliasBudget::default();
    let mut root: Option<Value> = None;

    for item in Parser::new_from_str(src) {
        let (event, span) = item.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let pos = Pos::from(&span);
        match event {
            Event::DocumentStart(_) => {
                doc = Document {
                    start: pos,
                    ..Document::default()
                };
                root = None;
            }
            Event::DocumentEnd => {
                if let Some(v) = root.take() {
                    doc.value = v;
                    take(std::mem::take(&mut doc));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                // A scalar in key position names the next value.
                if let Some(Frame::Map {
                    pending_key,
                    pending_merge,
                    map,
                    merges,
                    ..
                }) = stack.last_mut()
                    && pending_key.is_none()
                {
                    let merge = style == ScalarStyle::Plain && text.as_ref() == "<<";
                    if (merge && merges.is_some()) || (!merge && map.contains_key(text.as_ref())) {
                        return Err(YamlError {
                            pos,
                            message: format!("duplicate key {}", elide(text.as_ref())),
                        });
                    }
                    *pending_merge = merge;
                    *pending_key = Some(text.into_owned());
                    continue;
                }
                let value = resolve_scalar(&text, style);
                if anchor > 0 {
                    anchors.insert(anchor, (value.clone(), 1));
                }
                let path = child_path(&stack);
                doc.positions.insert(path, pos);
                push_value(&mut stack, &mut root, value, 1, pos)?;
            }
            Event::Alias(id) => {
                let Some((anchored, nodes)) = anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                budget.uses += 1;
                budget.nodes = budget.nodes.saturating_add(*nodes);
                if budget.uses > MAX_ALIASES || budget.nodes > MAX_ALIAS_NODES {
                    return Err(YamlError {
                        pos,
                        message: format!(
                            "aliases expand too much: at most {MAX_ALIASES} alias uses that \
                             expand to at most {MAX_ALIAS_NODES} values in all (this one makes \
                             {} uses and {} values)",
                            budget.uses, budget.nodes
                        ),
                    });
                }
                let (value, nodes) = (anchored.clone(), *nodes);
                if let Some(Frame::Map {
                    pending_key: None, ..
                }) = stack.last()
                {
                    return Err(YamlError {
                        pos,
                        message: "an alias cannot be a mapping key".into(),
                    });
                }
                let path = child_path(&stack);
                doc.positions.insert(path, pos);
                push_value(&mut stack, &mut root, value, nodes, pos)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        pos,
                        message: format!("nested more than {MAX_DEPTH} levels deep"),
                    });
                }
                if let Some(Frame::Map {
                    pending_key: None, ..
                }) = stack.last()
                {
                    return Err(YamlError {
                        pos,
                        message: "a mapping key must be a plain value, not a collection".into(),
                    });
                }
                let path = child_path(&stack);
                doc.positions.insert(path.clone(), pos);
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        path,
                        anchor,
                        nodes: 1,
                    }
                } else {
                    Frame::Map {
                        map: Map::new(),
                        path,
                        anchor,
                        nodes: 1,
                        pending_key: None,
                        pending_merge: false,
                        merges: None,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, nodes) = match stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        nodes,
                        ..
                    }) => (Value::Array(items), anchor, nodes),
                    Some(Frame::Map {
                        mut map,
                        anchor,
                        nodes,
                        merges,
                        ..
                    }) => {
                        if let Some(m) = merges {
                            merge_into(&mut map, m);
                        }
                        (Value::Object(map), anchor, nodes)
                    }
                    None => unreachable!("the parser balances collections"),
                };
                if anchor > 0 {
                    anchors.insert(anchor, (value.clone(), nodes));
                }
                push_value(&mut stack, &mut root, value, nodes, pos)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
    Ok(())
}

/// The path of the value about to be added to the innermost collection.
fn child_path(stack: &[Frame]) -> String {
    match stack.last() {
        None => String::new(),
        Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
        Some(Frame::Map {
            path, pending_key, ..
        }) => {
            let key = pending_key.as_deref().unwrap_or("");
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        }
    }
}

fn push_value(
    stack: &mut [Frame],
    root: &mut Option<Value>,
    value: Value,
    value_nodes: usize,
    pos: Pos,
) -> Result<(), YamlError> {
    match stack.last_mut() {
        None => *root = Some(value),
        Some(Frame::Seq { items, nodes, .. }) => {
            *nodes = nodes.saturating_add(value_nodes);
            items.push(value);
        }
        Some(Frame::Map {
            map,
            pending_key,
            pending_merge,
            merges,
            nodes,
            ..
        }) => {
            *nodes = nodes.saturating_add(value_nodes);
            let key = pending_key.take().expect("a value follows its key");
            if std::mem::take(pending_merge) {
                let ok = match &value {
                    Value::Object(_) => true,
                    Value::Array(items) => items.iter().all(Value::is_object),
                    _ => false,
                };
                if !ok {
                    return Err(YamlError {
                        pos,
                        message: "a merge key (<<) needs a mapping or a list of mappings".into(),
                    });
                }
                *merges = Some(value);
            } else {
                map.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Merges the value of `<<` into `map`: keys the mapping has win, then the
/// earlier of several merged mappings.
fn merge_into(map: &mut Map<String, Value>, merges: Value) {
    let sources = match merges {
        Value::Array(items) => items,
        other => vec![other],
    };
    for source in sources {
        if let Value::Object(m) = source {
            for (k, v) in m {
                map.entry(k).or_insert(v);
            }
        }
    }
}

fn resolve_scalar(text: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" => {
            return Value::Bool(false);
        }
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n.into());
    }
    if looks_like_float(text)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    !t.is_empty()
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_values_and_positions() {
        let src = "kind: Lab\nspec:\n  nodes: 2\n  ports:\n    - port: 80\n      name: \"80\"\n---\nkind: Service\n";
        let docs = parse_documents(src).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].value,
            json!({"kind": "Lab", "spec": {"nodes": 2, "ports": [{"port": 80, "name": "80"}]}})
        );
        assert_eq!(docs[0].pos("spec.nodes"), Pos { line: 3, col: 10 });
        assert_eq!(docs[0].pos("spec.ports[0].port"), Pos { line: 5, col: 13 });
        // An unknown path falls back to the nearest known parent.
        assert_eq!(docs[0].pos("spec.ports[0].nope"), Pos { line: 5, col: 7 });
        assert_eq!(docs[1].pos("kind"), Pos { line: 8, col: 7 });
    }

    #[test]
    fn scalars_resolve_by_core_schema() {
        let docs = parse_documents(
            "a: ~\nb: true\nc: 0x1f\nd: -3\ne: 1.5\nf: '12'\ng: 10.96.0.0/12\nh: 1.2.3\n",
        )
        .unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": null, "b": true, "c": 31, "d": -3, "e": 1.5, "f": "12", "g": "10.96.0.0/12", "h": "1.2.3"})
        );
    }

    #[test]
    fn anchors_and_aliases() {
        let docs = parse_documents("x: &l {app: web}\ny: *l\n").unwrap();
        assert_eq!(docs[0].value["y"], json!({"app": "web"}));
    }

    #[test]
    fn errors_have_places() {
        let err = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("duplicate key"));
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }
}
