//! The agent's wire protocol, documented for other implementers in
//! `backends/PROTOCOL.md`:
//!
//! - harness -> agent (stdin): [`WatchEvent`] JSON lines, Kubernetes watch
//!   events of `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` objects,
//!   the initial list first, then `{"type":"SYNCED"}`, then changes.
//! - agent -> harness (stdout): [`AgentMessage`] JSON lines, one per sync.
//! - agent -> `exec:` program (its stdin): a [`ProgramInput::Config`] line,
//!   the same watch events, and a [`ProgramInput::Sync`] request whenever the
//!   agent syncs; the program answers each request with one [`ProgramReply`].

use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::NodeContext;

/// A Kubernetes API object the agent watches.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiObject {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl ApiObject {
    pub fn kind(&self) -> &'static str {
        match self {
            ApiObject::Service(_) => "Service",
            ApiObject::EndpointSlice(_) => "EndpointSlice",
        }
    }

    pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            ApiObject::Service(s) => &s.metadata,
            ApiObject::EndpointSlice(s) => &s.metadata,
        }
    }

    /// `namespace/name` of the object.
    pub fn key(&self) -> String {
        let m = self.metadata();
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or("")
        )
    }
}

impl Serialize for ApiObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApiObject::Service(o) => o.serialize(s),
            ApiObject::EndpointSlice(o) => o.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ApiObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "Service" => serde_json::from_value(v)
                .map(|o| ApiObject::Service(Box::new(o)))
                .map_err(D::Error::custom),
            "EndpointSlice" => serde_json::from_value(v)
                .map(|o| ApiObject::EndpointSlice(Box::new(o)))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "unsupported object kind {other:?}: expected Service or EndpointSlice"
            ))),
        }
    }
}

/// One line of the watch stream, as the Kubernetes API server's watch sends
/// it, plus the informer's "initial list done" marker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WatchEvent {
    #[serde(rename = "ADDED")]
    Added { object: ApiObject },
    #[serde(rename = "MODIFIED")]
    Modified { object: ApiObject },
    #[serde(rename = "DELETED")]
    Deleted { object: ApiObject },
    /// Every object of the initial list has been sent.
    #[serde(rename = "SYNCED")]
    Synced,
}

impl WatchEvent {
    pub fn object(&self) -> Option<&ApiObject> {
        match self {
            WatchEvent::Added { object }
            | WatchEvent::Modified { object }
            | WatchEvent::Deleted { object } => Some(object),
            WatchEvent::Synced => None,
        }
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("watch events always serialize");
        s.push('\n');
        s
    }
}

/// CPU and memory used over one sync, from getrusage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuUsage {
    /// The agent process itself (all its threads).
    pub self_user_seconds: f64,
    pub self_sys_seconds: f64,
    /// Its waited-for children (iptables-restore, nft, an exec: program).
    pub children_user_seconds: f64,
    pub children_sys_seconds: f64,
    /// Peak resident set size so far, in KiB, of the agent (VmHWM, since
    /// its exec) and of its largest child (getrusage: the kernel carries
    /// the agent's peak at fork time into a child's, so an upper bound).
    pub self_max_rss_kib: u64,
    pub children_max_rss_kib: u64,
}

impl CpuUsage {
    pub fn total_seconds(&self) -> f64 {
        self.self_user_seconds
            + self.self_sys_seconds
            + self.children_user_seconds
            + self.children_sys_seconds
    }
}

/// Full or partial sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Partial,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Full => "full",
            SyncMode::Partial => "partial",
        })
    }
}

/// One line per sync, written by the agent to stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub node: String,
    pub backend: String,
    /// 1 for the first sync of this agent.
    pub seq: u64,
    pub mode: SyncMode,
    /// Unix time in seconds (fractional) when the sync started.
    pub started_at: f64,
    pub wall_seconds: f64,
    pub cpu: CpuUsage,
    /// Rules or objects the backend has programmed after this sync.
    pub rules: u64,
    /// Rules, lines or objects written in this sync.
    pub written: u64,
    pub services: u64,
    pub endpoints: u64,
    /// Service ports whose rules this sync changed.
    pub service_ports_changed: u64,
    /// Watch events folded into this sync.
    pub service_events: u64,
    pub endpoint_events: u64,
    /// Highest `metadata.resourceVersion` this sync applied.
    pub resource_version: u64,
    /// The same per watch stream: an agent fed through the API gets
    /// Services and EndpointSlices on two streams, each in order but not
    /// with each other, so "synced to N" holds per stream.
    #[serde(default)]
    pub versions: StreamVersions,
    /// Seconds from each endpoint change's `last-change-trigger-time` to the
    /// end of this sync (kube-proxy's network programming duration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programming_seconds: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The proxier's family, when the agent runs one per family (a lab
    /// with IPv6 and a backend that serves it); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<crate::model::IpFamily>,
}

/// The highest resourceVersion seen on each watch stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamVersions {
    pub services: u64,
    pub endpoint_slices: u64,
}

impl StreamVersions {
    /// Whether everything up to `want` on each stream is in.
    pub fn covers(&self, want: &StreamVersions) -> bool {
        self.services >= want.services && self.endpoint_slices >= want.endpoint_slices
    }

    pub fn max(self, other: StreamVersions) -> StreamVersions {
        StreamVersions {
            services: self.services.max(other.services),
            endpoint_slices: self.endpoint_slices.max(other.endpoint_slices),
        }
    }

    /// Records `rv` on the stream of `kind` ("Service" or "EndpointSlice").
    pub fn saw(&mut self, kind: &str, rv: u64) {
        match kind {
            "Service" => self.services = self.services.max(rv),
            _ => self.endpoint_slices = self.endpoint_slices.max(rv),
        }
    }
}

/// Everything the agent writes on stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentMessage {
    /// The agent runs and its backend is set up.
    Started {
        node: String,
        backend: String,
        pid: u32,
    },
    Sync(Box<SyncReport>),
    /// The agent cannot go on; it exits after this line.
    Fatal {
        node: String,
        error: String,
    },
}

/// What the agent sends to an `exec:` program's stdin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ProgramInput {
    /// First line: who and where the program is.
    #[serde(rename = "CONFIG")]
    Config { node: NodeContext },
    /// Apply everything received so far; answer with one [`ProgramReply`].
    #[serde(rename = "SYNC")]
    Sync { mode: SyncMode, seq: u64 },
    /// A watch event, passed through unchanged.
    #[serde(untagged)]
    Event(WatchEvent),
}

/// An `exec:` program's answer to one `SYNC`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramReply {
    /// The `seq` of the SYNC this answers.
    pub seq: u64,
    /// Rules or objects programmed after this sync.
    #[serde(default)]
    pub rules: u64,
    #[serde(default)]
    pub written: u64,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_event_round_trips_as_kubernetes_writes_it() {
        let line = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default","resourceVersion":"7"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80,"protocol":"TCP"}]}}}"#;
        let ev: WatchEvent = serde_json::from_str(line).unwrap();
        let obj = ev.object().unwrap();
        assert_eq!(obj.kind(), "Service");
        assert_eq!(obj.key(), "default/web");
        let again: WatchEvent = serde_json::from_str(ev.to_line().trim()).unwrap();
        assert_eq!(again, ev);
        let synced: WatchEvent = serde_json::from_str(r#"{"type":"SYNCED"}"#).unwrap();
        assert_eq!(synced, WatchEvent::Synced);
    }

    #[test]
    fn unknown_kind_is_an_error_that_names_it() {
        let line = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{}}}"#;
        let err = serde_json::from_str::<WatchEvent>(line).unwrap_err();
        assert!(err.to_string().contains("\"Pod\""), "{err}");
    }

    #[test]
    fn program_input_tags() {
        let sync = ProgramInput::Sync {
            mode: SyncMode::Partial,
            seq: 3,
        };
        assert_eq!(
            serde_json::to_string(&sync).unwrap(),
            r#"{"type":"SYNC","mode":"partial","seq":3}"#
        );
        let ev = ProgramInput::Event(WatchEvent::Synced);
        assert_eq!(serde_json::to_string(&ev).unwrap(), r#"{"type":"SYNCED"}"#);
    }
}
