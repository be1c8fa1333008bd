//! The jumps from the built-in chains into ours (ensured one by one through
//! [`crate::kernel::iptables::jumps`]), and removing everything again.

use super::rules::{
    CONTAINER_NODEPORTS, CONTAINER_PORTALS, HOST_NODEPORTS, HOST_PORTALS, REJECT_NODEPORTS,
    REJECT_PORTALS, Table,
};
use crate::BackendError;
use crate::kernel::iptables::saved::SavedTable;
use crate::kernel::iptables::{self, Flavor, Jump, jumps};
use crate::model::IpFamily;

/// The iptables flavor: userspace mode's rules are few and simple, and
/// iptables-nft applies a `--noflush` diff without rewriting the table.
pub const FLAVOR: Flavor = Flavor::Nft;

const PORTALS: &str = "handle ClusterIPs; NOTE: this must be before the NodePort rules";
const NODEPORTS: &str = "handle service NodePorts; NOTE: this must be the last rule in the chain";
const REJECTS: &str = "reject service portals without endpoints";
const REJECT_NP: &str = "reject node ports without endpoints";

const NAT: &str = Table::Nat.name();
const FILTER: &str = Table::Filter.name();

/// Portals first (kube-proxy inserted them at the top), NodePorts appended
/// last: a NodePort rule matches any port on the node IP, so it must not
/// shadow a portal.
pub const JUMPS: [Jump; 7] = [
    Jump::new(NAT, "PREROUTING", CONTAINER_PORTALS, PORTALS),
    Jump::new(NAT, "OUTPUT", HOST_PORTALS, PORTALS),
    Jump::new(NAT, "PREROUTING", CONTAINER_NODEPORTS, NODEPORTS).appended(),
    Jump::new(NAT, "OUTPUT", HOST_NODEPORTS, NODEPORTS).appended(),
    Jump::new(FILTER, "FORWARD", REJECT_PORTALS, REJECTS).new_only(),
    Jump::new(FILTER, "OUTPUT", REJECT_PORTALS, REJECTS).new_only(),
    Jump::new(FILTER, "INPUT", REJECT_NODEPORTS, REJECT_NP).new_only(),
];

/// Creates our chains and the jumps that are missing; running it again
/// changes nothing.
pub fn ensure(family: IpFamily) -> Result<(), BackendError> {
    jumps::ensure_in(FLAVOR, family, &JUMPS)
}

/// Removes our chains and every rule elsewhere that jumps into them (ours,
/// or ones an earlier crashed run left), per table; keeps going after an
/// error and returns all of them.
pub fn remove_all(family: IpFamily) -> Result<(), Vec<BackendError>> {
    let errors: Vec<BackendError> = Table::ALL
        .into_iter()
        .filter_map(|t| remove_table(family, t).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn remove_table(family: IpFamily, table: Table) -> Result<(), BackendError> {
    let saved = iptables::save_in(FLAVOR, family, table.name())?;
    match removal_input(table, &SavedTable::parse(&saved)) {
        Some(input) => iptables::restore_in(FLAVOR, family, &input),
        None => Ok(()),
    }
}

/// Restore input that empties and deletes our chains of `table` and the
/// jumps into them, or `None` when the table has none of ours.
pub fn removal_input(table: Table, saved: &SavedTable<'_>) -> Option<String> {
    let ours = |c: &str| table.is_ours(c);
    let chains: Vec<&str> = saved.chains.iter().copied().filter(|c| ours(c)).collect();
    if chains.is_empty() {
        return None;
    }
    let mut s = format!("*{}\n", table.name());
    for c in &chains {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in &saved.rules {
        if !ours(r.chain) && r.target.is_some_and(ours) {
            s.push_str(&format!("-D {} {}\n", r.chain, r.spec));
        }
    }
    for c in &chains {
        s.push_str(&format!("-X {c}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_takes_our_chains_and_jumps_and_nothing_else() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :KUBE-SERVICES - [0:0]\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-CONTAINER-0A - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\n\
            -A PREROUTING -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-CONTAINER\n\
            -A PREROUTING -j KUBE-SERVICES\n\
            -A OUTPUT -m comment --comment \"x\" -j KUBE-NODEPORT-HOST\n\
            -A KUBE-PORTALS-CONTAINER -d 0.0.0.10/0.0.0.63 -j KUBE-PORTALS-CONTAINER-0A\n\
            -A KUBE-PORTALS-CONTAINER-0A -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000\n\
            COMMIT\n";
        let got = removal_input(Table::Nat, &SavedTable::parse(text)).unwrap();
        assert_eq!(
            got,
            "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-CONTAINER-0A - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\n\
             -D PREROUTING -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-CONTAINER\n\
             -D OUTPUT -m comment --comment \"x\" -j KUBE-NODEPORT-HOST\n\
             -X KUBE-PORTALS-CONTAINER\n-X KUBE-PORTALS-CONTAINER-0A\n-X KUBE-NODEPORT-HOST\nCOMMIT\n"
        );
        assert_eq!(
            removal_input(
                Table::Filter,
                &SavedTable::parse("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
            ),
            None
        );
    }
}
