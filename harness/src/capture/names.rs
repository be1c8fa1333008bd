//! Names in a captured scenario: real node names made into DNS labels,
//! and, with `--anonymize`, every namespace, Service, node and label
//! rewritten to a neutral name. The same input name always gets the same
//! output name, so selectors still select and slices still belong.

use std::collections::BTreeMap;

/// Label keys that say nothing about their owner; kept as they are even
/// when anonymizing, so a captured scenario stays readable.
const NEUTRAL_KEYS: [&str; 8] = [
    "app",
    "k8s-app",
    "component",
    "tier",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
];

/// Namespaces every cluster has; their names reveal nothing.
const NEUTRAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

#[derive(Debug, Default)]
pub struct Names {
    anonymize: bool,
    namespaces: BTreeMap<String, String>,
    services: BTreeMap<(String, String), String>,
    nodes: BTreeMap<String, String>,
    keys: BTreeMap<String, String>,
    values: BTreeMap<(String, String), String>,
}

/// The next name of a family: `prefix-1`, `prefix-2`, ...
fn next(map_len: usize, prefix: &str) -> String {
    format!("{prefix}-{}", map_len + 1)
}

impl Names {
    pub fn new(anonymize: bool) -> Self {
        Names {
            anonymize,
            ..Names::default()
        }
    }

    pub fn anonymize(&self) -> bool {
        self.anonymize
    }

    pub fn namespace(&mut self, ns: &str) -> String {
        if !self.anonymize || NEUTRAL_NAMESPACES.contains(&ns) {
            return ns.to_string();
        }
        let n = self.namespaces.len();
        self.namespaces
            .entry(ns.to_string())
            .or_insert_with(|| next(n, "ns"))
            .clone()
    }

    /// A Service's name (Services are named per namespace).
    pub fn service(&mut self, ns: &str, name: &str) -> String {
        if !self.anonymize {
            return name.to_string();
        }
        let n = self.services.len();
        self.services
            .entry((ns.to_string(), name.to_string()))
            .or_insert_with(|| next(n, "svc"))
            .clone()
    }

    /// A node's name in the Lab: a DNS label even when the real one is a
    /// FQDN, and distinct for distinct inputs.
    pub fn node(&mut self, name: &str) -> String {
        if let Some(n) = self.nodes.get(name) {
            return n.clone();
        }
        let base = if self.anonymize {
            next(self.nodes.len(), "node")
        } else {
            dns_label(name, "node")
        };
        let mut out = base.clone();
        let mut k = 1;
        while self.nodes.values().any(|v| *v == out) {
            k += 1;
            out = suffixed(&base, &k.to_string());
        }
        self.nodes.insert(name.to_string(), out.clone());
        out
    }

    pub fn label_key(&mut self, key: &str) -> String {
        if !self.anonymize || NEUTRAL_KEYS.contains(&key) || key.starts_with("svclab.dev/") {
            return key.to_string();
        }
        let n = self.keys.len();
        self.keys
            .entry(key.to_string())
            .or_insert_with(|| next(n, "label"))
            .clone()
    }

    /// A label value; numbered per key so `app=a` and `tier=a` stay apart.
    pub fn label_value(&mut self, key: &str, value: &str) -> String {
        if !self.anonymize || key.starts_with("svclab.dev/") {
            return value.to_string();
        }
        let n = self.values.len();
        self.values
            .entry((key.to_string(), value.to_string()))
            .or_insert_with(|| next(n, "value"))
            .clone()
    }

    pub fn labels(&mut self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (self.label_key(k), self.label_value(k, v)))
            .collect()
    }
}

/// `text` as an RFC 1123 label: lowercase, other characters as `-`, at
/// most 63 characters; `fallback` when nothing is left.
pub fn dns_label(text: &str, fallback: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let mut s = mapped.trim_matches('-').to_string();
    s.truncate(63);
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        fallback.to_string()
    } else {
        s
    }
}

/// `base-suffix`, shortening `base` so the result stays a 63-character label.
pub fn suffixed(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len() + 1);
    let mut b = base[..base.len().min(room)].to_string();
    while b.ends_with('-') {
        b.pop();
    }
    format!("{b}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymizing_is_consistent_and_keeps_neutral_names() {
        let mut n = Names::new(true);
        assert_eq!(n.namespace("shop"), "ns-1");
        assert_eq!(n.namespace("billing"), "ns-2");
        assert_eq!(n.namespace("shop"), "ns-1");
        assert_eq!(n.namespace("kube-system"), "kube-system");
        assert_eq!(n.service("shop", "cart"), "svc-1");
        assert_eq!(n.service("billing", "cart"), "svc-2");
        assert_eq!(n.service("shop", "cart"), "svc-1");
        assert_eq!(n.label_key("app"), "app");
        assert_eq!(n.label_key("acme.com/team"), "label-1");
        assert_eq!(n.label_value("app", "cart"), "value-1");
        assert_eq!(n.label_value("tier", "cart"), "value-2");
        assert_eq!(n.label_value("app", "cart"), "value-1");
        assert_eq!(n.node("ip-10-0-1-2.ec2.internal"), "node-1");
    }

    #[test]
    fn real_node_names_become_distinct_labels() {
        let mut n = Names::new(false);
        assert_eq!(
            n.node("ip-10-0-1-2.ec2.internal"),
            "ip-10-0-1-2-ec2-internal"
        );
        assert_eq!(n.node("A_B"), "a-b");
        assert_eq!(n.node("a.b"), "a-b-2");
        assert_eq!(n.node("A_B"), "a-b");
        assert_eq!(dns_label("---", "node"), "node");
        assert_eq!(dns_label(&"x".repeat(80), "node").len(), 63);
        assert_eq!(suffixed(&"y".repeat(63), "n1").len(), 63);
    }
}
