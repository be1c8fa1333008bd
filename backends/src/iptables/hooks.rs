//! The jumps from the built-in chains into kube-proxy's chains (its
//! `iptablesJumpChains`), ensured one by one through
//! [`crate::kernel::iptables::jumps`].

use crate::BackendError;
use crate::kernel::iptables::{Flavor, Jump, jumps};
use crate::model::IpFamily;

const EXTERNAL: &str = "kubernetes externally-visible service portals";
const PORTALS: &str = "kubernetes service portals";
const POSTROUTING: &str = "kubernetes postrouting rules";
const FORWARDING: &str = "kubernetes forwarding rules";
const FIREWALL: &str = "kubernetes load balancer firewall";

/// kube-proxy's jumps, in its order, and then the two it shares with
/// kubelet (`iptablesKubeletJumpChains`, no comment), which it ensures
/// whether or not KUBE-FIREWALL holds anything. Each is inserted at the
/// top, so the last one of a chain ends up first, as with kube-proxy.
pub const JUMPS: [Jump; 14] = [
    Jump::new("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", EXTERNAL).new_only(),
    Jump::new("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", EXTERNAL).new_only(),
    Jump::new(
        "filter",
        "INPUT",
        "KUBE-NODEPORTS",
        "kubernetes health check service ports",
    ),
    Jump::new("filter", "FORWARD", "KUBE-SERVICES", PORTALS).new_only(),
    Jump::new("filter", "OUTPUT", "KUBE-SERVICES", PORTALS).new_only(),
    Jump::new("filter", "FORWARD", "KUBE-FORWARD", FORWARDING),
    Jump::new("filter", "INPUT", "KUBE-PROXY-FIREWALL", FIREWALL).new_only(),
    Jump::new("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", FIREWALL).new_only(),
    Jump::new("filter", "FORWARD", "KUBE-PROXY-FIREWALL", FIREWALL).new_only(),
    Jump::new("nat", "OUTPUT", "KUBE-SERVICES", PORTALS),
    Jump::new("nat", "PREROUTING", "KUBE-SERVICES", PORTALS),
    Jump::new("nat", "POSTROUTING", "KUBE-POSTROUTING", POSTROUTING),
    Jump::new("filter", "INPUT", "KUBE-FIREWALL", ""),
    Jump::new("filter", "OUTPUT", "KUBE-FIREWALL", ""),
];

/// Creates the target chains and inserts the jumps that are missing;
/// running it again changes nothing.
pub fn ensure(flavor: Flavor) -> Result<(), BackendError> {
    ensure_in(flavor, IpFamily::IPv4)
}

/// [`ensure`] in `family`'s tables (ip6tables for IPv6).
pub fn ensure_in(flavor: Flavor, family: IpFamily) -> Result<(), BackendError> {
    jumps::ensure_in(flavor, family, &JUMPS)
}
