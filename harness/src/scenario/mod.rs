//! Scenario files: one `kind: Lab` document plus plain Kubernetes manifests
//! (`Service`, `Deployment`). Loading checks everything before anything is
//! created; every error names the file, line, column and field.

pub mod generate;
mod lab;
mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use svclab_backends::model::Protocol;

pub use lab::*;
use yaml::{Document, Pos};

/// The built-in default scenario (`scenarios/smoke.yaml`).
pub const SMOKE: &str = include_str!("../../../scenarios/smoke.yaml");
pub const SMOKE_NAME: &str = "scenarios/smoke.yaml";

/// The namespace of the lab's own client pods.
pub const CLIENT_NAMESPACE: &str = "svclab-system";

/// One error in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub pos: Pos,
    /// Field path inside the document, like `spec.ports[0].port`; prefixed
    /// with the object (`Service default/web`) when there is one.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, self.field, self.message
        )
    }
}

/// Every error found in a scenario (loading does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

/// A container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod the lab runs: a network namespace with echo servers on its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    /// Index into [`Scenario::nodes`].
    pub node: usize,
    pub ip: Ipv4Addr,
    pub ports: Vec<PodPort>,
    pub ready: bool,
    pub terminating: bool,
    /// Counted in its Deployment's replicas now (scale churn can change it).
    pub active: bool,
    pub deployment: Option<String>,
    /// A lab client pod (no Service selects it).
    pub client: bool,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A loaded, checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file it came from, as given.
    pub file: String,
    pub name: String,
    pub lab: LabSpec,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<NodePlan>,
    /// The node network's gateway (on the fabric bridge).
    pub fabric_gateway: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub node_port_range: (u16, u16),
}

impl Scenario {
    /// Loads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            ScenarioErrors(vec![ScenarioError {
                file: file.clone(),
                pos: Pos { line: 0, col: 0 },
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Scenario::parse(&file, &src)
    }

    /// The built-in smoke scenario.
    pub fn smoke() -> Scenario {
        Scenario::parse(SMOKE_NAME, SMOKE).expect("the built-in smoke scenario is valid")
    }

    /// Parses and checks scenario text; `file` names it in errors.
    pub fn parse(file: &str, src: &str) -> Result<Scenario, ScenarioErrors> {
        let docs = yaml::parse_documents(src).map_err(|e| {
            ScenarioErrors(vec![ScenarioError {
                file: file.to_string(),
                pos: e.pos,
                field: "(syntax)".into(),
                message: e.message,
            }])
        })?;
        let mut errs = Errs::new(file);
        let mut lab: Option<(LabDoc, usize)> = None;
        let mut saw_lab = false;
        let mut services: Vec<(Service, usize)> = Vec::new();
        let mut deployments: Vec<(Deployment, usize)> = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            if doc.value.is_null() {
                continue;
            }
            let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("");
            match kind {
                "Lab" => {
                    saw_lab = true;
                    if let Some(l) = errs.typed::<LabDoc>(doc, i, false) {
                        if lab.is_some() {
                            errs.at(doc, "kind", "a scenario has exactly one Lab document");
                        } else {
                            if l.api_version != LAB_API_VERSION {
                                errs.at(
                                    doc,
                                    "apiVersion",
                                    format!("must be {LAB_API_VERSION}, not {:?}", l.api_version),
                                );
                            }
                            lab = Some((l, i));
                        }
                    }
                }
                "Service" => {
                    if let Some(s) = errs.typed::<Service>(doc, i, true) {
                        services.push((s, i));
                    }
                }
                "Deployment" => {
                    if let Some(d) = errs.typed::<Deployment>(doc, i, true) {
                        deployments.push((d, i));
                    }
                }
                "" => errs.at(doc, "kind", "missing: every document needs a kind"),
                other => errs.at(
                    doc,
                    "kind",
                    format!("unsupported kind {other:?}: expected Lab, Service or Deployment"),
                ),
            }
        }
        let Some((lab, lab_doc)) = lab else {
            if saw_lab {
                return Err(errs.into_errors());
            }
            errs.push(
                Pos { line: 1, col: 1 },
                "(file)",
                "no `kind: Lab` document: a scenario needs one",
            );
            return Err(errs.into_errors());
        };
        errs.check()?;
        let ctx = validate::Context {
            docs: &docs,
            lab: &lab.spec,
            lab_doc,
            services: &services,
            deployments: &deployments,
        };
        let derived = validate::derive(&ctx, &mut errs);
        errs.check()?;
        let derived = derived.expect("derive succeeds when it reports no error");
        Ok(Scenario {
            file: file.to_string(),
            name: if lab.metadata.name.is_empty() {
                Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "scenario".into())
            } else {
                lab.metadata.name.clone()
            },
            lab: lab.spec,
            services: services.into_iter().map(|(s, _)| s).collect(),
            deployments: deployments.into_iter().map(|(d, _)| d).collect(),
            pods: derived.pods,
            nodes: derived.nodes,
            fabric_gateway: derived.fabric_gateway,
            external_ip: derived.external_ip,
            node_port_range: derived.node_port_range,
        })
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Pods per node, for display.
    pub fn pods_per_node(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in &self.pods {
            *m.entry(self.nodes[p.node].name.clone()).or_default() += 1;
        }
        m
    }
}

/// Collects errors with their places.
pub(crate) struct Errs {
    file: String,
    list: Vec<ScenarioError>,
}

impl Errs {
    fn new(file: &str) -> Self {
        Errs {
            file: file.to_string(),
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.list.push(ScenarioError {
            file: self.file.clone(),
            pos,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// An error at `path` of `doc`.
    pub(crate) fn at(&mut self, doc: &Document, path: &str, message: impl Into<String>) {
        let field = document_label(doc, path);
        self.push(doc.pos(path), &field, message);
    }

    fn check(&self) -> Result<(), ScenarioErrors> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ScenarioErrors(self.list.clone()))
        }
    }

    fn into_errors(self) -> ScenarioErrors {
        ScenarioErrors(self.list)
    }

    /// Deserializes a document into `T`, reporting type errors at their
    /// field. With `reject_unknown`, fields `T` does not know (which
    /// k8s-openapi would silently drop) are errors too.
    fn typed<T: serde::de::DeserializeOwned + Serialize>(
        &mut self,
        doc: &Document,
        _index: usize,
        reject_unknown: bool,
    ) -> Option<T> {
        let parsed: Result<T, _> = serde_path_to_error::deserialize(&doc.value);
        match parsed {
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = e.into_inner().to_string();
                self.at(doc, &path, message);
                None
            }
            Ok(t) => {
                if reject_unknown {
                    let back = serde_json::to_value(&t).unwrap_or(Value::Null);
                    let mut unknown = Vec::new();
                    unknown_fields(&doc.value, &back, "", &mut unknown);
                    for path in &unknown {
                        let name = path.rsplit(['.', ']']).next().unwrap_or(path);
                        self.at(doc, path, format!("unknown field {name:?}"));
                    }
                    if !unknown.is_empty() {
                        return None;
                    }
                }
                Some(t)
            }
        }
    }
}

/// `Service default/web: spec.ports[0].port` style label for a field.
fn document_label(doc: &Document, path: &str) -> String {
    let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("");
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let field = if path.is_empty() { "(document)" } else { path };
    match kind {
        "Service" | "Deployment" if !name.is_empty() => format!("{kind} {ns}/{name}: {field}"),
        "Lab" => format!("Lab: {field}"),
        _ => field.to_string(),
    }
}

/// Paths present in `original` but lost when the typed object was written
/// back: fields the type does not have. Nulls carry no information.
fn unknown_fields(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => unknown_fields(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, (v, bv)) in o.iter().zip(b).enumerate() {
                unknown_fields(v, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
