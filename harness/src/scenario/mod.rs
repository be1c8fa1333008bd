//! Scenario files: one `kind: Lab` document plus plain Kubernetes manifests
//! (`Service`, `Deployment`). Loading checks everything before anything is
//! created; every error names the file, line, column and field.

pub mod generate;
mod lab;
pub mod limits;
pub mod names;
pub mod stack;
mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use svclab_backends::model::Protocol;

pub use lab::*;
use limits::{Limits, MAX_ERRORS, MAX_FILE_BYTES, MAX_MESSAGE, elide, truncate};
use yaml::{Document, Pos};

/// The built-in default scenario (`scenarios/smoke.yaml`).
pub const SMOKE: &str = include_str!("../../../scenarios/smoke.yaml");
pub const SMOKE_NAME: &str = "scenarios/smoke.yaml";
/// The demo's scenario (`scenarios/demo.yaml`): every check has something
/// to test.
pub const DEMO: &str = include_str!("../../../scenarios/demo.yaml");
pub const DEMO_NAME: &str = "scenarios/demo.yaml";

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

/// The errors found in a scenario (loading does not stop at the first):
/// the first [`MAX_ERRORS`], and how many more there were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>, pub usize);

impl ScenarioErrors {
    fn one(file: &str, pos: Pos, field: &str, message: String) -> ScenarioErrors {
        ScenarioErrors(
            vec![ScenarioError {
                file: file.to_string(),
                pos,
                field: field.into(),
                message,
            }],
            0,
        )
    }
}

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.1 > 0 {
            write!(f, "\n... and {} more error(s)", self.1)?;
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
    /// Its IPv6 address, in a lab with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
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
    /// The second external client (`external-2`), with a load balancer
    /// pool: outside the source ranges the first one is inside of.
    pub external2_ip: Option<Ipv4Addr>,
    pub node_port_range: (u16, u16),
    /// The cluster's IP families and its IPv6 ranges.
    pub stack: stack::Stack,
    /// What loading accepted but the lab does not use, or what the user
    /// may not expect (documents of other kinds ignored, Services without
    /// endpoints), each with its place.
    pub notes: Vec<String>,
}

impl Scenario {
    /// Loads and checks a scenario file (at most [`MAX_FILE_BYTES`], UTF-8).
    pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
        let file = path.display().to_string();
        let whole = Pos { line: 0, col: 0 };
        let cannot = |e: std::io::Error| {
            ScenarioErrors::one(&file, whole, "(file)", format!("cannot read: {e}"))
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ScenarioErrors::one(
                &file,
                whole,
                "(file)",
                format!(
                    "is larger than {} MiB, the most a scenario may be",
                    MAX_FILE_BYTES >> 20
                ),
            ));
        }
        let src = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let at = e.utf8_error().valid_up_to();
            let line_start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&bytes[line_start..at])
                .chars()
                .count()
                + 1;
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            ScenarioErrors::one(
                &file,
                Pos { line, col },
                "(file)",
                format!("invalid UTF-8 at byte offset {at}: a scenario must be UTF-8 text"),
            )
        })?;
        Scenario::parse(&file, &src)
    }

    /// The built-in smoke scenario.
    pub fn smoke() -> Scenario {
        Scenario::parse(SMOKE_NAME, SMOKE).expect("the built-in smoke scenario is valid")
    }

    /// The built-in demo scenario.
    pub fn demo() -> Scenario {
        Scenario::parse(DEMO_NAME, DEMO).expect("the built-in demo scenario is valid")
    }

    /// Parses and checks scenario text; `file` names it in errors. Limits
    /// that depend on the machine are this machine's.
    pub fn parse(file: &str, src: &str) -> Result<Scenario, ScenarioErrors> {
        Scenario::parse_with_limits(file, src, &Limits::for_this_machine())
    }

    /// [`Scenario::parse`] with the given machine limits.
    pub fn parse_with_limits(
        file: &str,
        src: &str,
        limits: &Limits,
    ) -> Result<Scenario, ScenarioErrors> {
        if src.len() as u64 > MAX_FILE_BYTES {
            return Err(ScenarioErrors::one(
                file,
                Pos { line: 0, col: 0 },
                "(file)",
                format!(
                    "is larger than {} MiB, the most a scenario may be",
                    MAX_FILE_BYTES >> 20
                ),
            ));
        }
        // Documents are typed as they are parsed, and only what error
        // messages need (kind, name, namespace, places) is kept of each.
        let mut errs = Errs::new(file);
        let mut docs: Vec<Document> = Vec::new();
        let mut lab: Option<(LabDoc, usize)> = None;
        let mut saw_lab = false;
        let mut services: Vec<(Service, usize)> = Vec::new();
        let mut deployments: Vec<(Deployment, usize)> = Vec::new();
        let mut ignored: BTreeMap<String, (usize, Pos)> = BTreeMap::new();
        let mut take = |mut doc: Document, errs: &mut Errs| {
            if doc.value.is_null() {
                return;
            }
            let i = docs.len();
            let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("");
            match kind {
                "Lab" => {
                    saw_lab = true;
                    if let Some(l) = errs.typed::<LabDoc>(&doc, i, false) {
                        if lab.is_some() {
                            errs.at(&doc, "kind", "a scenario has exactly one Lab document");
                        } else {
                            if l.api_version != LAB_API_VERSION {
                                errs.at(
                                    &doc,
                                    "apiVersion",
                                    format!(
                                        "must be {LAB_API_VERSION}, not {}",
                                        elide(&l.api_version)
                                    ),
                                );
                            }
                            lab = Some((l, i));
                        }
                    }
                }
                "Service" => {
                    if let Some(s) = errs.typed::<Service>(&doc, i, true) {
                        services.push((s, i));
                    }
                }
                "Deployment" => {
                    if let Some(d) = errs.typed::<Deployment>(&doc, i, true) {
                        deployments.push((d, i));
                    }
                }
                "" => errs.at(&doc, "kind", "missing: every document needs a kind"),
                other => {
                    if other == "Namespace" {
                        validate::check_namespace_doc(&doc, errs);
                    }
                    let e = ignored.entry(other.to_string()).or_insert((0, doc.start));
                    e.0 += 1;
                }
            }
            if kind != "Lab" {
                doc.ident = Some(Box::new(ident(&doc.value)));
                doc.value = Value::Null;
            }
            doc.positions.shrink_to_fit();
            docs.push(doc);
        };
        yaml::for_each_document(src, |doc| {
            for d in unpack_lists(vec![doc], &mut errs) {
                take(d, &mut errs);
            }
        })
        .map_err(|e| {
            ScenarioErrors::one(file, e.pos, "(syntax)", truncate(e.message, MAX_MESSAGE))
        })?;
        let Some((mut lab, lab_doc)) = lab else {
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
        let mut notes = Vec::new();
        for (kind, (n, pos)) in &ignored {
            let what = if kind == "Namespace" {
                "accepted: the lab's namespaces exist as soon as an object names them".to_string()
            } else {
                "ignored: the lab uses only Lab, Service and Deployment documents".to_string()
            };
            notes.push(format!(
                "{file}:{}:{}: {n} {} document(s) {what}",
                pos.line,
                pos.col,
                truncate(kind.clone(), 64)
            ));
        }
        let stack = stack::resolve(&docs[lab_doc], &mut lab.spec, &mut errs);
        errs.check()?;
        let mut stack = stack.expect("resolve succeeds when it reports no error");
        let ctx = validate::Context {
            docs: &docs,
            lab: &lab.spec,
            lab_doc,
            services: &services,
            deployments: &deployments,
            limits,
            stack: &stack,
        };
        validate::check_lab_name(&docs[lab_doc], &lab.metadata.name, &mut errs);
        let derived = validate::derive(&ctx, &mut errs, &mut notes);
        errs.check()?;
        let mut derived = derived.expect("derive succeeds when it reports no error");
        if let Some(v6) = stack.v6.as_mut() {
            stack::place(
                &lab.spec,
                v6,
                &mut derived.nodes,
                &mut derived.pods,
                derived.external_ip,
                derived.external2_ip,
            );
        }
        Ok(Scenario {
            file: file.to_string(),
            name: if lab.metadata.name.is_empty() {
                name_from_file(file)
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
            external2_ip: derived.external2_ip,
            node_port_range: derived.node_port_range,
            stack,
            notes,
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

/// Prints a scenario's notes to stderr, at most [`MAX_ERRORS`] of them.
pub fn print_notes(scenario: &Scenario) {
    for n in scenario.notes.iter().take(MAX_ERRORS) {
        tracing::info!("note: {n}");
    }
    if scenario.notes.len() > MAX_ERRORS {
        tracing::info!("note: ... and {} more", scenario.notes.len() - MAX_ERRORS);
    }
}

/// The name a Lab without `metadata.name` gets: its file's stem, reduced
/// to lowercase letters, digits, '-' and '.' (it names the results folder).
fn name_from_file(file: &str) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "scenario".into()
    } else {
        name.to_string()
    }
}

/// Kind, namespace and name of a document.
fn ident(value: &Value) -> (String, String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let meta = value.get("metadata");
    let ns = text(meta.and_then(|m| m.get("namespace")));
    (
        text(value.get("kind")),
        if ns.is_empty() { "default".into() } else { ns },
        text(meta.and_then(|m| m.get("name"))),
    )
}

/// Unpacks `kind: List` documents (and typed lists such as `ServiceList`),
/// as kubectl does: their items become documents, with their places.
fn unpack_lists(docs: Vec<Document>, errs: &mut Errs) -> Vec<Document> {
    let mut out = Vec::with_capacity(docs.len());
    let mut todo: Vec<Document> = docs.into_iter().rev().collect();
    while let Some(mut doc) = todo.pop() {
        let kind = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(item_kind) = kind.strip_suffix("List") else {
            out.push(doc);
            continue;
        };
        let items = match doc.value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                errs.at(&doc, "items", "a List's items must be a list");
                continue;
            }
        };
        let api_version = doc.value.get("apiVersion").cloned();
        let mut subs: Vec<Document> = items
            .into_iter()
            .enumerate()
            .map(|(i, mut value)| {
                // Items of typed lists may leave out their kind.
                if !item_kind.is_empty()
                    && let Some(m) = value.as_object_mut()
                {
                    m.entry("kind").or_insert_with(|| item_kind.into());
                    if let Some(v) = &api_version {
                        m.entry("apiVersion").or_insert_with(|| v.clone());
                    }
                }
                Document {
                    value,
                    positions: Default::default(),
                    start: doc.pos(&format!("items[{i}]")),
                    ident: None,
                }
            })
            .collect();
        for (path, pos) in std::mem::take(&mut doc.positions) {
            let Some(rest) = path.strip_prefix("items[") else {
                continue;
            };
            let Some((index, rest)) = rest.split_once(']') else {
                continue;
            };
            if let Some(sub) = index.parse::<usize>().ok().and_then(|i| subs.get_mut(i)) {
                sub.positions
                    .insert(rest.strip_prefix('.').unwrap_or(rest).to_string(), pos);
            }
        }
        // Items are unpacked in their order, before the next document.
        while let Some(sub) = subs.pop() {
            todo.push(sub);
        }
    }
    out
}

/// Collects errors with their places: the first [`MAX_ERRORS`], each cut
/// to [`MAX_MESSAGE`], and a count of the rest.
pub(crate) struct Errs {
    file: String,
    list: Vec<ScenarioError>,
    count: usize,
}

impl Errs {
    fn new(file: &str) -> Self {
        Errs {
            file: file.to_string(),
            list: Vec::new(),
            count: 0,
        }
    }

    /// Errors found so far, kept or not.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn push(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.count += 1;
        if self.list.len() >= MAX_ERRORS {
            return;
        }
        self.list.push(ScenarioError {
            file: truncate(self.file.clone(), MAX_MESSAGE),
            pos,
            field: truncate(field.to_string(), MAX_MESSAGE),
            message: truncate(message.into(), MAX_MESSAGE),
        });
    }

    /// An error at `path` of `doc`.
    pub(crate) fn at(&mut self, doc: &Document, path: &str, message: impl Into<String>) {
        let field = document_label(doc, path);
        self.push(doc.pos(path), &field, message);
    }

    fn check(&self) -> Result<(), ScenarioErrors> {
        if self.count == 0 {
            Ok(())
        } else {
            Err(ScenarioErrors(
                self.list.clone(),
                self.count - self.list.len(),
            ))
        }
    }

    fn into_errors(self) -> ScenarioErrors {
        let more = self.count - self.list.len();
        ScenarioErrors(self.list, more)
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
                        self.at(doc, path, format!("unknown field {}", elide(name)));
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
    let owned;
    let (kind, ns, name) = match &doc.ident {
        Some(id) => (&id.0, &id.1, &id.2),
        None => {
            owned = ident(&doc.value);
            (&owned.0, &owned.1, &owned.2)
        }
    };
    let (kind, ns, name) = (kind.as_str(), ns.as_str(), name.as_str());
    let field = if path.is_empty() { "(document)" } else { path };
    let field = truncate(field.to_string(), limits::MAX_QUOTED);
    match kind {
        "Service" | "Deployment" if !name.is_empty() => format!(
            "{kind} {}/{}: {field}",
            truncate(ns.to_string(), limits::MAX_QUOTED),
            truncate(name.to_string(), limits::MAX_QUOTED)
        ),
        "Lab" => format!("Lab: {field}"),
        _ => field,
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
