//! The three patch kinds a Kubernetes API server takes: JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902), and strategic merge patch, which
//! kubectl apply sends. The strategic one merges lists by their merge key
//! (a Service's ports by `port`, as the API's patchMergeKey says) and
//! honours the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives; other lists are replaced.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            _ => None,
        }
    }
}

pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value, String> {
    match kind {
        PatchKind::Merge => Ok(merge(target, patch)),
        PatchKind::Json => json_patch(target, patch),
        PatchKind::Strategic => strategic(target, patch, ""),
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// The merge key of the list at `path` (dotted field names), where the
/// Kubernetes API declares one for the objects the lab takes writes for.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "spec.ports" => Some("port"),
        "metadata.ownerReferences" => Some("uid"),
        "status.conditions" => Some("type"),
        "status.loadBalancer.ingress" => Some("ip"),
        _ => None,
    }
}

fn strategic(target: &Value, patch: &Value, path: &str) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        return Ok(Value::Object(p));
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Ok(Value::Null);
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Value::Array(order) = v {
                orders.push((field.to_string(), order.clone()));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Value::Array(gone)) = (out.get_mut(field), v) {
                have.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k == "$retainKeys" {
            if let Value::Array(keep) = v {
                let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
                out.retain(|key, _| keep.contains(&key.as_str()) || p.contains_key(key));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Array(items) => {
                let merged = match (merge_key(&child), out.get(k)) {
                    (Some(key), Some(Value::Array(have))) => merge_list(have, items, key, &child)?,
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect(),
                };
                out.insert(k.clone(), Value::Array(merged));
            }
            Value::Object(_) => {
                let merged = strategic(out.get(k).unwrap_or(&Value::Null), v, &child)?;
                if merged.is_null() {
                    out.remove(k);
                } else {
                    out.insert(k.clone(), merged);
                }
            }
            other => {
                out.insert(k.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        let key = merge_key(&if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        });
        if let (Some(key), Some(Value::Array(items))) = (key, out.get_mut(&field)) {
            let rank = |item: &Value| {
                order
                    .iter()
                    .position(|o| o.get(key) == item.get(key))
                    .unwrap_or(usize::MAX)
            };
            items.sort_by_key(rank);
        }
    }
    Ok(Value::Object(out))
}

fn merge_list(
    have: &[Value],
    patch: &[Value],
    key: &str,
    path: &str,
) -> Result<Vec<Value>, String> {
    let mut out: Vec<Value> = have.to_vec();
    for item in patch {
        let Some(k) = item.get(key) else {
            return Err(format!("{path}: an element has no merge key {key:?}"));
        };
        let pos = out.iter().position(|o| o.get(key) == Some(k));
        match (item.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => out[i] = strategic(&out[i], item, path)?,
            (_, None) => out.push(strategic(&Value::Null, item, path)?),
        }
    }
    Ok(out)
}

/// RFC 6901 pointer tokens.
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("path {pointer:?} does not start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("no field {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("bad index {t:?}"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("cannot descend into {t:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, toks: &[String], v: Value) -> Result<(), String> {
    let Some((last, up)) = toks.split_last() else {
        *doc = v;
        return Ok(());
    };
    match parent(doc, up)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("cannot add {last:?} to a scalar")),
    }
}

fn remove(doc: &mut Value, toks: &[String]) -> Result<Value, String> {
    let (last, up) = toks
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match parent(doc, up)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("no field {last:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("cannot remove {last:?} from a scalar")),
    }
}

fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch
        .as_array()
        .ok_or_else(|| "a JSON patch is an array of operations".to_string())?;
    let mut doc = target.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |f: &str| {
            op.get(f)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {n}: missing {f:?}"))
        };
        let path = tokens(field("path")?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {n}: missing \"value\""))
        };
        let r = match field("op")? {
            "add" => add(&mut doc, &path, value()?),
            "remove" => remove(&mut doc, &path).map(|_| ()),
            "replace" => remove(&mut doc, &path).and_then(|_| add(&mut doc, &path, value()?)),
            "move" => {
                let from = tokens(field("from")?)?;
                remove(&mut doc, &from).and_then(|v| add(&mut doc, &path, v))
            }
            "copy" => {
                let from = tokens(field("from")?)?;
                let v = parent(&mut doc, &from)?.clone();
                add(&mut doc, &path, v)
            }
            "test" => {
                let want = value()?;
                if *parent(&mut doc, &path)? == want {
                    Ok(())
                } else {
                    Err("test failed".into())
                }
            }
            other => Err(format!("unknown op {other:?}")),
        };
        r.map_err(|e| format!("operation {n}: {e}"))?;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({"metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
               "spec": {"type": "ClusterIP", "ports": [
                   {"name": "http", "port": 80, "targetPort": 8080},
                   {"name": "dns", "port": 53, "protocol": "UDP"}]}})
    }

    #[test]
    fn merge_patch_replaces_lists_and_nulls_remove() {
        let out = merge(
            &svc(),
            &json!({"metadata": {"labels": {"a": null, "c": "3"}},
                                        "spec": {"ports": [{"port": 81}]}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(out["spec"]["ports"], json!([{"port": 81}]));
    }

    #[test]
    fn strategic_patch_merges_ports_by_port_and_keeps_order() {
        let p = json!({"spec": {
            "$setElementOrder/ports": [{"port": 53}, {"port": 80}, {"port": 443}],
            "ports": [{"port": 80, "targetPort": 9090}, {"port": 443, "name": "https"}]}});
        let out = strategic(&svc(), &p, "").unwrap();
        let ports = out["spec"]["ports"].as_array().unwrap();
        assert_eq!(
            ports
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![53, 80, 443]
        );
        assert_eq!(ports[1]["targetPort"], 9090);
        assert_eq!(ports[1]["name"], "http", "unmentioned fields stay");
        let del = json!({"spec": {"ports": [{"port": 53, "$patch": "delete"}]}});
        let out = strategic(&svc(), &del, "").unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 1);
        let err = strategic(&svc(), &json!({"spec": {"ports": [{"name": "x"}]}}), "").unwrap_err();
        assert!(err.contains("merge key"), "{err}");
    }

    #[test]
    fn json_patch_operations() {
        let p = json!([
            {"op": "replace", "path": "/spec/ports/0/port", "value": 81},
            {"op": "add", "path": "/metadata/labels/c", "value": "3"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "test", "path": "/spec/type", "value": "ClusterIP"},
            {"op": "add", "path": "/spec/ports/-", "value": {"port": 9}}
        ]);
        let out = json_patch(&svc(), &p).unwrap();
        assert_eq!(out["spec"]["ports"][0]["port"], 81);
        assert_eq!(out["spec"]["ports"][2]["port"], 9);
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let bad = json!([{"op": "test", "path": "/spec/type", "value": "NodePort"}]);
        assert!(
            json_patch(&svc(), &bad)
                .unwrap_err()
                .contains("operation 0: test failed")
        );
        assert!(json_patch(&svc(), &json!({"op": "add"})).is_err());
    }
}
