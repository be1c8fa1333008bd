//! Every built-in backend, one line each, and [`BackendKind`]: a backend's
//! name as users write it, with what the registry knows about it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{
    Backend, BackendOptions, BackendSpec, Feature, Unavailable, ebpf, exec, iptables, ipvs,
    kubeproxy, nftables, none, userspace,
};

/// The built-in backends, in the order reports list them.
pub const REGISTRY: &[&BackendSpec] = &[
    &none::SPEC,
    &iptables::SPEC,
    &iptables::LEGACY_SPEC,
    &nftables::SPEC,
    &nftables::FLAT_SPEC,
    &ipvs::SPEC,
    &userspace::SPEC,
    &ebpf::SPEC,
];

/// Each built-in backend's capability, probed at most once per process.
static CAPABILITY: [OnceLock<Result<(), Unavailable>>; REGISTRY.len()] =
    [const { OnceLock::new() }; REGISTRY.len()];

/// The spec of built-in backend `name`.
pub fn spec(name: &str) -> Option<&'static BackendSpec> {
    REGISTRY.iter().copied().find(|s| s.name == name)
}

/// A backend svclab can run: a built-in one (by its registry name) or an
/// external program speaking the agent protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum BackendKind {
    /// A backend of the [`REGISTRY`], by name.
    Builtin(&'static str),
    /// An external program speaking the agent protocol.
    Exec(String),
    /// Upstream kube-proxy, run by the agent (`kube-proxy:<mode>[@<version>]`;
    /// no version means [`kubeproxy::DEFAULT_VERSION`]).
    KubeProxy {
        mode: kubeproxy::Mode,
        version: Option<String>,
    },
}

/// Names the harness refers to directly.
#[allow(non_upper_case_globals)]
impl BackendKind {
    /// Programs nothing: the baseline for every measurement.
    pub const None: BackendKind = BackendKind::Builtin(none::SPEC.name);
    pub const Iptables: BackendKind = BackendKind::Builtin(iptables::SPEC.name);
    pub const IptablesLegacy: BackendKind = BackendKind::Builtin(iptables::LEGACY_SPEC.name);
    pub const Nftables: BackendKind = BackendKind::Builtin(nftables::SPEC.name);
    pub const NftablesFlat: BackendKind = BackendKind::Builtin(nftables::FLAT_SPEC.name);
    pub const Ipvs: BackendKind = BackendKind::Builtin(ipvs::SPEC.name);
    pub const Userspace: BackendKind = BackendKind::Builtin(userspace::SPEC.name);
    pub const Ebpf: BackendKind = BackendKind::Builtin(ebpf::SPEC.name);
}

impl BackendKind {
    /// The built-in backends, in the order reports list them.
    pub const BUILTIN: [BackendKind; REGISTRY.len()] = {
        let mut out = [const { BackendKind::Builtin("") }; REGISTRY.len()];
        let mut i = 0;
        while i < REGISTRY.len() {
            std::mem::forget(std::mem::replace(
                &mut out[i],
                BackendKind::Builtin(REGISTRY[i].name),
            ));
            i += 1;
        }
        out
    };

    /// The registry's entry, for a built-in backend.
    pub fn spec(&self) -> Option<&'static BackendSpec> {
        match self {
            BackendKind::Builtin(name) => spec(name),
            BackendKind::Exec(_) | BackendKind::KubeProxy { .. } => None,
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

    fn position(&self) -> usize {
        match self {
            BackendKind::Builtin(name) => REGISTRY
                .iter()
                .position(|s| s.name == *name)
                .unwrap_or(REGISTRY.len()),
            BackendKind::Exec(_) => REGISTRY.len(),
            BackendKind::KubeProxy { .. } => REGISTRY.len() + 1,
        }
    }

    /// Whether this backend can run in this kernel and with these tools.
    /// A built-in backend is probed once per process; later calls return
    /// the first answer.
    pub fn capability(&self) -> Result<(), Unavailable> {
        match self {
            BackendKind::Builtin(_) => match self.spec() {
                Some(spec) => CAPABILITY[self.position()]
                    .get_or_init(spec.capability)
                    .clone(),
                None => Err(Unavailable::new(format!(
                    "{self} is not a built-in backend"
                ))),
            },
            BackendKind::Exec(program) => exec::capability(program),
            BackendKind::KubeProxy { mode, .. } => {
                kubeproxy::capability(*mode, self.kube_proxy_version().unwrap_or_default())
            }
        }
    }

    /// Behaviours this backend does not implement with `options`, and why.
    pub fn limitations(&self, options: &BackendOptions) -> Vec<(Feature, String)> {
        if let BackendKind::KubeProxy { mode, .. } = self {
            return kubeproxy::limitations(*mode);
        }
        let mut out: Vec<(Feature, String)> = self
            .spec()
            .map(|s| (s.limitations)(options))
            .unwrap_or_default();
        if let Some(why) = self.ipv4_only() {
            out.push((Feature::Ipv6, why));
        }
        out
    }

    /// Whether the agent runs an IPv6 proxier of this backend beside the
    /// IPv4 one in a lab with IPv6 (kube-proxy's metaproxier).
    pub fn serves(&self, family: crate::model::IpFamily) -> bool {
        family == crate::model::IpFamily::IPv4 || self.ipv4_only().is_none()
    }

    /// Why one of svclab's backends programs IPv4 only; `None` for the
    /// ones that run a proxier per family.
    fn ipv4_only(&self) -> Option<String> {
        let why = match self {
            BackendKind::KubeProxy { .. } => return None,
            BackendKind::Exec(_) => {
                "an exec: program is one process per node, sent the watch events and the IPv4 \
                 node context (backends/PROTOCOL.md); the protocol has no second family's \
                 context, so the agent runs it as the IPv4 proxier only"
            }
            BackendKind::Builtin(name) => match *name {
                "ipvs" => {
                    "svclab's ipvs backend programs IPv4 virtual servers only: its IPVS \
                     netlink messages, hash:ip,port ipsets and plans are IPv4 \
                     (backends/src/ipvs), so the agent runs it as the IPv4 proxier only"
                }
                "ebpf" => {
                    "svclab's eBPF programs parse and rewrite IPv4 headers only and their \
                     service and backend maps are keyed by IPv4 addresses (backends/ebpf), so \
                     the agent runs it as the IPv4 proxier only"
                }
                _ => return None,
            },
        };
        Some(why.to_string())
    }
}

impl Ord for BackendKind {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.position(), self.to_string()).cmp(&(other.position(), other.to_string()))
    }
}

impl PartialOrd for BackendKind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::Builtin(name) => f.write_str(name),
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
        spec(s)
            .map(|spec| BackendKind::Builtin(spec.name))
            .ok_or_else(|| {
                let names: Vec<&str> = REGISTRY.iter().map(|s| s.name).collect();
                format!(
                    "unknown backend {s:?}: expected one of {}, exec:PROGRAM or kube-proxy:MODE[@VERSION]",
                    names.join(", ")
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
        BackendKind::Exec(program) => Box::new(exec::ExecBackend::new(program)),
        // The agent runs kube-proxy itself and never asks for this; it
        // programs nothing.
        BackendKind::KubeProxy { .. } => (none::SPEC.create)(options),
        BackendKind::Builtin(name) => match spec(name) {
            Some(spec) => crate::faults::Faulty::wrap((spec.create)(options), &options.faults),
            None => panic!("{name:?} is not in the backend registry"),
        },
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
    }

    #[test]
    fn names_are_unique_and_ordered_as_listed() {
        let mut kinds = BackendKind::BUILTIN.to_vec();
        kinds.push(BackendKind::Exec("/bin/proxy".into()));
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(sorted, kinds);
        sorted.dedup();
        assert_eq!(sorted.len(), REGISTRY.len() + 1);
    }

    #[test]
    fn limitations_come_from_the_options() {
        let rr = BackendOptions::default();
        // With rr, only what IPVS mode never does (localhost NodePorts,
        // affinity ending at its timeout).
        let with_rr: Vec<Feature> = BackendKind::Ipvs
            .limitations(&rr)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            with_rr,
            vec![
                Feature::LocalhostNodePort,
                Feature::AffinityTimeout,
                Feature::Ipv6
            ]
        );
        let sh = BackendOptions {
            ipvs_scheduler: "sh".into(),
            ..Default::default()
        };
        assert!(
            BackendKind::Ipvs
                .limitations(&sh)
                .iter()
                .any(|(f, _)| *f == Feature::UniformBalance)
        );
        assert_eq!(BackendKind::None.limitations(&rr)[0].0, Feature::Dnat);
    }
}
