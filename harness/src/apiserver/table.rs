//! `meta.k8s.io/v1` Tables: what `kubectl get` asks for (`Accept: ...;as=Table`)
//! and prints as columns, computed on the server as the API server's own
//! printers do for these kinds.

use serde_json::{Value, json};

use crate::controlplane::store::Resource;

/// Whether the client asked for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .any(|part| part.contains("as=Table") && part.contains("g=meta.k8s.io"))
}

fn columns(r: Resource) -> Vec<(&'static str, &'static str, u8)> {
    match r {
        Resource::Services => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        Resource::EndpointSlices => vec![
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        Resource::Nodes => vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("Pod-CIDR", "string", 1),
        ],
        Resource::Pods => vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "integer", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        Resource::Deployments => vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
        ],
        Resource::Namespaces => vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        Resource::ServiceCidrs => vec![
            ("Name", "string", 0),
            ("CIDRs", "string", 0),
            ("Age", "string", 0),
        ],
        Resource::Events | Resource::EventsV1 => vec![("Name", "string", 0)],
    }
}

/// `kubectl`'s age format: 45s, 12m, 3h, 2d.
fn age(o: &Value) -> String {
    let Some(ts) = o["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn cells(r: Resource, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let spec = &o["spec"];
    match r {
        Resource::Services => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let mut external: Vec<String> = spec["externalIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            external.extend(
                o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| s(&i["ip"])),
            );
            let external = match (spec["type"].as_str(), external.is_empty()) {
                (Some("ExternalName"), _) => s(&spec["externalName"]),
                (Some("LoadBalancer"), true) => "<pending>".into(),
                _ => or_none(external.join(",")),
            };
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            vec![
                name,
                json!(spec["type"]),
                json!(or_none(s(&spec["clusterIP"]))),
                json!(external),
                json!(or_none(ports.join(","))),
                json!(age(o)),
                json!(or_none(selector.join(","))),
            ]
        }
        Resource::EndpointSlices => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["port"].to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                or_none(addrs.join(","))
            };
            vec![
                name,
                json!(o["addressType"]),
                json!(or_none(ports.join(","))),
                json!(shown),
                json!(age(o)),
            ]
        }
        Resource::Nodes => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let ip = o["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| s(&a["address"]))
                .unwrap_or_default();
            vec![
                name,
                json!(if ready { "Ready" } else { "NotReady" }),
                json!("<none>"),
                json!(age(o)),
                json!(super::discovery::GIT_VERSION),
                json!(ip),
                json!(s(&spec["podCIDR"])),
            ]
        }
        Resource::Pods => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let status = if o["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".to_string()
            } else {
                s(&o["status"]["phase"])
            };
            vec![
                name,
                json!(if ready { "1/1" } else { "0/1" }),
                json!(status),
                json!(0),
                json!(age(o)),
                json!(s(&o["status"]["podIP"])),
                json!(s(&spec["nodeName"])),
            ]
        }
        Resource::Deployments => {
            let want = spec["replicas"].as_i64().unwrap_or(0);
            let ready = o["status"]["readyReplicas"].as_i64().unwrap_or(0);
            vec![
                name,
                json!(format!("{ready}/{want}")),
                json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
                json!(age(o)),
            ]
        }
        Resource::Namespaces => vec![name, json!(o["status"]["phase"]), json!(age(o))],
        Resource::ServiceCidrs => {
            let cidrs: Vec<String> = spec["cidrs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            vec![name, json!(cidrs.join(",")), json!(age(o))]
        }
        Resource::Events | Resource::EventsV1 => vec![name],
    }
}

fn row(r: Resource, json_bytes: &[u8]) -> Value {
    let o: Value = serde_json::from_slice(json_bytes).unwrap_or_default();
    let meta = o["metadata"].clone();
    json!({
        "cells": cells(r, &o),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    })
}

/// A Table of `objects` (their JSON as stored).
pub fn table<'a>(r: Resource, rv: u64, objects: impl Iterator<Item = &'a [u8]>) -> Value {
    let defs: Vec<Value> = columns(r)
        .into_iter()
        .map(|(name, ty, priority)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
                   "description": "", "priority": priority})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": defs,
        "rows": objects.map(|o| row(r, o)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }

    #[test]
    fn a_service_row_has_kubectls_columns() {
        let svc = json!({"metadata": {"name": "web-nodeport", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.12",
                     "ports": [{"port": 8080, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let t = table(
            Resource::Services,
            7,
            [svc.to_string().as_bytes()].into_iter(),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-nodeport");
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.96.0.12");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "8080:30080/TCP");
        assert!(cells[5].as_str().unwrap().ends_with('d'));
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            cells.as_array().unwrap().len()
        );
    }
}
