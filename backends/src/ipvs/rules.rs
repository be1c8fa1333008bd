//! The small, fixed iptables ruleset of kube-proxy's IPVS mode: masquerade
//! marking, hairpin SNAT and the filters, all keyed on ipsets, so it does
//! not grow with the number of Services. It changes only when a set turns
//! empty or non-empty (kube-proxy writes a set's match rule only when the
//! set has entries). Applied with `iptables-nft-restore --noflush`, which
//! replaces the chains it declares and leaves every other chain alone.

use std::collections::BTreeSet;
use std::fmt::Write;

use ipnet::Ipv4Net;

use super::ipsets::IpSet;
use crate::kernel::iptables::Jump;

/// kube-proxy's default `--iptables-masquerade-bit` 14.
const MASQ_MARK: &str = "0x4000";

/// Chains kube-proxy's IPVS mode owns, per table.
pub const NAT_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-MARK-MASQ",
];
pub const FILTER_CHAINS: [&str; 6] = [
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];

const PORTALS: &str = "kubernetes service portals";
const POSTROUTING: &str = "kubernetes postrouting rules";
const FORWARDING: &str = "kubernetes forwarding rules";
const FIREWALL: &str = "kube-proxy firewall rules";
const ACCESS: &str = "kubernetes ipvs access filter";

/// kube-proxy's jumps, each prepended to its built-in chain if missing.
pub const JUMPS: [Jump; 9] = [
    Jump::new("nat", "OUTPUT", "KUBE-SERVICES", PORTALS),
    Jump::new("nat", "PREROUTING", "KUBE-SERVICES", PORTALS),
    Jump::new("nat", "POSTROUTING", "KUBE-POSTROUTING", POSTROUTING),
    Jump::new("filter", "FORWARD", "KUBE-FORWARD", FORWARDING),
    Jump::new(
        "filter",
        "INPUT",
        "KUBE-NODE-PORT",
        "kubernetes health check rules",
    ),
    Jump::new("filter", "INPUT", "KUBE-PROXY-FIREWALL", FIREWALL),
    Jump::new("filter", "FORWARD", "KUBE-PROXY-FIREWALL", FIREWALL),
    Jump::new("filter", "INPUT", "KUBE-IPVS-FILTER", ACCESS),
    Jump::new("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", ACCESS),
];

/// What the ruleset depends on.
#[derive(Clone, Debug)]
pub struct RuleInput<'a> {
    /// kube-proxy's `--cluster-cidr`: traffic from outside it to a ClusterIP
    /// is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// Sets that have at least one entry.
    pub non_empty: &'a BTreeSet<IpSet>,
    /// False only for the lab's missing-masquerade fault.
    pub masquerade: bool,
    /// Load balancer VIPs (address, protocol, port) this node may not
    /// reach, its IP being outside their source ranges (#119656).
    pub node_denied: &'a [(std::net::Ipv4Addr, crate::model::Protocol, u16)],
}

/// How a set's entries are matched, where the set feeds a jump of its own
/// (kube-proxy's `ipsetWithIptablesChain`, in its order).
struct SetJump {
    set: IpSet,
    nat: bool,
    from: &'static str,
    to: &'static str,
    match_type: &'static str,
    protocol: Option<&'static str>,
}

const SET_JUMPS: [SetJump; 12] = [
    SetJump {
        set: IpSet::LoopBack,
        nat: true,
        from: "KUBE-POSTROUTING",
        to: "MASQUERADE",
        match_type: "dst,dst,src",
        protocol: None,
    },
    SetJump {
        set: IpSet::LoadBalancer,
        nat: true,
        from: "KUBE-SERVICES",
        to: "KUBE-LOAD-BALANCER",
        match_type: "dst,dst",
        protocol: None,
    },
    SetJump {
        set: IpSet::LoadBalancerLocal,
        nat: true,
        from: "KUBE-LOAD-BALANCER",
        to: "RETURN",
        match_type: "dst,dst",
        protocol: None,
    },
    SetJump {
        set: IpSet::NodePortLocalTcp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "RETURN",
        match_type: "dst",
        protocol: Some("tcp"),
    },
    SetJump {
        set: IpSet::NodePortTcp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "KUBE-MARK-MASQ",
        match_type: "dst",
        protocol: Some("tcp"),
    },
    SetJump {
        set: IpSet::NodePortLocalUdp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "RETURN",
        match_type: "dst",
        protocol: Some("udp"),
    },
    SetJump {
        set: IpSet::NodePortUdp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "KUBE-MARK-MASQ",
        match_type: "dst",
        protocol: Some("udp"),
    },
    SetJump {
        set: IpSet::NodePortLocalSctp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "RETURN",
        match_type: "dst,dst",
        protocol: Some("sctp"),
    },
    SetJump {
        set: IpSet::NodePortSctp,
        nat: true,
        from: "KUBE-NODE-PORT",
        to: "KUBE-MARK-MASQ",
        match_type: "dst,dst",
        protocol: Some("sctp"),
    },
    SetJump {
        set: IpSet::LoadBalancerFw,
        nat: false,
        from: "KUBE-PROXY-FIREWALL",
        to: "KUBE-SOURCE-RANGES-FIREWALL",
        match_type: "dst,dst",
        protocol: None,
    },
    SetJump {
        set: IpSet::LoadBalancerSourceCidr,
        nat: false,
        from: "KUBE-SOURCE-RANGES-FIREWALL",
        to: "RETURN",
        match_type: "dst,dst,src",
        protocol: None,
    },
    SetJump {
        set: IpSet::LoadBalancerSourceIp,
        nat: false,
        from: "KUBE-SOURCE-RANGES-FIREWALL",
        to: "RETURN",
        match_type: "dst,dst,src",
        protocol: None,
    },
];

fn set_match(set: IpSet, match_type: &str) -> String {
    format!(
        "-m comment --comment \"{}\" -m set --match-set {} {match_type}",
        set.comment(),
        set.name()
    )
}

/// The whole ruleset, as `iptables-restore --noflush` input for the nat and
/// filter tables (kube-proxy's `writeIptablesRules`).
pub fn render(input: &RuleInput<'_>) -> String {
    let has = |s: IpSet| input.non_empty.contains(&s);
    let mut nat = String::new();
    let mut filter = String::new();
    let mut line = |nat_table: bool, l: String| {
        let out = if nat_table { &mut nat } else { &mut filter };
        out.push_str(&l);
        out.push('\n');
    };

    line(true, "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN".into());
    for j in &SET_JUMPS {
        if !has(j.set) || (j.to == "MASQUERADE" && !input.masquerade) {
            continue;
        }
        let proto = j.protocol.map(|p| format!("-p {p} ")).unwrap_or_default();
        line(
            j.nat,
            format!(
                "-A {} {proto}{} -j {}",
                j.from,
                set_match(j.set, j.match_type),
                j.to
            ),
        );
    }
    if has(IpSet::ClusterIp) {
        line(
            true,
            format!(
                "-A KUBE-SERVICES {} ! -s {} -j KUBE-MARK-MASQ",
                set_match(IpSet::ClusterIp, "dst,dst"),
                input.cluster_cidr
            ),
        );
    }
    for (set, masquerade) in [(IpSet::ExternalIp, true), (IpSet::ExternalIpLocal, false)] {
        if !has(set) {
            continue;
        }
        let m = set_match(set, "dst,dst");
        if masquerade {
            line(true, format!("-A KUBE-SERVICES {m} -j KUBE-MARK-MASQ"));
        }
        // Traffic from off the machine (not from a bridge port, not from a
        // local address), or to an external IP that is local: let IPVS
        // take it.
        line(
            true,
            format!(
                "-A KUBE-SERVICES {m} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
            ),
        );
        line(
            true,
            format!("-A KUBE-SERVICES {m} -m addrtype --dst-type LOCAL -j ACCEPT"),
        );
    }
    line(
        true,
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".into(),
    );
    line(true, "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ".into());
    line(false, "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP".into());
    for set in [IpSet::ClusterIp, IpSet::LoadBalancer] {
        if has(set) {
            line(
                true,
                format!(
                    "-A KUBE-SERVICES -m set --match-set {} dst,dst -j ACCEPT",
                    set.name()
                ),
            );
        }
    }
    line(
        false,
        format!(
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
        ),
    );
    line(
        false,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    line(
        false,
        format!(
            "-A KUBE-NODE-PORT {} -j ACCEPT",
            set_match(IpSet::HealthCheckNodePort, "dst")
        ),
    );
    // Only Service ports are reachable on the VIPs: anything else new to an
    // address on kube-ipvs0 is refused, not delivered to the node.
    for (set, match_type) in [
        (IpSet::LoadBalancer, "dst,dst"),
        (IpSet::ClusterIp, "dst,dst"),
        (IpSet::ExternalIp, "dst,dst"),
        (IpSet::ExternalIpLocal, "dst,dst"),
        (IpSet::HealthCheckNodePort, "dst"),
    ] {
        line(
            false,
            format!(
                "-A KUBE-IPVS-FILTER -m set --match-set {} {match_type} -j RETURN",
                set.name()
            ),
        );
    }
    line(
        false,
        format!(
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
            IpSet::IpvsIps.name()
        ),
    );
    // The node's own connections to a bound VIP leave from the VIP itself;
    // where the source ranges leave the node out, drop them.
    for (ip, proto, port) in input.node_denied {
        line(
            false,
            format!(
                "-A KUBE-IPVS-OUT-FILTER -s {ip}/32 -m ipvs --vaddr {ip}/32 --vproto {} --vport \
                 {port} -j DROP",
                proto.lower()
            ),
        );
    }
    line(
        true,
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
    );
    line(
        true,
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
    );
    if input.masquerade {
        line(
            true,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
        );
    }
    line(
        true,
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
    );

    let mut out = String::from("*nat\n");
    for c in NAT_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&nat);
    out.push_str("COMMIT\n*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&filter);
    out.push_str("COMMIT\n");
    out
}

/// Rules in restore input (its `-A` lines).
pub fn rule_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A ")).count()
}

/// `--noflush` input that creates those of our chains that do not exist yet
/// (declaring an existing chain would flush it) and prepends the jumps
/// missing from `saved` (`iptables-save` output of both tables); None when
/// nothing is missing.
pub fn jumps_input(saved: &str) -> Option<String> {
    let missing: Vec<&Jump> = JUMPS
        .iter()
        .filter(|j| !saved.lines().any(|l| l.trim() == j.saved_line()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (table, chains) in [("nat", &NAT_CHAINS[..]), ("filter", &FILTER_CHAINS[..])] {
        let _ = writeln!(out, "*{table}");
        for c in chains {
            if !chain_exists(saved, table, c) {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
        }
        for j in missing.iter().filter(|j| j.table == table) {
            let _ = writeln!(out, "-I {} 1 {}", j.from, j.saved_spec());
        }
        out.push_str("COMMIT\n");
    }
    Some(out)
}

/// Whether `iptables-save` output declares `chain` in `table`.
fn chain_exists(saved: &str, table: &str, chain: &str) -> bool {
    let mut in_table = false;
    for l in saved.lines() {
        if let Some(t) = l.strip_prefix('*') {
            in_table = t == table;
        } else if in_table && l.starts_with(&format!(":{chain} ")) {
            return true;
        }
    }
    false
}

/// `--noflush` input that removes our jumps and chains, or None when
/// `saved` (`iptables-save` of both tables) has none of them.
pub fn cleanup_input(saved: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for (table, chains) in [("nat", &NAT_CHAINS[..]), ("filter", &FILTER_CHAINS[..])] {
        let present: Vec<&&str> = chains
            .iter()
            .filter(|c| chain_exists(saved, table, c))
            .collect();
        let jumps: Vec<&Jump> = JUMPS
            .iter()
            .filter(|j| j.table == table && saved.lines().any(|l| l.trim() == j.saved_line()))
            .collect();
        if present.is_empty() && jumps.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "*{table}");
        // Declaring a chain flushes it, so no chain still jumps to another
        // when the deletions run.
        for c in &present {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for j in jumps {
            let _ = writeln!(out, "-D {} {}", j.from, j.saved_spec());
        }
        for c in &present {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(sets: &[IpSet]) -> String {
        let non_empty: BTreeSet<IpSet> = sets.iter().copied().collect();
        render(&RuleInput {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            non_empty: &non_empty,
            masquerade: true,
            node_denied: &[],
        })
    }

    /// The nat table for a node with ClusterIPs, TCP NodePorts (one with
    /// externalTrafficPolicy Local) and local endpoints, as kube-proxy writes it.
    #[test]
    fn nat_table_matches_kube_proxy() {
        let text = input(&[
            IpSet::ClusterIp,
            IpSet::LoopBack,
            IpSet::NodePortTcp,
            IpSet::NodePortLocalTcp,
            IpSet::IpvsIps,
        ]);
        let nat = text.split("COMMIT\n").next().unwrap();
        let want = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
"#;
        assert_eq!(nat, want);
    }

    #[test]
    fn filter_table_rejects_new_flows_to_other_vip_ports() {
        let text = input(&[IpSet::ClusterIp]);
        let filter = text.split("COMMIT\n").nth(1).unwrap();
        assert!(filter.starts_with("*filter\n:KUBE-FORWARD - [0:0]\n"));
        let tail: Vec<&str> = filter.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            vec![
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
                "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
            ]
        );
    }

    #[test]
    fn empty_sets_get_no_match_rules_and_faults_drop_masquerade() {
        let text = input(&[]);
        assert!(!text.contains("KUBE-CLUSTER-IP dst,dst !"));
        assert!(!text.contains("KUBE-LOOP-BACK"));
        let non_empty: BTreeSet<IpSet> = [IpSet::LoopBack, IpSet::ExternalIp].into();
        let faulty = render(&RuleInput {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            non_empty: &non_empty,
            masquerade: false,
            node_denied: &[],
        });
        assert!(!faulty.contains("MASQUERADE"), "{faulty}");
        assert!(faulty.contains("-m physdev ! --physdev-is-in"));
        // Three external-IP rules more, the service MASQUERADE less.
        assert_eq!(rule_count(&faulty), rule_count(&text) + 2);
    }

    #[test]
    fn jumps_are_added_once_and_cleaned_up() {
        let first = jumps_input("").unwrap();
        assert!(first.contains(":KUBE-SERVICES - [0:0]\n"));
        assert!(first.contains(
            "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert_eq!(first.matches("-I INPUT 1").count(), 3);
        // What iptables-nft-save prints once the jumps and chains exist.
        let mut saved = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
        for c in NAT_CHAINS {
            saved.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in JUMPS.iter().filter(|j| j.table == "nat") {
            saved.push_str(&format!("{}\n", j.saved_line()));
        }
        saved.push_str("COMMIT\n*filter\n");
        for c in FILTER_CHAINS {
            saved.push_str(&format!(":{c} - [0:0]\n"));
        }
        for j in JUMPS.iter().filter(|j| j.table == "filter") {
            saved.push_str(&format!("{}\n", j.saved_line()));
        }
        saved.push_str("COMMIT\n");
        assert_eq!(jumps_input(&saved), None);
        let cleanup = cleanup_input(&saved).unwrap();
        assert!(cleanup.contains(
            "-D OUTPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-OUT-FILTER\n"
        ));
        assert_eq!(cleanup.matches("-X ").count(), 11);
        assert_eq!(
            cleanup_input("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }
}
