//! svclab's proxy backends: one dataplane per module, all behind [`Backend`].
//!
//! An agent (one process per node, inside the node's network namespace)
//! feeds watch events into a [`tracker::ChangeTracker`] and calls
//! [`Backend::sync`] with the resulting [`model::ProxyState`] and
//! [`model::ChangeSet`]. Backends program the kernel of the namespace they
//! run in and nothing else.

pub mod cmd;
pub mod conntrack;
pub mod ebpf;
pub mod exec;
pub mod iptables;
pub mod ipvs;
pub mod kubeproxy;
pub mod model;
pub mod nftables;
pub mod none;
pub mod protocol;
#[cfg(test)]
pub mod testns;
pub mod tracker;
pub mod userspace;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{ChangeSet, NodeContext, ProxyState};
use crate::protocol::{SyncMode, WatchEvent};

/// Why a backend failed; every variant names the object or command.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unavailable(#[from] Unavailable),
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The reason a backend cannot run on this host, phrased for a person:
/// what is missing and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{reason}")]
pub struct Unavailable {
    pub reason: String,
}

impl Unavailable {
    pub fn new(reason: impl Into<String>) -> Self {
        Unavailable {
            reason: reason.into(),
        }
    }
}

/// Service behaviours a backend may not implement; the checks skip them
/// with the backend's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// Any DNAT at all (the `none` backend has none).
    Dnat,
    /// The server sees the client pod's own IP.
    SourcePreservation,
    /// Services without endpoints are refused at once.
    RejectNoEndpoints,
    NodePort,
    SessionAffinity,
    /// externalTrafficPolicy / internalTrafficPolicy Local.
    TrafficPolicyLocal,
    /// Traffic from the node's own namespace (the OUTPUT path).
    NodeOrigin,
    /// Stale UDP conntrack entries are cleared.
    ConntrackCleanup,
    /// Endpoint choice is uniformly random (round-robin is uniform too).
    UniformBalance,
    /// A health check node port for a NodePort (not LoadBalancer) Service
    /// with externalTrafficPolicy Local.
    NodePortHealthCheck,
}

/// Result of a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutcome {
    /// Rules or objects programmed after the sync (the backend's unit).
    pub rules: u64,
    /// Rules, lines or objects written by this sync.
    pub written: u64,
}

/// Counters for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStats {
    pub rules: u64,
    /// Backend-specific detail (per-service packet counters, chain counts).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// What one sync is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct SyncRequest<'a> {
    pub mode: SyncMode,
    pub seq: u64,
    pub state: &'a ProxyState,
    pub changes: &'a ChangeSet,
    pub node: &'a NodeContext,
}

/// One dataplane. Created by [`create`], set up once inside the node's
/// namespace, synced many times, cleaned up once.
pub trait Backend: Send {
    fn kind(&self) -> BackendKind;

    /// Behaviours this backend does not implement, with the reason.
    fn limitations(&self) -> Vec<(Feature, String)> {
        self.kind().limitations()
    }

    /// Creates the fixed objects (tables, base chains, devices, programs).
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError>;

    /// Sees each watch event as it arrives; only backends that forward the
    /// raw stream (`exec:`) need this.
    fn observe(&mut self, _event: &WatchEvent) -> Result<(), BackendError> {
        Ok(())
    }

    /// Brings the dataplane to `req.state`. A partial sync may touch only
    /// `req.changes.changed`.
    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError>;

    fn stats(&mut self) -> Result<BackendStats, BackendError>;

    /// Removes everything `setup` and `sync` created. Keeps going after an
    /// error and returns all of them.
    fn cleanup(&mut self) -> Result<(), Vec<BackendError>>;
}

/// Knobs some backends read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendOptions {
    /// IPVS scheduler (`rr` when empty).
    #[serde(default)]
    pub ipvs_scheduler: String,
    /// Deliberate defects, for the lab's own negative tests.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// When set, backends that feed a tool (iptables-restore, nft -f) write
    /// each sync's exact input here as `<seq>-<mode>.<ext>`, so a benchmark
    /// can time the bare tool on the same input (the floor).
    #[serde(default)]
    pub dump_dir: Option<std::path::PathBuf>,
}

impl BackendOptions {
    pub fn has_fault(&self, f: Fault) -> bool {
        self.faults.contains(&f)
    }
}

/// A deliberate defect a backend can be asked to inject, so that the lab
/// can prove its checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Never masquerade (breaks hairpin and NodePort SNAT).
    MissingMasquerade,
    /// Use 1/n at every step of the probability chain (skews balance).
    WrongProbability,
    /// No REJECT for Services without endpoints (clients time out).
    NoReject,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing-masquerade" => Ok(Fault::MissingMasquerade),
            "wrong-probability" => Ok(Fault::WrongProbability),
            "no-reject" => Ok(Fault::NoReject),
            _ => Err(format!(
                "unknown fault {s:?}: expected missing-masquerade, wrong-probability or no-reject"
            )),
        }
    }
}

/// Every backend svclab knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum BackendKind {
    /// Programs nothing: the baseline for every measurement.
    None,
    /// kube-proxy's iptables mode through iptables-nft.
    Iptables,
    /// kube-proxy's iptables mode through iptables-legacy.
    IptablesLegacy,
    /// kube-proxy's nftables mode.
    Nftables,
    /// kube-proxy's IPVS mode.
    Ipvs,
    /// kube-proxy's userspace mode: a proxy in the agent.
    Userspace,
    /// BPF programs with maps the agent updates.
    Ebpf,
    /// An external program speaking the agent protocol.
    Exec(String),
    /// Upstream kube-proxy, run by the agent (`kube-proxy:<mode>[@<version>]`;
    /// no version means [`kubeproxy::DEFAULT_VERSION`]).
    KubeProxy {
        mode: kubeproxy::Mode,
        version: Option<String>,
    },
}

impl BackendKind {
    /// The built-in backends, in the order reports list them.
    pub const BUILTIN: [BackendKind; 7] = [
        BackendKind::None,
        BackendKind::Iptables,
        BackendKind::IptablesLegacy,
        BackendKind::Nftables,
        BackendKind::Ipvs,
        BackendKind::Userspace,
        BackendKind::Ebpf,
    ];

    /// Whether this backend can run in this kernel and with these tools.
    pub fn capability(&self) -> Result<(), Unavailable> {
        match self {
            BackendKind::None => Ok(()),
            BackendKind::Iptables => iptables::capability(iptables::Flavor::Nft),
            BackendKind::IptablesLegacy => iptables::capability(iptables::Flavor::Legacy),
            BackendKind::Nftables => nftables::capability(),
            BackendKind::Ipvs => ipvs::capability(),
            BackendKind::Userspace => userspace::capability(),
            BackendKind::Ebpf => ebpf::capability(),
            BackendKind::Exec(program) => exec::capability(program),
            BackendKind::KubeProxy { mode, .. } => {
                kubeproxy::capability(*mode, self.kube_proxy_version().unwrap_or_default())
            }
        }
    }

    /// Behaviours this backend does not implement, and why.
    pub fn limitations(&self) -> Vec<(Feature, String)> {
        match self {
            BackendKind::None => vec![(
                Feature::Dnat,
                "the none backend programs no rules (it is the baseline)".to_string(),
            )],
            BackendKind::Iptables | BackendKind::IptablesLegacy => iptables::limitations(),
            BackendKind::Nftables => nftables::limitations(),
            BackendKind::Ipvs => ipvs::limitations(),
            BackendKind::Userspace => userspace::limitations(),
            BackendKind::Ebpf => ebpf::limitations(),
            BackendKind::Exec(_) => Vec::new(),
            BackendKind::KubeProxy { mode, .. } => kubeproxy::limitations(*mode),
        }
    }

    /// For `kube-proxy:`, the version it runs.
    pub fn kube_proxy_version(&self) -> Option<&str> {
        match self {
            BackendKind::KubeProxy { version, .. } => {
                Some(version.as_deref().unwrap_or(kubeproxy::DEFAULT_VERSION))
            }
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::None => f.write_str("none"),
            BackendKind::Iptables => f.write_str("iptables"),
            BackendKind::IptablesLegacy => f.write_str("iptables-legacy"),
            BackendKind::Nftables => f.write_str("nftables"),
            BackendKind::Ipvs => f.write_str("ipvs"),
            BackendKind::Userspace => f.write_str("userspace"),
            BackendKind::Ebpf => f.write_str("ebpf"),
            BackendKind::Exec(p) => write!(f, "exec:{p}"),
            BackendKind::KubeProxy { mode, version } => match version {
                Some(v) => write!(f, "kube-proxy:{mode}@{v}"),
                None => write!(f, "kube-proxy:{mode}"),
            },
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("exec:") {
            if p.is_empty() {
                return Err("exec: needs a program, as in exec:/path/to/proxy".into());
            }
            return Ok(BackendKind::Exec(p.to_string()));
        }
        if let Some(rest) = s.strip_prefix("kube-proxy:") {
            let (mode, version) = match rest.split_once('@') {
                Some((m, v)) => (m, Some(v)),
                None => (rest, None),
            };
            let mode: kubeproxy::Mode = mode.parse()?;
            if let Some(v) = version {
                let ok = v.strip_prefix('v').is_some_and(|n| {
                    let p: Vec<&str> = n.split('.').collect();
                    p.len() == 3
                        && p.iter()
                            .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
                });
                if !ok {
                    return Err(format!(
                        "kube-proxy version {v:?} is not a vMAJOR.MINOR.PATCH release"
                    ));
                }
            }
            return Ok(BackendKind::KubeProxy {
                mode,
                version: version.map(String::from),
            });
        }
        BackendKind::BUILTIN
            .iter()
            .find(|k| k.to_string() == s)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "unknown backend {s:?}: expected one of none, iptables, iptables-legacy, \
                     nftables, ipvs, userspace, ebpf, exec:PROGRAM or \
                     kube-proxy:MODE[@VERSION]"
                )
            })
    }
}

impl From<BackendKind> for String {
    fn from(k: BackendKind) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for BackendKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Makes a backend of `kind`. It is not set up yet.
pub fn create(kind: &BackendKind, options: &BackendOptions) -> Box<dyn Backend> {
    match kind {
        BackendKind::None => Box::new(none::NoneBackend::default()),
        BackendKind::Iptables => iptables::new(iptables::Flavor::Nft, options),
        BackendKind::IptablesLegacy => iptables::new(iptables::Flavor::Legacy, options),
        BackendKind::Nftables => nftables::new(options),
        BackendKind::Ipvs => ipvs::new(options),
        BackendKind::Userspace => userspace::new(options),
        BackendKind::Ebpf => ebpf::new(options),
        BackendKind::Exec(program) => Box::new(exec::ExecBackend::new(program)),
        // The agent runs kube-proxy itself and never asks for this; it
        // programs nothing.
        BackendKind::KubeProxy { .. } => Box::new(none::NoneBackend::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for k in BackendKind::BUILTIN {
            assert_eq!(k.to_string().parse::<BackendKind>().unwrap(), k);
        }
        assert_eq!(
            "exec:/bin/proxy".parse::<BackendKind>().unwrap(),
            BackendKind::Exec("/bin/proxy".into())
        );
        let err = "ipchains".parse::<BackendKind>().unwrap_err();
        assert!(err.contains("ipchains"));
        assert!("exec:".parse::<BackendKind>().is_err());
        for name in [
            "kube-proxy:nftables",
            "kube-proxy:iptables@v1.34.4",
            "kube-proxy:ipvs",
        ] {
            assert_eq!(name.parse::<BackendKind>().unwrap().to_string(), name);
        }
        assert_eq!(
            "kube-proxy:nftables@v1.34.4"
                .parse::<BackendKind>()
                .unwrap(),
            BackendKind::KubeProxy {
                mode: kubeproxy::Mode::Nftables,
                version: Some("v1.34.4".into())
            }
        );
        assert_eq!(
            "kube-proxy:iptables"
                .parse::<BackendKind>()
                .unwrap()
                .kube_proxy_version(),
            Some(kubeproxy::DEFAULT_VERSION)
        );
        assert!("kube-proxy:userspace".parse::<BackendKind>().is_err());
        assert!("kube-proxy:nftables@1.34".parse::<BackendKind>().is_err());
        assert!("kube-proxy:".parse::<BackendKind>().is_err());
    }
}
