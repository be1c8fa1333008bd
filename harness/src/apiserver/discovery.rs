//! Discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/<group>/v1`,
//! `/version`) and the small OpenAPI v3 index that tells kubectl the server
//! validates fields itself, so `kubectl apply` needs no client-side schema.

use serde_json::{Value, json};

use crate::controlplane::store::Resource;

/// The Kubernetes version the lab's API speaks (its objects are
/// k8s-openapi's `latest`).
pub const GIT_VERSION: &str = "v1.37.0-svclab";

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "37", "gitVersion": GIT_VERSION,
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "svclab", "platform": "linux/amd64"
    })
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = Resource::ALL
        .iter()
        .map(|r| r.group())
        .filter(|g| !g.is_empty())
        .collect();
    g.sort();
    g.dedup();
    g
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn known_group(group: &str) -> bool {
    groups().contains(&group)
}

fn verbs(r: Resource) -> Vec<&'static str> {
    if r.create_only() {
        vec!["create"]
    } else if r.writable() {
        vec![
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    } else {
        vec!["get", "list", "watch"]
    }
}

/// `APIResourceList` for `group` ("" for core) at v1.
pub fn resource_list(group: &str) -> Value {
    let mut resources = Vec::new();
    for r in Resource::ALL.into_iter().filter(|r| r.group() == group) {
        resources.push(json!({
            "name": r.plural(), "singularName": r.singular(), "namespaced": r.namespaced(),
            "kind": r.kind(), "verbs": verbs(r), "shortNames": r.short_names(),
        }));
        if r == Resource::Deployments {
            resources.push(json!({
                "name": "deployments/scale", "singularName": "", "namespaced": true,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

/// `/openapi/v3`: one entry per group-version.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut all: Vec<&str> = vec![""];
    all.extend(groups());
    for g in all {
        let p = gv_path(g);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=svclab")}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/<gv path>`: the PATCH operations, each declaring the
/// `fieldValidation` parameter (the server does the validating).
pub fn openapi_group(path: &str) -> Option<Value> {
    let mut all: Vec<&str> = vec![""];
    all.extend(groups());
    let group = all.into_iter().find(|g| gv_path(g) == path)?;
    let mut paths = serde_json::Map::new();
    for r in Resource::ALL.into_iter().filter(|r| r.group() == group) {
        let item = if r.namespaced() {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", r.plural())
        } else {
            format!("/{path}/{}/{{name}}", r.plural())
        };
        paths.insert(
            item,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": "v1", "kind": r.kind()},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "svclab", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}
