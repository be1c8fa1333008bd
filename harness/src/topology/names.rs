//! Names of everything a run creates. Every namespace starts with
//! `svclab-<run>-`, every link svclab names itself starts with `sl<run>`, so
//! cleanup finds exactly one run's objects and never anyone else's.

use std::fmt;

use rand::RngExt;

/// Every namespace svclab makes starts with this.
pub const NS_PREFIX: &str = "svclab-";
/// Every link svclab names itself (outside pod namespaces) starts with this.
pub const LINK_PREFIX: &str = "sl";

/// A run's identity: 4 lowercase hex digits, unique among live runs.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RunId(String);

impl RunId {
    /// A random id; `state::fresh_run_id` picks one that no live run
    /// uses.
    pub fn random() -> RunId {
        RunId(format!("{:04x}", rand::rng().random::<u16>()))
    }

    pub fn parse(s: &str) -> Option<RunId> {
        (s.len() == 4
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| RunId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `svclab-<run>-`
    pub fn ns_prefix(&self) -> String {
        format!("{NS_PREFIX}{}-", self.0)
    }

    pub fn fabric_ns(&self) -> String {
        format!("{}fabric", self.ns_prefix())
    }

    pub fn external_ns(&self) -> String {
        format!("{}external", self.ns_prefix())
    }

    /// The second external client (with a load balancer pool).
    pub fn external2_ns(&self) -> String {
        format!("{}external-2", self.ns_prefix())
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("{}{node}", self.ns_prefix())
    }

    pub fn pod_ns(&self, namespace: &str, pod: &str) -> String {
        format!("{}{namespace}.{pod}", self.ns_prefix())
    }

    /// The fabric bridge, in the fabric namespace.
    pub fn fabric_bridge(&self) -> String {
        format!("{LINK_PREFIX}{}br", self.0)
    }

    /// Fabric side of node `index`'s uplink.
    pub fn fabric_port(&self, index: usize) -> String {
        format!("{LINK_PREFIX}{}n{index}", self.0)
    }

    /// Fabric side of the external client's link.
    pub fn external_port(&self) -> String {
        format!("{LINK_PREFIX}{}x", self.0)
    }

    /// Fabric side of the second external client's link.
    pub fn external2_port(&self) -> String {
        format!("{LINK_PREFIX}{}x2", self.0)
    }

    /// Node side of pod `index`'s veth (the CNI's `vethXXXX`).
    pub fn pod_port(&self, index: usize) -> String {
        format!("{LINK_PREFIX}{}p{index}", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Inside a node: the uplink to the fabric and the pod bridge.
pub const NODE_UPLINK: &str = "eth0";
pub const POD_BRIDGE: &str = "cni0";
/// Inside a pod (and the external client): its one interface.
pub const POD_IFACE: &str = "eth0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_carry_the_run() {
        let id = RunId::parse("0a1f").unwrap();
        for link in [
            id.fabric_bridge(),
            id.fabric_port(249),
            id.external_port(),
            id.external2_port(),
            id.pod_port(99_999),
        ] {
            assert!(link.len() <= 15, "{link} is longer than IFNAMSIZ-1");
            assert!(link.starts_with("sl0a1f"), "{link}");
        }
        assert_eq!(id.pod_ns("default", "web-0"), "svclab-0a1f-default.web-0");
        assert!(RunId::parse("0A1F").is_none());
        assert!(RunId::parse("0a1").is_none());
    }
}
