//! Table-driven plan tests in the shape of kube-proxy's proxier_test.go:
//! Services and endpoints in, virtual servers, real servers and ipset
//! entries out.

use super::*;
use crate::model::{Protocol, ServicePortName};
use crate::testkit;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn ctx(scheduler: &str) -> PlanContext<'_> {
    PlanContext {
        node_ip: NODE_IP,
        node_port_ips: &[NODE_IP],
        scheduler,
    }
}

fn svc(protocol: Protocol) -> ServicePort {
    testkit::service_port(ServicePortName::new("ns", "web", "http", protocol), VIP, 80)
}

/// Endpoint 10.244.<node>.<last>:8080; `state` is r(eady), t(erminating
/// and serving) or n(ot ready).
fn ep(node: u8, last: u8, state: char) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, node, last).into(),
        port: 8080,
        ready: state == 'r',
        serving: state != 'n',
        terminating: state == 't',
        node_name: Some(format!("n{node}")),
        is_local: node == 0,
        hints: Default::default(),
    }
}

fn key(addr: Ipv4Addr, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        protocol,
        addr,
        port,
    }
}

/// `ip:weight` per real server of virtual server `key` in `plan`.
fn dests_of(plan: &PortPlan, key: ServiceKey) -> Vec<String> {
    let s = plan
        .servers
        .iter()
        .find(|s| s.server.key == key)
        .unwrap_or_else(|| panic!("no virtual server {key} in {plan:?}"));
    s.dests
        .iter()
        .map(|((ip, _), w)| format!("{ip}:{w}"))
        .collect()
}

fn entries_of(plan: &PortPlan, set: IpSet) -> Vec<&str> {
    plan.entries
        .iter()
        .filter(|(s, _)| *s == set)
        .map(|(_, e)| e.as_str())
        .collect()
}

#[test]
fn cluster_ip_service() {
    let eps = [ep(0, 5, 'r'), ep(1, 6, 'r'), ep(1, 7, 'n')];
    let plan = plan_port(&svc(Protocol::Tcp), &eps, &ctx("rr"));
    assert_eq!(plan.servers.len(), 1);
    let vs = &plan.servers[0].server;
    assert_eq!(
        (vs.key, vs.scheduler.as_str(), vs.flags, vs.timeout),
        (key(VIP, 80, Protocol::Tcp), "rr", 0, 0)
    );
    assert_eq!(dests_of(&plan, vs.key), ["10.244.0.5:1", "10.244.1.6:1"]);
    assert_eq!(plan.addresses, vec![VIP]);
    assert_eq!(
        entries_of(&plan, IpSet::LoopBack),
        ["10.244.0.5,tcp:8080,10.244.0.5"]
    );
    assert_eq!(entries_of(&plan, IpSet::ClusterIp), ["10.96.0.10,tcp:80"]);
    assert_eq!(entries_of(&plan, IpSet::IpvsIps), ["10.96.0.10"]);
}

#[test]
fn nodeport_with_affinity_is_persistent_on_every_virtual_server() {
    let mut s = svc(Protocol::Udp);
    s.node_port = Some(30053);
    s.session_affinity_seconds = Some(10800);
    let plan = plan_port(&s, &[ep(1, 6, 'r')], &ctx("rr"));
    assert_eq!(plan.servers.len(), 2);
    for p in &plan.servers {
        assert_eq!(
            (p.server.flags, p.server.timeout),
            (SVC_F_PERSISTENT, 10800)
        );
    }
    assert_eq!(
        dests_of(&plan, key(NODE_IP, 30053, Protocol::Udp)),
        ["10.244.1.6:1"]
    );
    assert_eq!(entries_of(&plan, IpSet::NodePortUdp), ["30053"]);
    assert!(entries_of(&plan, IpSet::NodePortLocalUdp).is_empty());
    // The node IP is never bound to kube-ipvs0.
    assert_eq!(plan.addresses, vec![VIP]);
}

#[test]
fn traffic_policy_table() {
    struct Case {
        name: &'static str,
        itp_local: bool,
        etp_local: bool,
        eps: Vec<Endpoint>,
        cluster_ip: Vec<&'static str>,
        node_port: Vec<&'static str>,
    }
    let cases = [
        Case {
            name: "external Local uses local endpoints for the NodePort only",
            itp_local: false,
            etp_local: true,
            eps: vec![ep(0, 5, 'r'), ep(1, 6, 'r')],
            cluster_ip: vec!["10.244.0.5:1", "10.244.1.6:1"],
            node_port: vec!["10.244.0.5:1"],
        },
        Case {
            name: "external Local without local endpoints falls back to the cluster",
            itp_local: false,
            etp_local: true,
            eps: vec![ep(1, 6, 'r')],
            cluster_ip: vec!["10.244.1.6:1"],
            node_port: vec!["10.244.1.6:1"],
        },
        Case {
            name: "internal Local without local endpoints has no real servers",
            itp_local: true,
            etp_local: false,
            eps: vec![ep(1, 6, 'r')],
            cluster_ip: vec![],
            node_port: vec!["10.244.1.6:1"],
        },
        Case {
            name: "internal Local keeps remote terminating endpoints out",
            itp_local: true,
            etp_local: false,
            eps: vec![ep(0, 5, 'r'), ep(0, 4, 't'), ep(1, 6, 't')],
            cluster_ip: vec!["10.244.0.4:0", "10.244.0.5:1"],
            node_port: vec!["10.244.0.4:0", "10.244.0.5:1", "10.244.1.6:0"],
        },
        Case {
            name: "local falls back to local serving terminating endpoints",
            itp_local: false,
            etp_local: true,
            eps: vec![ep(0, 5, 't'), ep(1, 6, 'r')],
            cluster_ip: vec!["10.244.0.5:0", "10.244.1.6:1"],
            node_port: vec!["10.244.0.5:1"],
        },
    ];
    for c in cases {
        let mut s = svc(Protocol::Tcp);
        s.node_port = Some(30080);
        s.internal_policy_local = c.itp_local;
        s.external_policy_local = c.etp_local;
        let plan = plan_port(&s, &c.eps, &ctx("rr"));
        assert_eq!(
            dests_of(&plan, key(VIP, 80, Protocol::Tcp)),
            c.cluster_ip,
            "{}: ClusterIP",
            c.name
        );
        assert_eq!(
            dests_of(&plan, key(NODE_IP, 30080, Protocol::Tcp)),
            c.node_port,
            "{}: NodePort",
            c.name
        );
        assert_eq!(
            entries_of(&plan, IpSet::NodePortLocalTcp).len(),
            usize::from(c.etp_local),
            "{}",
            c.name
        );
    }
}

#[test]
fn terminating_endpoints_drain_at_weight_zero() {
    let eps = [ep(1, 6, 'r'), ep(1, 7, 't'), ep(1, 8, 'n')];
    let plan = plan_port(&svc(Protocol::Tcp), &eps, &ctx("rr"));
    assert_eq!(
        dests_of(&plan, key(VIP, 80, Protocol::Tcp)),
        ["10.244.1.6:1", "10.244.1.7:0"]
    );
    // With only terminating endpoints left, they serve (weight 1).
    let plan = plan_port(&svc(Protocol::Tcp), &[ep(1, 7, 't')], &ctx("rr"));
    assert_eq!(
        dests_of(&plan, key(VIP, 80, Protocol::Tcp)),
        ["10.244.1.7:1"]
    );
}

#[test]
fn no_endpoints_still_has_a_virtual_server() {
    let plan = plan_port(&svc(Protocol::Tcp), &[], &ctx("rr"));
    assert!(dests_of(&plan, key(VIP, 80, Protocol::Tcp)).is_empty());
    assert_eq!(entries_of(&plan, IpSet::ClusterIp), ["10.96.0.10,tcp:80"]);
}

#[test]
fn external_ips_sctp_health_checks_and_mh() {
    let ext = Ipv4Addr::new(203, 0, 113, 7);
    let mut s = svc(Protocol::Sctp);
    s.external_ips = vec![ext.into(), NODE_IP.into()];
    s.node_port = Some(30132);
    s.external_policy_local = true;
    s.health_check_node_port = Some(32000);
    let plan = plan_port(&s, &[ep(0, 5, 'r')], &ctx("mh"));
    assert_eq!(plan.servers.len(), 4);
    assert!(
        plan.servers
            .iter()
            .all(|p| p.server.flags == SVC_F_SCHED_SH_PORT)
    );
    assert_eq!(plan.addresses, vec![VIP, ext]);
    assert_eq!(
        entries_of(&plan, IpSet::ExternalIpLocal),
        ["203.0.113.7,sctp:80", "192.168.0.2,sctp:80"]
    );
    assert_eq!(
        entries_of(&plan, IpSet::NodePortLocalSctp),
        ["192.168.0.2,sctp:30132"]
    );
    assert_eq!(entries_of(&plan, IpSet::HealthCheckNodePort), ["32000"]);
    assert_eq!(
        entries_of(&plan, IpSet::IpvsIps),
        ["10.96.0.10", "203.0.113.7"]
    );
}

#[test]
fn load_balancer_ips_and_source_ranges() {
    let lb = Ipv4Addr::new(198, 51, 100, 4);
    let mut s = svc(Protocol::Tcp);
    s.load_balancer_ips = vec![lb.into()];
    let plan = plan_port(&s, &[ep(1, 6, 'r')], &ctx("rr"));
    assert_eq!(
        entries_of(&plan, IpSet::LoadBalancer),
        ["198.51.100.4,tcp:80"]
    );
    assert!(entries_of(&plan, IpSet::LoadBalancerFw).is_empty());
    assert_eq!(
        dests_of(&plan, key(lb, 80, Protocol::Tcp)),
        ["10.244.1.6:1"]
    );
    assert_eq!(plan.addresses, vec![VIP, lb]);
    assert!(plan.node_denied.is_empty());

    // Ranges that leave the node out: the node is denied (#119656).
    s.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    let plan = plan_port(&s, &[ep(1, 6, 'r')], &ctx("rr"));
    assert_eq!(
        entries_of(&plan, IpSet::LoadBalancerFw),
        ["198.51.100.4,tcp:80"]
    );
    assert_eq!(
        entries_of(&plan, IpSet::LoadBalancerSourceCidr),
        ["198.51.100.4,tcp:80,203.0.113.0/24"]
    );
    assert!(entries_of(&plan, IpSet::LoadBalancerSourceIp).is_empty());
    assert_eq!(plan.node_denied, vec![(lb, Protocol::Tcp, 80)]);

    // A range holding the node lets the VIP in as a source instead.
    s.load_balancer_source_ranges
        .push("192.168.0.0/24".parse().unwrap());
    let plan = plan_port(&s, &[ep(1, 6, 'r')], &ctx("rr"));
    assert_eq!(
        entries_of(&plan, IpSet::LoadBalancerSourceIp),
        ["198.51.100.4,tcp:80,198.51.100.4"]
    );
    assert!(plan.node_denied.is_empty());
}

#[test]
fn server_ops_add_update_and_remove() {
    let eps = [ep(1, 6, 'r'), ep(1, 7, 'r')];
    let before = plan_port(&svc(Protocol::Tcp), &eps, &ctx("rr"));
    let mut changed = svc(Protocol::Tcp);
    changed.session_affinity_seconds = Some(60);
    changed.node_port = Some(30080);
    let after = plan_port(
        &changed,
        &[ep(1, 6, 'r'), ep(1, 7, 't'), ep(1, 9, 'r')],
        &ctx("rr"),
    );
    let ops = server_ops(&servers_of([&before]), &servers_of([&after]));
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "updating virtual server TCP/10.96.0.10:80 (scheduler rr)",
            "setting real server 10.244.1.7:8080 of TCP/10.96.0.10:80 to weight 0",
            "adding real server 10.244.1.9:8080 (weight 1) to TCP/10.96.0.10:80",
            "adding virtual server TCP/192.168.0.2:30080 (scheduler rr)",
            "adding real server 10.244.1.6:8080 (weight 1) to TCP/192.168.0.2:30080",
            "adding real server 10.244.1.7:8080 (weight 0) to TCP/192.168.0.2:30080",
            "adding real server 10.244.1.9:8080 (weight 1) to TCP/192.168.0.2:30080",
        ]
    );
    let back = server_ops(&servers_of([&after]), &servers_of([&before]));
    let text: Vec<String> = back.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "updating virtual server TCP/10.96.0.10:80 (scheduler rr)",
            "setting real server 10.244.1.7:8080 of TCP/10.96.0.10:80 to weight 1",
            "deleting real server 10.244.1.9:8080 from TCP/10.96.0.10:80",
            "deleting virtual server TCP/192.168.0.2:30080",
        ]
    );
    assert!(server_ops(&servers_of([&after]), &servers_of([&after])).is_empty());
}
