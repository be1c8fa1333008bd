//! The jumps from the built-in chains into kube-proxy's chains (its
//! `iptablesJumpChains`). They live in chains other software shares, so
//! they are ensured one by one (check, then insert at the top), never
//! written by a restore that would have to own the whole chain.

use super::tool::{self, Flavor};
use crate::BackendError;

/// One jump rule from a built-in chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub comment: &'static str,
    /// Only for new connections (`-m conntrack --ctstate NEW`).
    pub new_only: bool,
}

const fn jump(
    table: &'static str,
    from: &'static str,
    to: &'static str,
    comment: &'static str,
    new_only: bool,
) -> Jump {
    Jump {
        table,
        from,
        to,
        comment,
        new_only,
    }
}

const EXTERNAL: &str = "kubernetes externally-visible service portals";
const PORTALS: &str = "kubernetes service portals";
const FIREWALL: &str = "kubernetes load balancer firewall";

/// kube-proxy's jumps, in its order. Each is inserted at the top, so the
/// last one of a chain ends up first, as with kube-proxy.
pub const JUMPS: [Jump; 12] = [
    jump("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", EXTERNAL, true),
    jump(
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        EXTERNAL,
        true,
    ),
    jump(
        "filter",
        "INPUT",
        "KUBE-NODEPORTS",
        "kubernetes health check service ports",
        false,
    ),
    jump("filter", "FORWARD", "KUBE-SERVICES", PORTALS, true),
    jump("filter", "OUTPUT", "KUBE-SERVICES", PORTALS, true),
    jump(
        "filter",
        "FORWARD",
        "KUBE-FORWARD",
        "kubernetes forwarding rules",
        false,
    ),
    jump("filter", "INPUT", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    jump("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    jump("filter", "FORWARD", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    jump("nat", "OUTPUT", "KUBE-SERVICES", PORTALS, false),
    jump("nat", "PREROUTING", "KUBE-SERVICES", PORTALS, false),
    jump(
        "nat",
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "kubernetes postrouting rules",
        false,
    ),
];

impl Jump {
    /// The rule's match and target, as iptables takes them.
    pub fn spec(&self) -> Vec<&'static str> {
        let mut a = Vec::with_capacity(8);
        if self.new_only {
            a.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        a.extend(["-m", "comment", "--comment", self.comment, "-j", self.to]);
        a
    }
}

/// Creates the target chains and inserts the jumps that are missing;
/// running it again changes nothing.
pub fn ensure(flavor: Flavor) -> Result<(), BackendError> {
    for j in JUMPS {
        ensure_chain(flavor, j.table, j.to)?;
        if !has_rule(flavor, &j)? {
            let mut args = vec!["-I", j.from, "1"];
            args.extend(j.spec());
            tool::iptables(flavor, j.table, &args)?;
        }
    }
    Ok(())
}

fn ensure_chain(flavor: Flavor, table: &str, chain: &str) -> Result<(), BackendError> {
    match tool::iptables(flavor, table, &["-N", chain]) {
        Err(BackendError::Command { stderr, .. }) if stderr.contains("already exists") => Ok(()),
        other => other,
    }
}

fn has_rule(flavor: Flavor, j: &Jump) -> Result<bool, BackendError> {
    let mut args = vec!["-C", j.from];
    args.extend(j.spec());
    match tool::iptables(flavor, j.table, &args) {
        Ok(()) => Ok(true),
        // An absent rule: iptables-nft says "Bad rule (does a matching rule
        // exist in that chain?)", iptables-legacy "No chain/target/match by
        // that name" (the chains themselves exist by now).
        Err(BackendError::Command { stderr, .. })
            if stderr.contains("matching rule exist")
                || stderr.contains("No chain/target/match") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
