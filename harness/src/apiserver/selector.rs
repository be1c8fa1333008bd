//! Label selectors (equality- and set-based, as `labelSelector=` carries
//! them) and the field selectors the lab supports (`metadata.name`,
//! `metadata.namespace`).

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Req>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_term(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // `notin` matches objects without the key too.
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in {text:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {text:?}"));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

fn set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    inner.split(',').map(value).collect()
}

fn parse_term(term: &str) -> Result<Req, String> {
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Req::NotExists(key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Req::NotIn(key(k)?, vec![value(v)?]));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Req::In(key(k)?, vec![value(v)?]));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let k = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Req::Exists(key(k)?)),
        Some(rest) if rest.starts_with("notin") => Ok(Req::NotIn(key(k)?, set(&rest[5..])?)),
        Some(rest) if rest.starts_with("in") => Ok(Req::In(key(k)?, set(&rest[2..])?)),
        Some(_) => Err(format!("cannot parse label selector term {term:?}")),
    }
}

/// A parsed `fieldSelector`: the fields every resource has, and
/// `spec.clusterIP` (kube-proxy's Service informer asks for
/// `spec.clusterIP!=None`, to leave headless Services out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Field, bool, String)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    ClusterIp,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                "spec.clusterIP" => Field::ClusterIp,
                other => {
                    return Err(format!(
                        "field label not supported: {other} (the lab supports metadata.name, \
                         metadata.namespace and, for Services, spec.clusterIP)"
                    ));
                }
            };
            out.push((field, equal, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// `cluster_ip` is a Service's `spec.clusterIP` ("" for other objects).
    pub fn matches(&self, namespace: &str, name: &str, cluster_ip: &str) -> bool {
        self.0.iter().all(|(f, equal, v)| {
            let have = match f {
                Field::Name => name,
                Field::Namespace => namespace,
                Field::ClusterIp => cluster_ip,
            };
            (have == v) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kube_proxys_selector_excludes_proxy_name_and_headless() {
        let s = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("service.kubernetes.io/headless", "")])));
        assert!(!s.matches(&labels(&[(
            "service.kubernetes.io/service-proxy-name",
            "other"
        )])));
    }

    #[test]
    fn equality_and_set_terms() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "nope notin (x)",
            "app,tier",
            "app=web,tier in (front)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            "app=db",
            "app notin (web)",
            "missing",
            "!app",
            "app in (db)",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        for bad in ["app in web", "app in (web", "a b c", "app=(x)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_on_name_namespace_and_cluster_ip() {
        let f = FieldSelector::parse("metadata.name=node-0").unwrap();
        assert!(f.matches("", "node-0", ""));
        assert!(!f.matches("", "node-1", ""));
        let f = FieldSelector::parse("metadata.namespace==default,metadata.name!=x").unwrap();
        assert!(f.matches("default", "web", ""));
        assert!(!f.matches("default", "x", ""));
        // kube-proxy's Service informer.
        let f = FieldSelector::parse("spec.clusterIP!=None").unwrap();
        assert!(f.matches("default", "web", "10.96.0.10"));
        assert!(!f.matches("default", "headless", "None"));
        let err = FieldSelector::parse("spec.nodeName=a").unwrap_err();
        assert!(
            err.contains("field label not supported: spec.nodeName"),
            "{err}"
        );
    }
}
