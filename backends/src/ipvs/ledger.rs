//! What this backend has programmed, per service port, so a partial sync
//! can change exactly what changed. Addresses and ipset entries are shared
//! between service ports (the ports of one Service share its ClusterIP; two
//! Services may select the same endpoint), so they are reference-counted:
//! one goes away only when its last user does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::ipsets::{Entry, IpSet};
use super::netlink::Op;
use super::plan::{PortPlan, server_ops, servers_of};
use crate::model::ServicePortName;

/// The kernel changes one partial sync calls for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub ops: Vec<Op>,
    pub bind: Vec<Ipv4Addr>,
    pub unbind: Vec<Ipv4Addr>,
    pub add: Vec<Entry>,
    pub del: Vec<Entry>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    plans: BTreeMap<ServicePortName, PortPlan>,
    addresses: BTreeMap<Ipv4Addr, u32>,
    entries: BTreeMap<Entry, u32>,
}

/// Applies `removed` then `added` to reference counts; returns the keys
/// that appeared and those that vanished.
fn recount<T: Ord + Clone>(
    counts: &mut BTreeMap<T, u32>,
    removed: &[T],
    added: &[T],
) -> (Vec<T>, Vec<T>) {
    let touched: BTreeSet<T> = removed.iter().chain(added).cloned().collect();
    let before: Vec<bool> = touched.iter().map(|t| counts.contains_key(t)).collect();
    for r in removed {
        if let Some(n) = counts.get_mut(r) {
            *n -= 1;
            if *n == 0 {
                counts.remove(r);
            }
        }
    }
    for a in added {
        *counts.entry(a.clone()).or_default() += 1;
    }
    let mut appeared = Vec::new();
    let mut vanished = Vec::new();
    for (t, was) in touched.into_iter().zip(before) {
        match (was, counts.contains_key(&t)) {
            (false, true) => appeared.push(t),
            (true, false) => vanished.push(t),
            _ => {}
        }
    }
    (appeared, vanished)
}

impl Ledger {
    /// Forgets everything and records `plans` as programmed (after a full
    /// sync reconciled the kernel with them).
    pub fn reset(&mut self, plans: BTreeMap<ServicePortName, PortPlan>) {
        *self = Ledger::default();
        let addresses: Vec<Ipv4Addr> = plans.values().flat_map(|p| p.addresses.clone()).collect();
        let entries: Vec<Entry> = plans.values().flat_map(|p| p.entries.clone()).collect();
        recount(&mut self.addresses, &[], &addresses);
        recount(&mut self.entries, &[], &entries);
        self.plans = plans;
    }

    /// Replaces the plans of the given service ports (None: the port is
    /// gone) and returns the kernel changes that follow.
    pub fn update(&mut self, changes: Vec<(ServicePortName, Option<PortPlan>)>) -> Delta {
        let mut old = Vec::new();
        let mut new = Vec::new();
        for (name, plan) in changes {
            if let Some(p) = self.plans.remove(&name) {
                old.push(p);
            }
            if let Some(p) = plan {
                new.push((name, p));
            }
        }
        let ops = server_ops(&servers_of(&old), &servers_of(new.iter().map(|(_, p)| p)));
        let (bind, unbind) = recount(
            &mut self.addresses,
            &old.iter()
                .flat_map(|p| p.addresses.clone())
                .collect::<Vec<_>>(),
            &new.iter()
                .flat_map(|(_, p)| p.addresses.clone())
                .collect::<Vec<_>>(),
        );
        let (add, del) = recount(
            &mut self.entries,
            &old.iter()
                .flat_map(|p| p.entries.clone())
                .collect::<Vec<_>>(),
            &new.iter()
                .flat_map(|(_, p)| p.entries.clone())
                .collect::<Vec<_>>(),
        );
        self.plans.extend(new);
        Delta {
            ops,
            bind,
            unbind,
            add,
            del,
        }
    }

    pub fn plans(&self) -> &BTreeMap<ServicePortName, PortPlan> {
        &self.plans
    }

    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.addresses.keys().copied().collect()
    }

    pub fn non_empty_sets(&self) -> BTreeSet<IpSet> {
        self.entries.keys().map(|(set, _)| *set).collect()
    }

    /// (virtual servers, real servers) programmed.
    pub fn counts(&self) -> (usize, usize) {
        self.plans
            .values()
            .flat_map(|p| &p.servers)
            .fold((0, 0), |(v, r), s| (v + 1, r + s.dests.len()))
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::plan::{PlanContext, plan_port};
    use crate::model::{Endpoint, Protocol, ServicePort};
    use crate::testkit;

    fn port(name: &str, vip: [u8; 4], port: u16) -> ServicePort {
        testkit::service_port(
            ServicePortName::new("ns", "web", name, Protocol::Tcp),
            Ipv4Addr::from(vip),
            port,
        )
    }

    fn local_ep() -> Endpoint {
        testkit::endpoint(Ipv4Addr::new(10, 244, 0, 5), 8080, Some("n0"), true)
    }

    fn plan(svc: &ServicePort) -> PortPlan {
        let ctx = PlanContext {
            node_ip: Ipv4Addr::new(192, 168, 0, 2),
            node_port_ips: &[Ipv4Addr::new(192, 168, 0, 2)],
            scheduler: "rr",
        };
        plan_port(svc, &[local_ep()], &ctx)
    }

    /// Two ports of one Service share the ClusterIP and the hairpin entry
    /// of their common endpoint: removing one port keeps both.
    #[test]
    fn shared_addresses_and_entries_outlive_one_user() {
        let http = port("http", [10, 96, 0, 10], 80);
        let alt = port("alt", [10, 96, 0, 10], 8080);
        let mut ledger = Ledger::default();
        let d = ledger.update(vec![
            (http.name.clone(), Some(plan(&http))),
            (alt.name.clone(), Some(plan(&alt))),
        ]);
        assert_eq!(d.bind, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(d.ops.len(), 4);
        assert_eq!(ledger.counts(), (2, 2));
        // hairpin (shared), two ClusterIP entries, one KUBE-IPVS-IPS entry
        assert_eq!(d.add.len(), 4);

        let d = ledger.update(vec![(alt.name.clone(), None)]);
        assert!(d.bind.is_empty() && d.unbind.is_empty());
        assert_eq!(
            d.del,
            vec![(IpSet::ClusterIp, "10.96.0.10,tcp:8080".into())]
        );
        assert_eq!(
            d.ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["deleting virtual server TCP/10.96.0.10:8080"]
        );

        let d = ledger.update(vec![(http.name.clone(), None)]);
        assert_eq!(d.unbind, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(d.del.len(), 3);
        assert!(ledger.plans().is_empty());
        assert_eq!(ledger.entry_count(), 0);
    }

    /// A Service deleted and recreated under another name with the same
    /// ClusterIP in one partial sync changes nothing in the kernel.
    #[test]
    fn a_move_between_names_in_one_sync_is_no_change() {
        let a = port("a", [10, 96, 0, 10], 80);
        let mut b = a.clone();
        b.name = ServicePortName::new("ns", "web2", "a", Protocol::Tcp);
        let mut ledger = Ledger::default();
        ledger.update(vec![(a.name.clone(), Some(plan(&a)))]);
        let d = ledger.update(vec![
            (a.name.clone(), None),
            (b.name.clone(), Some(plan(&b))),
        ]);
        assert_eq!(d, Delta::default());
        assert_eq!(ledger.plans().keys().collect::<Vec<_>>(), [&b.name]);
    }

    #[test]
    fn reset_counts_like_updates() {
        let http = port("http", [10, 96, 0, 10], 80);
        let alt = port("alt", [10, 96, 0, 10], 8080);
        let mut by_update = Ledger::default();
        by_update.update(vec![
            (http.name.clone(), Some(plan(&http))),
            (alt.name.clone(), Some(plan(&alt))),
        ]);
        let mut by_reset = Ledger::default();
        by_reset.reset(
            [
                (http.name.clone(), plan(&http)),
                (alt.name.clone(), plan(&alt)),
            ]
            .into(),
        );
        assert_eq!(by_reset.addresses(), by_update.addresses());
        assert_eq!(by_reset.non_empty_sets(), by_update.non_empty_sets());
        assert_eq!(by_reset.entry_count(), by_update.entry_count());
        assert_eq!(by_reset.counts(), by_update.counts());
        let d = by_reset.update(vec![(alt.name.clone(), None)]);
        assert!(d.unbind.is_empty());
    }
}
