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
        why: "kube-proxy's guard for route_localnet where its default nodePortAddresses (all) \
              serves localhost NodePorts; svclab's default (primary) does not (with a setting \
              that covers 127.0.0.1, as behaviours.yaml's, both write it)",
    },
    Known {
        side: Upstream,
        matches: |l| {
            (l.starts_with("nat: -A KUBE-NODEPORTS -d 127.0.0.0/8 ")
                && l.contains("localhost_nps_accepted_pkts"))
                || (l.starts_with("nat: -A KUBE-SERVICES -d 127.0.0.1/32 ")
                    && l.ends_with("this must be the last rule in this chain\" -j KUBE-NODEPORTS"))
        },
        why: "localhost NodePorts counted with nfacct (the 127.0.0.0/8 rule), which svclab's \
              backend does not count; and the loopback jump where upstream's default (all) \
              serves them and svclab's (primary) does not",
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

/// svclab's nftables backend against kube-proxy v1.37, whose layout (that
/// of v1.35 and later) it follows: the only difference is the IPv6 table.
const NFTABLES_V1_37: &[Known] = &[IP6_TABLE];

/// Against kube-proxy v1.34, whose older layout
/// (pkg/proxy/nftables/proxier.go before `writeServiceToEndpointDNATs` and
/// the `hairpin-connections` set) has a chain per endpoint. Both layouts
/// pass every behaviour check; these are the places they differ.
const NFTABLES_V1_34: &[Known] = &[
    IP6_TABLE,
    Known {
        side: Ours,
        matches: |l| {
            l.contains("/labelled-headless/")
                || l.starts_with("ip kube-proxy/set cluster-ips: element ")
        },
        why: "behaviours.yaml's `labelled-headless` Service (a ClusterIP Service labelled \
              service.kubernetes.io/headless): v1.34 skips it, v1.37 and svclab program it \
              (the label filters only EndpointSlices since v1.37); its ClusterIP's element in \
              @cluster-ips cannot be told from the others by name, so against v1.34 extra \
              cluster-ips elements are allowed (the v1.37 comparison holds them exactly)",
    },
    Known {
        side: Upstream,
        matches: |l| l.starts_with("ip kube-proxy/chain endpoint-"),
        why: "v1.34 has a chain per endpoint; v1.37 and svclab keep them only for Services \
              with ClientIP affinity (those are equal on both sides)",
    },
    Known {
        side: Upstream,
        matches: |l| service_chain(l) && l.contains(": numgen random mod "),
        why: "v1.34 picks the endpoint with a vmap of gotos to endpoint chains (in the \
              service chain, or the local chain of a Local traffic policy)",
    },
    Known {
        side: Ours,
        matches: |l| {
            service_chain(l)
                && (l.contains(" dnat ip to numgen random mod ") || l.contains(" dnat to "))
        },
        why: "v1.37 and svclab DNAT straight from the service chain: a numgen map of \
              address . port, or one `dnat to` for a single endpoint",
    },
    Known {
        side: Upstream,
        matches: |l| {
            (service_chain(l) || l.starts_with("ip kube-proxy/chain external-"))
                && l.contains(" jump mark-for-masquerade")
        },
        why: "v1.34 marks for masquerade per Service through a helper chain (v1.37 and svclab \
              mark off-cluster ClusterIP traffic once, below)",
    },
    Known {
        side: Ours,
        matches: |l| {
            (l.starts_with("ip kube-proxy/chain services: ip daddr @cluster-ips ip saddr != ")
                || l.starts_with("ip kube-proxy/chain external-"))
                && l.contains("meta mark set meta mark | 0x00004000")
        },
        why: "v1.37 and svclab mark off-cluster ClusterIP traffic once, against the \
              @cluster-ips set, and inline the mark in external chains",
    },
    Known {
        side: Upstream,
        matches: |l| {
            l.starts_with("ip kube-proxy/chain mark-for-masquerade")
                || l == "ip kube-proxy/chain masquerading: masquerade fully-random"
                || l == "ip kube-proxy/chain masquerading: meta mark & 0x00004000 == 0x00000000 return"
                || l == "ip kube-proxy/chain masquerading: meta mark set meta mark ^ 0x00004000"
        },
        why: "v1.34's three-rule masquerading chain and its mark helper",
    },
    Known {
        side: Ours,
        matches: |l| {
            l.starts_with("ip kube-proxy/set hairpin-connections")
                || l.starts_with("ip kube-proxy/chain masquerading: ")
        },
        why: "v1.37 and svclab masquerade hairpin connections by a set of (pod, pod, proto, \
              port) instead of a `saddr == endpoint` rule in every endpoint chain, and fold \
              the mark test into one masquerade rule",
    },
];

/// Brings `scenario` up on `backend`, and reads node-0's normalised ruleset
/// through `svclab rules` (and once raw, through the library, to check the
/// command prints what `svclab::rules` makes of the tool's output).
fn up_and_dump(scenario: &str, backend: &str, ruleset: Ruleset) -> BTreeSet<String> {
    let up = common::run(&["up", scenario, "--backend", backend]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    // The lab is synced when `up` returns, but upstream kube-proxy's IPv6
    // proxier (which writes an empty `ip6 kube-proxy` table) syncs on its
    // own time and once landed between the two reads. The reads are taken
    // again, a bounded number of times, until the ruleset holds still.
    let mut reads = 0;
    let (lines, raw) = loop {
        reads += 1;
        let printed = common::run(&["rules", "--run", &run]);
        let raw = rules::dump(&format!("svclab-{run}-node-0"), ruleset);
        assert!(printed.status.success(), "{}", common::text(&printed));
        let lines: BTreeSet<String> = String::from_utf8_lossy(&printed.stdout)
            .lines()
            .map(String::from)
            .collect();
        let raw = rules::normalise(ruleset, &raw.expect("dumping node-0's rules"));
        if lines == raw || reads == 5 {
            break (lines, raw);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
    assert_eq!(
        lines, raw,
        "svclab rules vs svclab::rules for {backend} ({reads} reads)"
    );
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

/// svclab's IPVS backend against kube-proxy's IPVS mode: the fixed
/// iptables rules, the ipsets and their entries, the ClusterIP virtual
/// servers and the kube-ipvs0 addresses are equal; only the NodePort
/// addresses differ.
const IPVS: &[Known] = &[Known {
    side: Upstream,
    matches: |l| {
        ["ipvs: -A -t 10.244.0.1:", "ipvs: -a -t 10.244.0.1:"]
            .iter()
            .filter_map(|p| l.strip_prefix(p))
            .filter_map(|rest| rest.split(' ').next()?.parse::<u16>().ok())
            .any(|port| port >= 30000)
    },
    why: "kube-proxy's default nodePortAddresses (unset: every local address) gives each \
          NodePort a virtual server on node-0's cni0 address (10.244.0.1) too; svclab's \
          backend serves NodePorts on the node's address only",
}];

/// IPVS needs a kernel with IP_VS: this host's if it has one, otherwise a
/// VM (`svclab vm`) booted from a stock Debian kernel. Each scenario comes
/// up there on `ipvs` and on `kube-proxy:ipvs` (`svclab rules --up`), the
/// rulesets (iptables, ipsets, virtual servers, kube-ipvs0) are written to
/// a folder shared with the VM, and compared here.
///
/// `SVCLAB_IPVS_RULES=DIR` compares the rulesets already in `DIR` instead:
/// ci/test's VM stage writes them there (`svclab run --rules-out`) from the
/// labs its checks run in, so kube-proxy's IPVS mode, which takes minutes
/// to sync under emulation, is brought up once, not twice.
#[test]
fn ipvs_programs_what_kube_proxy_ipvs_programs() {
    require_root!();
    if !common::have_kube_proxy() {
        return;
    }
    let backends = ["ipvs", "kube-proxy:ipvs"];
    let scenarios = ["scenarios/behaviours.yaml"];
    if let Some(dir) = std::env::var_os("SVCLAB_IPVS_RULES") {
        let dir = std::path::PathBuf::from(dir);
        compare_ipvs(
            &dir,
            &scenarios,
            backends,
            &format!("from {}", dir.display()),
        );
        return;
    }
    let in_vm = !std::path::Path::new("/proc/net/ip_vs").exists();
    if in_vm && std::env::var("SVCLAB_SKIP_VM").as_deref() == Ok("1") {
        eprintln!("SKIP ipvs rules equality: SVCLAB_SKIP_VM=1 and this kernel has no IP_VS");
        return;
    }
    if in_vm && svclab::vm::default_kernel().is_none() {
        common::skip("no kernel image for VM mode (ci/setup --vm installs one)");
        return;
    }
    let _lab = common::lab_lock();
    let dir = common::results_dir("rules-ipvs");
    let out = dir.join("rules");
    let mut args: Vec<String> = Vec::new();
    if in_vm {
        args.extend(["vm", "--results"].map(String::from));
        args.push(dir.to_string_lossy().into_owned());
        args.push("--".into());
    }
    args.push("rules".into());
    // Only behaviours (its Services include smoke's shapes): kube-proxy's
    // IPVS mode takes about five minutes to sync it under emulation.
    for s in scenarios {
        args.extend(["--up".to_string(), s.to_string()]);
    }
    args.extend(["--backend".to_string(), backends.join(",")]);
    args.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
    let ran = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ran.status.success(), "{}", common::text(&ran));
    compare_ipvs(&out, &scenarios, backends, &common::text(&ran));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compares `DIR/<scenario>/{ipvs,kube-proxy_ipvs}.rules`; `context` says
/// where they came from when one is missing or they differ.
fn compare_ipvs(out: &std::path::Path, scenarios: &[&str], backends: [&str; 2], context: &str) {
    let read = |stem: &str, backend: &str| -> BTreeSet<String> {
        let f = out
            .join(stem)
            .join(format!("{}.rules", backend.replace([':', '@'], "_")));
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}\n{context}", f.display()))
            .lines()
            .map(String::from)
            .collect()
    };
    for s in scenarios {
        let stem = std::path::Path::new(s)
            .file_stem()
            .unwrap()
            .to_string_lossy();
        let ours = read(&stem, backends[0]);
        let upstream = read(&stem, backends[1]);
        for (b, lines) in [(backends[0], &ours), (backends[1], &upstream)] {
            assert!(
                lines.iter().any(|l| l.starts_with("ipvs: -A ")),
                "{s} on {b}: no virtual servers: {lines:#?}"
            );
        }
        let bad = unexplained(&ours, &upstream, IPVS);
        assert!(
            bad.is_empty(),
            "{s}: ipvs vs kube-proxy:ipvs: {} unexplained difference(s):\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

/// `svclab run --rules-out` writes the ruleset `svclab rules` reads from
/// a lab of the same scenario (what the IPVS comparison relies on when
/// ci/test's VM stage writes it), and nothing for a backend without one.
#[test]
fn run_writes_the_ruleset_its_lab_programmed() {
    require_root!();
    let _lab = common::lab_lock();
    let dir = common::results_dir("rules-out");
    let out = dir.join("rules");
    let ran = common::run(&[
        "run",
        "scenarios/smoke.yaml",
        "--backend",
        "nftables,userspace",
        "--check",
        "^clusterip-tcp$",
        "--results",
        dir.to_str().unwrap(),
        "--rules-out",
        out.to_str().unwrap(),
    ]);
    assert!(ran.status.success(), "{}", common::text(&ran));
    let written: BTreeSet<String> = std::fs::read_to_string(out.join("smoke/nftables.rules"))
        .unwrap_or_else(|e| panic!("smoke/nftables.rules: {e}\n{}", common::text(&ran)))
        .lines()
        .map(String::from)
        .collect();
    let read = up_and_dump("scenarios/smoke.yaml", "nftables", Ruleset::Nftables);
    assert_eq!(written, read);
    let files: Vec<_> = std::fs::read_dir(out.join("smoke"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["nftables.rules"], "userspace programs no ruleset");
    let _ = std::fs::remove_dir_all(&dir);
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

#[test]
fn only_cni0_nodeports_are_explained_for_ipvs() {
    let ours = BTreeSet::new();
    let upstream: BTreeSet<String> = [
        "ipvs: -A -t 10.244.0.1:30080 -s rr",
        "ipvs: -a -t 10.244.0.1:30080 -r 10.244.0.3:8080 -m -w 1",
        "ipvs: -A -t 10.244.0.1:8080 -s rr",
        "ipvs: -A -t 10.96.0.10:30080 -s rr",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        unexplained(&ours, &upstream, IPVS),
        vec![
            "Upstream only: ipvs: -A -t 10.244.0.1:8080 -s rr".to_string(),
            "Upstream only: ipvs: -A -t 10.96.0.10:30080 -s rr".to_string(),
        ]
    );
}
