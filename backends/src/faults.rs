//! Faults that bend what a backend is told to program, for the lab's
//! negative tests: the backend under the wrapper renders a state with the
//! defect, as if its own change tracking had the bug. Every built-in
//! backend gets them through [`crate::create`]; faults that live in a
//! backend's rules (masquerade, probabilities, rejects) stay in its render
//! code.

use std::collections::BTreeMap;

use crate::api::{Backend, BackendError, BackendStats, Fault, SyncOutcome, SyncRequest};
use crate::model::{
    ChangeSet, Endpoint, Hints, NodeContext, ProxyState, ServicePort, ServicePortName,
};
use crate::protocol::WatchEvent;

/// The faults this wrapper injects.
pub const STATE_FAULTS: [Fault; 9] = [
    Fault::NoExternalIps,
    Fault::NodePortAnyAddress,
    Fault::LbNoIngress,
    Fault::LbIgnoreSourceRanges,
    Fault::RequireServing,
    Fault::AffinityNoTimeout,
    Fault::KeepDeletedServices,
    Fault::IgnoreTopologyHints,
    Fault::SctpAsTcp,
];

/// Whether `fault` is bent before any backend sees its input (in this
/// wrapper, or in the agent's watch, [`Fault::IgnoreProxyLabels`]): the same
/// defect on every backend, as opposed to one in a backend's own rules.
pub fn bent_before_backend(fault: Fault) -> bool {
    STATE_FAULTS.contains(&fault) || fault == Fault::IgnoreProxyLabels
}

/// The affinity timeout [`Fault::AffinityNoTimeout`] programs: the API
/// server's default (3 h), whatever the Service says.
const STUCK_AFFINITY_SECONDS: u32 = 10800;

/// A backend whose input carries the faults in `faults`.
pub struct Faulty {
    inner: Box<dyn Backend>,
    faults: Vec<Fault>,
    /// Deleted service ports still programmed ([`Fault::KeepDeletedServices`]),
    /// with their last endpoints.
    kept: BTreeMap<ServicePortName, (ServicePort, Vec<Endpoint>)>,
    /// The last non-empty endpoint list of every service port seen.
    last_endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
}

impl Faulty {
    /// Wraps `inner` when `faults` has one of [`STATE_FAULTS`]; otherwise
    /// returns it as it is.
    pub fn wrap(inner: Box<dyn Backend>, faults: &[Fault]) -> Box<dyn Backend> {
        let mine: Vec<Fault> = faults
            .iter()
            .copied()
            .filter(|f| STATE_FAULTS.contains(f))
            .collect();
        if mine.is_empty() {
            return inner;
        }
        Box::new(Faulty {
            inner,
            faults: mine,
            kept: BTreeMap::new(),
            last_endpoints: BTreeMap::new(),
        })
    }

    fn has(&self, f: Fault) -> bool {
        self.faults.contains(&f)
    }

    /// The state and changes the inner backend is given instead.
    fn bend(&mut self, state: &ProxyState, changes: &ChangeSet) -> (ProxyState, ChangeSet) {
        let mut state = state.clone();
        let mut changes = changes.clone();
        if self.has(Fault::KeepDeletedServices) {
            for (name, eps) in &state.endpoints {
                if !eps.is_empty() {
                    self.last_endpoints.insert(name.clone(), eps.clone());
                }
            }
            for (name, svc) in std::mem::take(&mut changes.deleted) {
                let eps = self.last_endpoints.get(&name).cloned().unwrap_or_default();
                self.kept.insert(name, (svc, eps));
            }
            // A port recreated under the same name is the new one.
            self.kept
                .retain(|name, _| !state.services.contains_key(name));
            for (name, (svc, eps)) in &self.kept {
                state.services.insert(name.clone(), svc.clone());
                state.endpoints.insert(name.clone(), eps.clone());
                changes.removed_endpoints.remove(name);
            }
        }
        for svc in state.services.values_mut() {
            if self.has(Fault::NoExternalIps) {
                svc.external_ips.clear();
            }
            if self.has(Fault::LbNoIngress) {
                svc.load_balancer_ips.clear();
            }
            if self.has(Fault::LbIgnoreSourceRanges) {
                svc.load_balancer_source_ranges.clear();
            }
            if self.has(Fault::SctpAsTcp) && svc.protocol == crate::model::Protocol::Sctp {
                svc.protocol = crate::model::Protocol::Tcp;
            }
            if self.has(Fault::AffinityNoTimeout) && svc.session_affinity_seconds.is_some() {
                svc.session_affinity_seconds = Some(STUCK_AFFINITY_SECONDS);
            }
        }
        for eps in state.endpoints.values_mut() {
            for e in eps.iter_mut() {
                if self.has(Fault::RequireServing) {
                    e.ready = e.ready && e.serving;
                }
                if self.has(Fault::IgnoreTopologyHints) {
                    e.hints = Hints::default();
                }
            }
        }
        (state, changes)
    }
}

impl Faulty {
    /// The node the inner backend is told it runs on.
    fn bend_node(&self, node: &NodeContext) -> NodeContext {
        let mut node = node.clone();
        if self.has(Fault::NodePortAnyAddress) {
            node.node_port_ips = Some(vec![node.node_ip, node.gateway_ip()]);
        }
        node
    }
}

impl Backend for Faulty {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        let node = self.bend_node(node);
        self.inner.setup(&node)
    }

    fn observe(&mut self, event: &WatchEvent) -> Result<(), BackendError> {
        self.inner.observe(event)
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        let (state, changes) = self.bend(req.state, req.changes);
        let node = self.bend_node(req.node);
        self.inner.sync(&SyncRequest {
            mode: req.mode,
            seq: req.seq,
            state: &state,
            changes: &changes,
            node: &node,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        self.inner.stats()
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        self.inner.cleanup()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    fn port(name: &str) -> (ServicePortName, ServicePort) {
        let n = ServicePortName::new("ns", name, "", Protocol::Tcp);
        let svc = ServicePort {
            name: n.clone(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port: None,
            session_affinity_seconds: Some(3),
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            external_ips: vec![Ipv4Addr::new(203, 0, 113, 10).into()],
            load_balancer_ips: vec![Ipv4Addr::new(198, 51, 100, 10).into()],
            load_balancer_source_ranges: vec!["192.0.2.0/24".parse().unwrap()],
        };
        (n, svc)
    }

    fn ep(ready: bool, serving: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, 2).into(),
            port: 8080,
            ready,
            serving,
            terminating: false,
            node_name: None,
            is_local: false,
            hints: Default::default(),
        }
    }

    fn faulty(faults: &[Fault]) -> Faulty {
        Faulty {
            inner: Box::new(NoopBackend),
            faults: faults.to_vec(),
            kept: BTreeMap::new(),
            last_endpoints: BTreeMap::new(),
        }
    }

    struct NoopBackend;
    impl Backend for NoopBackend {
        fn setup(&mut self, _: &NodeContext) -> Result<(), BackendError> {
            Ok(())
        }
        fn sync(&mut self, _: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
            Ok(SyncOutcome::default())
        }
        fn stats(&mut self) -> Result<BackendStats, BackendError> {
            Ok(BackendStats::default())
        }
        fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
            Ok(())
        }
    }

    #[test]
    fn nodeport_any_address_adds_the_pod_bridge() {
        let node = crate::testkit::node();
        assert_eq!(faulty(&[]).bend_node(&node), node);
        let bent = faulty(&[Fault::NodePortAnyAddress]).bend_node(&node);
        assert_eq!(
            bent.nodeport_ips(),
            vec![node.node_ip, Ipv4Addr::new(10, 244, 0, 1).into()]
        );
        assert_eq!(
            NodeContext {
                node_port_ips: None,
                localhost_node_ports: false,
                ..bent
            },
            node
        );
    }

    #[test]
    fn each_fault_bends_only_its_field() {
        let (n, svc) = port("a");
        let mut state = ProxyState::default();
        state.services.insert(n.clone(), svc.clone());
        state
            .endpoints
            .insert(n.clone(), vec![ep(true, true), ep(true, false)]);
        let changes = ChangeSet::default();

        let (s, _) = faulty(&[Fault::NoExternalIps]).bend(&state, &changes);
        assert!(s.services[&n].external_ips.is_empty());
        assert_eq!(s.services[&n].session_affinity_seconds, Some(3));

        let (s, _) = faulty(&[Fault::AffinityNoTimeout]).bend(&state, &changes);
        assert_eq!(s.services[&n].session_affinity_seconds, Some(10800));
        assert_eq!(s.services[&n].external_ips, svc.external_ips);

        let (s, _) = faulty(&[Fault::LbNoIngress]).bend(&state, &changes);
        assert!(s.services[&n].load_balancer_ips.is_empty());
        assert_eq!(
            s.services[&n].load_balancer_source_ranges,
            svc.load_balancer_source_ranges
        );

        let (s, _) = faulty(&[Fault::LbIgnoreSourceRanges]).bend(&state, &changes);
        assert!(s.services[&n].load_balancer_source_ranges.is_empty());
        assert_eq!(s.services[&n].load_balancer_ips, svc.load_balancer_ips);

        let (s, _) = faulty(&[Fault::RequireServing]).bend(&state, &changes);
        let ready: Vec<bool> = s.endpoints[&n].iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false]);

        let mut hinted = state.clone();
        for e in hinted.endpoints.get_mut(&n).unwrap() {
            e.hints.zone = crate::model::Hint::Here;
        }
        let (s, _) = faulty(&[Fault::IgnoreTopologyHints]).bend(&hinted, &changes);
        assert!(s.endpoints[&n].iter().all(|e| e.hints == Hints::default()));
        assert_eq!(s.services[&n], svc);
    }

    #[test]
    fn deleted_ports_stay_until_recreated() {
        let (n, svc) = port("a");
        let mut f = faulty(&[Fault::KeepDeletedServices]);
        let mut before = ProxyState::default();
        before.services.insert(n.clone(), svc.clone());
        before.endpoints.insert(n.clone(), vec![ep(true, true)]);
        f.bend(&before, &ChangeSet::default());
        // Deleted: its slices went first (no endpoints), then the Service.
        let mut gone = ChangeSet::default();
        gone.changed.insert(n.clone());
        gone.deleted.insert(n.clone(), svc.clone());
        let (s, c) = f.bend(&ProxyState::default(), &gone);
        assert_eq!(s.services.get(&n), Some(&svc));
        assert_eq!(s.endpoints_of(&n).len(), 1, "kept with its last endpoints");
        assert!(c.deleted.is_empty());
        // Recreated under the same name with another address: the new one.
        let mut again = svc.clone();
        again.cluster_ip = Ipv4Addr::new(10, 96, 0, 99).into();
        let mut now = ProxyState::default();
        now.services.insert(n.clone(), again.clone());
        let (s, _) = f.bend(&now, &ChangeSet::default());
        assert_eq!(s.services[&n], again);
        assert!(f.kept.is_empty());
    }
}
