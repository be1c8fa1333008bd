//! The backend API: the [`Backend`] trait every dataplane implements, its
//! errors, the behaviours it may lack ([`Feature`]), the defects it can be
//! asked to inject ([`Fault`]), its options, and one sync's request and
//! outcome.

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
    /// The dataplane outlives its agent: established connections and UDP
    /// flows through a Service survive the agent being killed and started
    /// again.
    SurvivesAgentRestart,
    /// NodePorts on 127.0.0.1 from the node itself (kube-proxy's iptables
    /// mode with `localhostNodePorts`).
    LocalhostNodePort,
    /// ClientIP affinity ends `timeoutSeconds` after the client's last
    /// connection, so the next one is balanced afresh.
    AffinityTimeout,
    /// `spec.loadBalancerSourceRanges` restrict who reaches a load balancer
    /// IP.
    LoadBalancerSourceRanges,
    /// Service ports with `protocol: SCTP`.
    Sctp,
    /// Services' IPv6 ClusterIPs and endpoints: the IPv6 proxier of a
    /// dual-stack or IPv6 lab. Every check runs per family; a backend that
    /// lacks this SKIPs the IPv6 ones.
    Ipv6,
}

/// Why IPVS mode (svclab's and kube-proxy's) keeps affinity past
/// `timeoutSeconds`.
pub const IPVS_AFFINITY_OUTLIVES_TIMEOUT: &str = "IPVS persistence keeps a client's endpoint for as long as any connection it placed is \
     still in the IPVS table, and a closed TCP connection stays there in TIME_WAIT for 2 \
     minutes (ip_vs_conn_expire in net/netfilter/ipvs/ip_vs_conn.c does not expire a \
     template that still controls connections), so a client idle for timeoutSeconds keeps \
     its endpoint; kube-proxy's IPVS mode programs the same persistence (ipvsadm -p)";

/// Why kube-proxy's nftables mode, and svclab's nftables backend, do not
/// serve NodePorts on 127.0.0.1.
pub const NO_LOCALHOST_NODEPORTS_NFTABLES: &str = "nftables mode does not serve NodePorts on 127.0.0.1: kube-proxy's nftables mode never did \
     (v1.37 adds it only behind the alpha gate KubeProxyNFTablesLocalhostNodePorts, off by \
     default, and only with 'localhost' in nodePortAddresses; see nodePortAddresses in \
     pkg/proxy/apis/config/types.go)";
/// Why IPVS mode does not serve NodePorts on 127.0.0.1.
pub const NO_LOCALHOST_NODEPORTS_IPVS: &str = "IPVS mode does not serve NodePorts on 127.0.0.1: kube-proxy serves loopback NodePorts in \
     iptables mode only (iptables.localhostNodePorts; nodePortAddresses in \
     pkg/proxy/apis/config/types.go)";

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

/// One dataplane. Created by [`crate::create`], set up once inside the node's
/// namespace, synced many times, cleaned up once.
pub trait Backend: Send {
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
    /// nftables: how a service chain picks an endpoint.
    #[serde(default)]
    pub nftables_layout: NftablesLayout,
    /// The family of the proxier this instance is (kube-proxy runs one per
    /// family; so does the agent, for a backend that has IPv6). Its
    /// [`crate::model::NodeContext`] and state are of this family only.
    #[serde(default)]
    pub family: crate::model::IpFamily,
}

/// How the nftables backends pick an endpoint in a service chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NftablesLayout {
    /// kube-proxy's: one rule with an anonymous `numgen random mod N` map
    /// per service chain (backend `nftables`).
    #[default]
    Maps,
    /// No set per Service: a cascade of `numgen random mod k == 0` rules,
    /// as iptables' `statistic` rules (backend `nftables-flat`). Each
    /// anonymous set costs the kernel a walk over the transaction's other
    /// sets, so kube-proxy's layout grows quadratically in Services.
    Flat,
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
    /// The health check node port counts terminating (serving) local
    /// endpoints as if they were ready (it answers 200 where kube-proxy
    /// answers 503).
    HealthCountsTerminating,
    /// Empty the node's whole conntrack table when the agent starts, as
    /// kube-proxy did before #122740's fix: established flows through a
    /// Service are lost on a restart.
    FlushConntrackOnStart,
    /// Ignore `spec.externalIPs` (breaks external-ips).
    NoExternalIps,
    /// Use only endpoints that are both ready and serving (breaks
    /// publishNotReadyAddresses, whose not-ready endpoints are ready but not
    /// serving).
    RequireServing,
    /// Keep ClientIP affinity for 3 h whatever `timeoutSeconds` says
    /// (breaks affinity-timeout).
    AffinityNoTimeout,
    /// Keep programming a Service after it is deleted (breaks
    /// service-recreate).
    KeepDeletedServices,
    /// The agent watches Services without kube-proxy's label selector, so
    /// it programs Services labelled for another proxy or headless (breaks
    /// proxy-name-and-headless-labels).
    IgnoreProxyLabels,
    /// Reject traffic to the service CIDR that no Service port owns,
    /// instead of leaving it (iptables) or dropping it (nftables) (breaks
    /// unallocated-clusterip).
    RejectUnallocated,
    /// Serve NodePorts on every node address (node IP and pod bridge),
    /// whatever `nodePortAddresses` says (breaks nodeport-addresses).
    #[serde(rename = "nodeport-any-address")]
    NodePortAnyAddress,
    /// Ignore EndpointSlices' topology hints: every ready endpoint serves
    /// every node (breaks traffic-distribution).
    IgnoreTopologyHints,
    /// Program no load balancer ingress IPs (breaks loadbalancer-ingress).
    LbNoIngress,
    /// Ignore `spec.loadBalancerSourceRanges`: every source reaches a load
    /// balancer IP (breaks loadbalancer-source-ranges).
    LbIgnoreSourceRanges,
    /// Program localhost NodePorts without setting `route_localnet`: the
    /// kernel drops the DNATed packets from 127.0.0.1 as martians (breaks
    /// localhost-nodeport on the iptables backends, the ones that serve it).
    NoRouteLocalnet,
    /// Program SCTP Service ports as TCP ones (breaks sctp, where the kernel
    /// has SCTP).
    SctpAsTcp,
}

impl Fault {
    /// Every fault with its command-line name.
    pub const ALL: [(Fault, &'static str); 17] = [
        (Fault::MissingMasquerade, "missing-masquerade"),
        (Fault::WrongProbability, "wrong-probability"),
        (Fault::NoReject, "no-reject"),
        (Fault::HealthCountsTerminating, "health-counts-terminating"),
        (Fault::FlushConntrackOnStart, "flush-conntrack-on-start"),
        (Fault::NoExternalIps, "no-external-ips"),
        (Fault::RequireServing, "require-serving"),
        (Fault::AffinityNoTimeout, "affinity-no-timeout"),
        (Fault::KeepDeletedServices, "keep-deleted-services"),
        (Fault::IgnoreProxyLabels, "ignore-proxy-labels"),
        (Fault::RejectUnallocated, "reject-unallocated"),
        (Fault::NodePortAnyAddress, "nodeport-any-address"),
        (Fault::IgnoreTopologyHints, "ignore-topology-hints"),
        (Fault::LbNoIngress, "lb-no-ingress"),
        (Fault::LbIgnoreSourceRanges, "lb-ignore-source-ranges"),
        (Fault::NoRouteLocalnet, "no-route-localnet"),
        (Fault::SctpAsTcp, "sctp-as-tcp"),
    ];
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(f, _)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|(_, n)| *n).collect();
                format!("unknown fault {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// Everything the lab needs to know about one built-in backend, exported by
/// its module as one value and listed once in [`crate::registry`].
#[derive(Clone, Copy, Debug)]
pub struct BackendSpec {
    /// The name on the command line, in scenarios and in reports.
    pub name: &'static str,
    /// Whether this backend can run in this kernel and with these tools.
    /// It probes (in a throwaway namespace); ask the registry, which probes
    /// each backend once per process.
    pub capability: fn() -> Result<(), Unavailable>,
    /// Behaviours the backend does not implement with these options, and
    /// why; the checks skip them with that reason.
    pub limitations: fn(&BackendOptions) -> Vec<(Feature, String)>,
    /// Makes the backend; it is not set up yet.
    pub create: fn(&BackendOptions) -> Box<dyn Backend>,
    /// What a packet trace can and cannot show on this backend.
    pub trace: Trace,
    /// The tool that replays the backend's per-sync dumps, if it dumps.
    pub floor: Option<FloorTool>,
}

/// How `svclab trace` sees a backend's decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The backend's limits of tracing, said before anything runs.
    pub notes: Option<&'static str>,
    /// Where the evidence beyond nf_tables tracing comes from.
    pub evidence: Evidence,
}

/// Where a backend's decision shows besides nf_tables trace events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Its rules are nf_tables objects: the trace shows them.
    NfTables,
    /// x_tables rules: the counters that rose while the probe ran.
    RuleCounters,
    /// The IPVS connection entry names the real server.
    IpvsConnections,
    /// The BPF maps' entries (service, flow, counters).
    BpfMaps,
    /// Nothing rewrites packets: there is nothing to trace.
    Nothing,
}

/// The bare tool a backend feeds, for timing it on a sync's exact input
/// (the floor of that sync's cost).
#[derive(Clone, Copy, Debug)]
pub struct FloorTool {
    pub program: &'static str,
    pub args: &'static [&'static str],
    /// Extension of the dump files it takes (`<seq>-<mode>.<ext>`).
    pub ext: &'static str,
    /// Makes what the dumps assume exists, in an empty namespace.
    pub prepare: fn() -> Result<(), BackendError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent gets its faults as flags written from their serde form
    /// and parses them with `FromStr`: both must spell each fault alike.
    #[test]
    fn fault_names_are_the_same_both_ways() {
        for (fault, name) in Fault::ALL {
            assert_eq!(
                serde_json::to_value(fault).unwrap(),
                serde_json::Value::String(name.into())
            );
            assert_eq!(name.parse::<Fault>(), Ok(fault));
        }
    }
}
