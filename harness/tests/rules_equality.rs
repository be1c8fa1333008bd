//! Fidelity: svclab's iptables and nftables backends program the same rules
//! as upstream kube-proxy's iptables and nftables modes, on the same Services
//! (smoke, behaviours and a generated 1,000-Service scenario). Each
//! scenario is brought up once per backend; node-0's ruleset is dumped and
//! normalised (`svclab::rules`), and every line one side has and the other
//! lacks must be one of the differences listed here, with its reason. A new
//! difference fails the test with the lines.

mod common;

use std::collections::BTreeSet;

use svclab::rules::{self, Ruleset};

/// A known difference: lines `matches` accepts, only on `side`.
struct Known {
    side: Side,
    matches: fn(&str) -> bool,
    #[allow(dead_code)] // read by people: the reason it is allowed
    why: &'static str,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    Ours,
    Upstream,
}

use Side::{Ours, Upstream};

const IPTABLES: &[Known] = &[
    Known {
        side: Upstream,
        matches: |l| l.ends_with(": :KUBE-PROXY-CANARY"),
        why: "kube-proxy's canary chains, which it polls to notice a firewall flush \
              (pkg/proxy/iptables/proxier.go); svclab's agent re-syncs on its own clock",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l == "filter: :KUBE-FIREWALL"
                || l == "filter: -A INPUT -j KUBE-FIREWALL"
                || l == "filter: -A OUTPUT -j KUBE-FIREWALL"
                || (l.starts_with("filter: -A KUBE-FIREWALL ")
                    && l.contains("block incoming localnet connections"))
        },
        why: "kube-proxy's guard for route_localnet (localhost NodePorts, iptables mode only); \
              svclab's backend serves NodePorts on node addresses and sets no route_localnet",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l.starts_with("nat: -A KUBE-NODEPORTS -d 127.0.0.0/8 ")
                && l.contains("localhost_nps_accepted_pkts")
        },
        why: "localhost NodePorts (127.0.0.1:<nodePort>), counted with nfacct; not implemented \
              by svclab's backend",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l == "filter: -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct \
                  --nfacct-name ct_state_invalid_dropped_pkts -j DROP"
        },
        why: "kube-proxy counts the INVALID drops with nfacct when the kernel has it (v1.29+)",
    },
    Known {
        side: Ours,
        matches: |l| l == "filter: -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        why: "the same drop, uncounted",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l.starts_with(
                "nat: -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports;",
            ) && l.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
        },
        why: "kube-proxy's default nodePortAddresses (unset: every local address); svclab's \
              backend takes NodePorts on the node's address only, like kube-proxy with \
              --nodeport-addresses primary",
    },
    Known {
        side: Ours,
        matches: |l| {
            l.starts_with("nat: -A KUBE-SERVICES -d ")
                && l.ends_with("this must be the last rule in this chain\" -j KUBE-NODEPORTS")
        },
        why: "the same jump, for the node's address only",
    },
];

/// A Service's own chain: `service-…`, or the `local-…` chain of a Local
/// traffic policy.
fn service_chain(l: &str) -> bool {
    l.starts_with("ip kube-proxy/chain service-") || l.starts_with("ip kube-proxy/chain local-")
}

/// The IPv6 table every upstream nftables proxier writes.
const IP6_TABLE: Known = Known {
    side: Upstream,
    matches: |l| l.starts_with("ip6 kube-proxy"),
    why: "kube-proxy runs one proxier per IP family the node has, and the lab's nodes have \
          IPv6 loopback, so it writes an (empty) `ip6 kube-proxy` table; svclab's lab is \
          IPv4-only until dual-stack (issue 18)",
};

/// svclab's nftables backend against kube-proxy v1.34's layout, which it
/// follows: the only difference is the IPv6 table.
const NFTABLES_V1_34: &[Known] = &[IP6_TABLE];

/// Against kube-proxy v1.37, whose nftables layout changed after v1.34
/// (pkg/proxy/nftables/proxier.go, `writeServiceToEndpointRules` and the
/// `hairpin-connections` set). Both layouts pass every behaviour check; these
/// are the places they differ.
const NFTABLES_V1_37: &[Known] = &[
    IP6_TABLE,
    Known {
        side: Ours,
        matches: |l| l.starts_with("ip kube-proxy/chain endpoint-"),
        why: "v1.37 keeps per-endpoint chains only for Services with ClientIP affinity \
              (those are equal on both sides); v1.34 and svclab have one per endpoint",
    },
    Known {
        side: Ours,
        matches: |l| service_chain(l) && l.contains(": numgen random mod "),
        why: "v1.34 and svclab pick the endpoint with a vmap of gotos to endpoint chains (in \
              the service chain, or the local chain of a Local traffic policy)",
    },
    Known {
        side: Upstream,
        matches: |l| {
            service_chain(l)
                && (l.contains(" dnat ip to numgen random mod ") || l.contains(" dnat to "))
        },
        why: "v1.37 DNATs straight from the service chain: a numgen map of address . port, \
              or one `dnat to` for a single endpoint",
    },
    Known {
        side: Ours,
        matches: |l| {
            (service_chain(l) || l.starts_with("ip kube-proxy/chain external-"))
                && l.contains(" jump mark-for-masquerade")
        },
        why: "v1.34 and svclab mark for masquerade per Service through a helper chain (v1.37 \
              marks off-cluster ClusterIP traffic once, below)",
    },
    Known {
        side: Upstream,
        matches: |l| {
            (l.starts_with("ip kube-proxy/chain services: ip daddr @cluster-ips ip saddr != ")
                || l.starts_with("ip kube-proxy/chain external-"))
                && l.contains("meta mark set meta mark | 0x00004000")
        },
        why: "v1.37 marks off-cluster ClusterIP traffic once, against the @cluster-ips set, and \
              inlines the mark in external chains",
    },
    Known {
        side: Ours,
        matches: |l| {
            l.starts_with("ip kube-proxy/chain mark-for-masquerade")
                || l == "ip kube-proxy/chain masquerading: masquerade fully-random"
                || l == "ip kube-proxy/chain masquerading: meta mark & 0x00004000 == 0x00000000 return"
                || l == "ip kube-proxy/chain masquerading: meta mark set meta mark ^ 0x00004000"
        },
        why: "v1.34's three-rule masquerading chain and its mark helper",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l.starts_with("ip kube-proxy/set hairpin-connections")
                || l.starts_with("ip kube-proxy/chain masquerading: ")
        },
        why: "v1.37 masquerades hairpin connections by a set of (pod, pod, proto, port) instead \
              of a `saddr == endpoint` rule in every endpoint chain, and folds the mark test \
              into one masquerade rule",
    },
];

/// Brings `scenario` up on `backend`, and reads node-0's normalised ruleset
/// through `svclab rules` (and once raw, through the library, to check the
/// command prints what `svclab::rules` makes of the tool's output).
fn up_and_dump(scenario: &str, backend: &str, ruleset: Ruleset) -> BTreeSet<String> {
    let up = common::run(&["up", scenario, "--backend", backend]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    let printed = common::run(&["rules", "--run", &run]);
    let raw = rules::dump(&format!("svclab-{run}-node-0"), ruleset);
    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
    assert!(printed.status.success(), "{}", common::text(&printed));
    let lines: BTreeSet<String> = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .map(String::from)
        .collect();
    let raw = rules::normalise(ruleset, &raw.expect("dumping node-0's rules"));
    // The two reads straddle nothing that changes the rules (the lab is
    // synced and idle), so they agree.
    assert_eq!(lines, raw, "svclab rules vs svclab::rules for {backend}");
    lines
}

fn unexplained(
    ours: &BTreeSet<String>,
    upstream: &BTreeSet<String>,
    known: &[Known],
) -> Vec<String> {
    let (only_ours, only_upstream) = rules::diff(ours, upstream);
    let mut bad = Vec::new();
    for (side, lines) in [(Ours, only_ours), (Upstream, only_upstream)] {
        for l in lines {
            if !known.iter().any(|k| k.side == side && (k.matches)(&l)) {
                bad.push(format!("{side:?} only: {l}"));
            }
        }
    }
    bad
}

/// Brings `scenario` up on `ours`, then on each upstream backend, and
/// requires every difference to be one of that upstream's known ones.
fn compare(scenario: &str, ours: &str, upstreams: &[(&str, &[Known])], ruleset: Ruleset) {
    let a = up_and_dump(scenario, ours, ruleset);
    assert!(a.len() > 20, "{ours}: only {} lines: {a:#?}", a.len());
    for (upstream, known) in upstreams {
        let b = up_and_dump(scenario, upstream, ruleset);
        let bad = unexplained(&a, &b, known);
        assert!(
            bad.is_empty(),
            "{scenario}: {ours} vs {upstream}: {} unexplained difference(s):\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

/// The scenarios compared: smoke, behaviours, and a generated one of 1,000
/// Services x 10 endpoints, written into `dir`.
fn scenarios(dir: &std::path::Path) -> Vec<String> {
    let generated = dir.join("gen-1000x10.yaml");
    let made = common::run(&["generate", "--services", "1000", "--endpoints", "10"]);
    assert!(made.status.success(), "{}", common::text(&made));
    std::fs::write(&generated, &made.stdout).expect("writing the generated scenario");
    vec![
        "scenarios/smoke.yaml".into(),
        "scenarios/behaviours.yaml".into(),
        generated.to_str().expect("a UTF-8 path").into(),
    ]
}

#[test]
fn iptables_programs_what_kube_proxy_iptables_programs() {
    require_root!();
    if !common::have_kube_proxy() {
        return;
    }
    let _lab = common::lab_lock();
    let dir = tempfile::tempdir().expect("a temporary folder");
    for scenario in &scenarios(dir.path()) {
        compare(
            scenario,
            "iptables",
            &[("kube-proxy:iptables", IPTABLES)],
            Ruleset::Iptables,
        );
    }
}

#[test]
fn nftables_programs_what_kube_proxy_nftables_programs() {
    require_root!();
    if !common::have_kube_proxy() {
        return;
    }
    let _lab = common::lab_lock();
    let dir = tempfile::tempdir().expect("a temporary folder");
    for scenario in &scenarios(dir.path()) {
        compare(
            scenario,
            "nftables",
            &[
                ("kube-proxy:nftables@v1.34.4", NFTABLES_V1_34),
                ("kube-proxy:nftables@v1.37.2", NFTABLES_V1_37),
            ],
            Ruleset::Nftables,
        );
    }
}

#[test]
fn the_comparison_catches_a_rule_upstream_lacks() {
    let ours: BTreeSet<String> = ["nat: :KUBE-SERVICES", "nat: -A KUBE-SERVICES -j EXTRA"]
        .into_iter()
        .map(String::from)
        .collect();
    let upstream: BTreeSet<String> = ["nat: :KUBE-SERVICES", "mangle: :KUBE-PROXY-CANARY"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        unexplained(&ours, &upstream, IPTABLES),
        vec!["Ours only: nat: -A KUBE-SERVICES -j EXTRA".to_string()]
    );
}
