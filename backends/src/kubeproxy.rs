//! Upstream kube-proxy as a backend (`kube-proxy:<mode>[@<version>]`): only
//! its name, where its binary is, whether it can run here, and what it does
//! not implement. The agent runs the binary itself (harness/src/agent/kubeproxy.rs);
//! nothing in this crate programs anything for it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{Feature, Unavailable};

/// The version a bare `kube-proxy:<mode>` means.
pub const DEFAULT_VERSION: &str = "v1.37.2";
pub const CACHE_ENV: &str = "SVCLAB_KUBE_PROXY_CACHE";
pub const DEFAULT_CACHE: &str = "/var/cache/svclab/kube-proxy";

/// kube-proxy's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Iptables,
    Nftables,
    Ipvs,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Iptables, Mode::Nftables, Mode::Ipvs];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Ipvs => "ipvs",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown kube-proxy mode '{s}' (iptables, nftables or ipvs)"))
    }
}

/// The folder that holds one subfolder per built version.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Where `version`'s binary is (or would be) built.
pub fn binary(version: &str) -> PathBuf {
    cache_dir().join(version).join("kube-proxy")
}

/// The binary is built for `version`, and the kernel and tools have `mode`.
pub fn capability(mode: Mode, version: &str) -> Result<(), Unavailable> {
    let path = binary(version);
    let runnable = std::fs::metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    if !runnable {
        return Err(Unavailable::new(format!(
            "kube-proxy {version} is not built ({} is missing): run `ci/kube-proxy {version}`",
            path.display()
        )));
    }
    match mode {
        // kube-proxy runs `iptables`, whichever variant the host's
        // alternatives pick; svclab's iptables probe covers the nft one.
        // The registry's probes run once per process.
        Mode::Iptables => crate::BackendKind::Iptables.capability(),
        Mode::Nftables => crate::BackendKind::Nftables.capability(),
        Mode::Ipvs => crate::BackendKind::Ipvs.capability(),
    }
}

/// What upstream kube-proxy does not do that a check expects, with the
/// upstream reference (the same in both supported versions): NodePorts on
/// 127.0.0.1 are served in iptables mode only, and IPVS mode's affinity
/// outlives its timeout while connections linger. (The one difference the lab
/// once declared, a health check node port on a NodePort Service, was the
/// lab's, which now allocates one only where the API server does:
/// LoadBalancer, externalTrafficPolicy Local.)
pub fn limitations(mode: Mode) -> Vec<(Feature, String)> {
    match mode {
        Mode::Iptables => Vec::new(),
        Mode::Nftables => vec![(
            Feature::LocalhostNodePort,
            crate::api::NO_LOCALHOST_NODEPORTS_NFTABLES.to_string(),
        )],
        Mode::Ipvs => vec![
            (
                Feature::LocalhostNodePort,
                crate::api::NO_LOCALHOST_NODEPORTS_IPVS.to_string(),
            ),
            (
                Feature::AffinityTimeout,
                crate::api::IPVS_AFFINITY_OUTLIVES_TIMEOUT.to_string(),
            ),
        ],
    }
}
