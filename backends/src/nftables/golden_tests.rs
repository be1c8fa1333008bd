//! Golden rulesets: the exact `nft -f` input for one Service shape each, in
//! `golden/<case>.nft`. `SVCLAB_BLESS=1 cargo test -p svclab-backends
//! nftables::golden` rewrites them after a deliberate change; review the diff.

use std::path::PathBuf;

use crate::model::{Protocol, ProxyState};
use crate::nftables::fixtures::{changes, ep, insert, node, port, tcp};
use crate::nftables::{Existing, Programmed, render_full, render_partial};
use crate::{BackendOptions, Fault, NftablesLayout};

fn golden_path(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/nftables/golden")
        .join(format!("{case}.nft"))
}

fn check_golden(case: &str, got: &str) {
    let path = golden_path(case);
    if std::env::var_os("SVCLAB_BLESS").is_some() {
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (run with SVCLAB_BLESS=1 to create it)",
            path.display()
        )
    });
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (w, g))| w != g)
            .take(5)
            .map(|(i, (w, g))| format!("line {}:\n  want: {w}\n  got:  {g}", i + 1))
            .collect();
        panic!(
            "{case}: rendered ruleset differs from {} ({} vs {} lines)\n{}",
            path.display(),
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}

fn opts(faults: &[Fault]) -> BackendOptions {
    BackendOptions {
        faults: faults.to_vec(),
        ..BackendOptions::default()
    }
}

fn eps3() -> Vec<crate::model::Endpoint> {
    vec![
        ep([10, 180, 0, 1], 8080, true),
        ep([10, 180, 1, 1], 8080, false),
        ep([10, 180, 2, 1], 8080, false),
    ]
}

struct Case {
    name: &'static str,
    state: ProxyState,
    faults: Vec<Fault>,
}

fn cases() -> Vec<Case> {
    let one = |svc, eps| {
        let mut s = ProxyState::default();
        insert(&mut s, svc, eps);
        s
    };
    let nodeport = || {
        let mut s = tcp("ns1", "svc1", [172, 30, 0, 41]);
        s.node_port = Some(30080);
        s
    };
    let mut cases = vec![
        Case {
            name: "clusterip-0-endpoints",
            state: one(tcp("ns1", "svc1", [172, 30, 0, 41]), vec![]),
            faults: vec![],
        },
        Case {
            name: "clusterip-1-endpoint",
            state: one(
                tcp("ns1", "svc1", [172, 30, 0, 41]),
                vec![ep([10, 180, 0, 1], 80, false)],
            ),
            faults: vec![],
        },
        Case {
            name: "clusterip-3-endpoints",
            state: one(tcp("ns1", "svc1", [172, 30, 0, 41]), eps3()),
            faults: vec![],
        },
        Case {
            name: "nodeport",
            state: one(nodeport(), eps3()),
            faults: vec![],
        },
        Case {
            name: "nodeport-0-endpoints",
            state: one(nodeport(), vec![]),
            faults: vec![],
        },
        Case {
            name: "affinity-clientip",
            state: one(
                {
                    let mut s = tcp("ns1", "svc1", [172, 30, 0, 41]);
                    s.session_affinity_seconds = Some(10800);
                    s
                },
                eps3(),
            ),
            faults: vec![],
        },
        Case {
            name: "itp-local",
            state: one(
                {
                    let mut s = tcp("ns1", "svc1", [172, 30, 0, 41]);
                    s.internal_policy_local = true;
                    s
                },
                eps3(),
            ),
            faults: vec![],
        },
        Case {
            name: "itp-local-no-local-endpoints",
            state: one(
                {
                    let mut s = tcp("ns1", "svc1", [172, 30, 0, 41]);
                    s.internal_policy_local = true;
                    s
                },
                vec![ep([10, 180, 1, 1], 8080, false)],
            ),
            faults: vec![],
        },
        Case {
            name: "etp-local",
            state: one(
                {
                    let mut s = nodeport();
                    s.external_policy_local = true;
                    s.health_check_node_port = Some(30000);
                    s.external_ips = vec!["192.168.99.22".parse().unwrap()];
                    s
                },
                eps3(),
            ),
            faults: vec![],
        },
        Case {
            name: "etp-local-no-local-endpoints",
            state: one(
                {
                    let mut s = nodeport();
                    s.external_policy_local = true;
                    s
                },
                vec![ep([10, 180, 1, 1], 8080, false)],
            ),
            faults: vec![],
        },
        Case {
            name: "itp-and-etp-local",
            // External traffic from pods and the node short-circuits to the
            // cluster chain, so it exists even though ClusterIP traffic
            // uses only local endpoints.
            state: one(
                {
                    let mut s = nodeport();
                    s.internal_policy_local = true;
                    s.external_policy_local = true;
                    s
                },
                eps3(),
            ),
            faults: vec![],
        },
        Case {
            name: "hairpin",
            // One endpoint on this node: its chain masquerades traffic the
            // endpoint sends to its own Service.
            state: one(
                tcp("ns1", "svc1", [172, 30, 0, 41]),
                vec![ep([10, 0, 0, 5], 8080, true)],
            ),
            faults: vec![],
        },
    ];

    let mut multi = ProxyState::default();
    let mk = |pn: &str, proto, p, tp| {
        (
            port("ns2", "svc2", pn, proto, [172, 30, 0, 42], p),
            vec![
                ep([10, 180, 0, 1], tp, true),
                ep([10, 180, 2, 1], tp, false),
            ],
        )
    };
    for (svc, eps) in [
        mk("http", Protocol::Tcp, 80, 80),
        mk("https", Protocol::Tcp, 443, 8443),
        mk("dns-udp", Protocol::Udp, 53, 53),
        mk("dns-tcp", Protocol::Tcp, 53, 5353),
    ] {
        insert(&mut multi, svc, eps);
    }
    cases.push(Case {
        name: "multiport",
        state: multi,
        faults: vec![],
    });

    for (name, fault) in [
        ("fault-missing-masquerade", Fault::MissingMasquerade),
        ("fault-wrong-probability", Fault::WrongProbability),
        ("fault-no-reject", Fault::NoReject),
    ] {
        cases.push(Case {
            name,
            state: one(tcp("ns1", "svc1", [172, 30, 0, 41]), eps3()),
            faults: vec![fault],
        });
    }
    cases
}

#[test]
fn golden_full_rulesets() {
    for c in cases() {
        check_golden(c.name, &render_full(&c.state, &node(), &opts(&c.faults)));
    }
}

/// The IPv6 proxier's `ip6 kube-proxy` table for every case above at
/// once, every address its IPv6 twin (`testkit::ipv6_state`).
#[test]
fn golden_ipv6_ruleset() {
    use crate::testkit::{ipv6_node, ipv6_state};
    let mut all = ProxyState::default();
    for c in cases().into_iter().filter(|c| c.faults.is_empty()) {
        all.services.extend(c.state.services);
        all.endpoints.extend(c.state.endpoints);
    }
    let got = render_full(&ipv6_state(&all), &ipv6_node(&node()), &opts(&[]));
    check_golden("all-cases-ipv6", &got);
    for line in got.lines() {
        assert!(
            !line.contains(" ip kube-proxy") && !line.contains("ipv4_addr"),
            "an IPv4 object in the IPv6 table: {line}"
        );
    }
}

/// The flat layout differs only in how a service chain picks an endpoint:
/// the cases where it picks one of several, in `golden/flat-<case>.nft`.
#[test]
fn golden_flat_rulesets() {
    let flat = ["clusterip-3-endpoints", "affinity-clientip", "multiport"];
    for c in cases().into_iter().filter(|c| flat.contains(&c.name)) {
        let o = BackendOptions {
            nftables_layout: NftablesLayout::Flat,
            ..opts(&c.faults)
        };
        check_golden(
            &format!("flat-{}", c.name),
            &render_full(&c.state, &node(), &o),
        );
    }
}

/// The flat layout writes no set or map per Service (the kernel's cost
/// that grows with their number) and gives every endpoint 1/n: endpoint i
/// is taken when `numgen random mod k_i` is 0 and none before it was.
#[test]
fn flat_layout_has_no_per_service_sets_and_picks_uniformly() {
    let o = BackendOptions {
        nftables_layout: NftablesLayout::Flat,
        ..opts(&[])
    };
    for n in 1..=7 {
        let eps: Vec<_> = (0..n)
            .map(|i| ep([10, 180, i as u8, 1], 8080, i == 0))
            .collect();
        for affinity in [None, Some(60)] {
            let mut svc = tcp("ns1", "svc1", [172, 30, 0, 41]);
            svc.session_affinity_seconds = affinity;
            let mut state = ProxyState::default();
            insert(&mut state, svc, eps.clone());
            let text = render_full(&state, &node(), &o);
            let chain = "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ";
            let picks: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix(chain))
                .filter(|r| !r.starts_with("ip saddr @"))
                .collect();
            assert_eq!(picks.len(), n, "{text}");
            assert!(
                picks.iter().all(|r| !r.contains('{')),
                "an anonymous set in {picks:?}"
            );
            // The chance that each rule is reached and taken.
            let mut reach = 1.0_f64;
            for (i, rule) in picks.iter().enumerate() {
                let take = match rule.split("numgen random mod ").nth(1) {
                    Some(rest) => {
                        let k: f64 = rest.split(' ').next().unwrap().parse().unwrap();
                        assert!(rest.contains(" == 0 "), "{rule}");
                        1.0 / k
                    }
                    None => 1.0,
                };
                let p = reach * take;
                assert!(
                    (p - 1.0 / n as f64).abs() < 1e-12,
                    "n={n} affinity={affinity:?}: endpoint {i} gets {p}: {picks:?}"
                );
                reach -= p;
            }
            assert!(reach.abs() < 1e-12, "n={n}: {reach} left unpicked");
        }
    }
}

/// One Service gains an endpoint, another loses its last one, a third is
/// deleted: the partial transaction touches exactly those.
#[test]
fn golden_partial_transaction() {
    let mut before = ProxyState::default();
    insert(
        &mut before,
        tcp("ns1", "grows", [172, 30, 0, 41]),
        vec![ep([10, 180, 0, 1], 80, false)],
    );
    insert(
        &mut before,
        tcp("ns1", "empties", [172, 30, 0, 42]),
        vec![ep([10, 180, 0, 2], 80, false)],
    );
    insert(
        &mut before,
        tcp("ns1", "deleted", [172, 30, 0, 43]),
        vec![ep([10, 180, 0, 3], 80, false)],
    );
    insert(
        &mut before,
        tcp("ns1", "untouched", [172, 30, 0, 44]),
        vec![ep([10, 180, 0, 4], 80, false)],
    );
    let mut after = before.clone();
    insert(
        &mut after,
        tcp("ns1", "grows", [172, 30, 0, 41]),
        vec![
            ep([10, 180, 0, 1], 80, false),
            ep([10, 180, 1, 1], 80, false),
        ],
    );
    insert(&mut after, tcp("ns1", "empties", [172, 30, 0, 42]), vec![]);
    let gone = tcp("ns1", "deleted", [172, 30, 0, 43]).name;
    after.services.remove(&gone);
    after.endpoints.remove(&gone);

    let o = opts(&[]);
    let mut programmed = Programmed::default();
    programmed.apply(programmed.plan_full(&before, &node(), &o, &Existing::default()));
    let text = render_partial(&programmed, &after, &changes(&before, &after), &node(), &o);
    assert!(!text.contains("untouched"), "{text}");
    check_golden("partial-mixed", &text);
}

/// A partial sync with nothing changed writes nothing.
#[test]
fn empty_change_set_writes_nothing() {
    let state = crate::nftables::fixtures::synthetic(20, 3);
    let o = opts(&[]);
    let mut programmed = Programmed::default();
    programmed.apply(programmed.plan_full(&state, &node(), &o, &Existing::default()));
    let plan = programmed.plan_partial(&state, &changes(&state, &state), &node(), &o);
    assert_eq!(plan.lines, 0);
    assert!(plan.text.is_empty());
}

/// Bookkeeping after full + partial equals a fresh full plan's, and the
/// counts add up to the rendered rules.
#[test]
fn partial_bookkeeping_matches_full() {
    let before = crate::nftables::fixtures::synthetic(30, 4);
    let mut after = before.clone();
    let names: Vec<_> = after.services.keys().cloned().collect();
    after.endpoints.get_mut(&names[0]).unwrap().pop();
    after.services.remove(&names[1]);
    after.endpoints.remove(&names[1]);
    after.endpoints.remove(&names[2]);
    let mut extra = tcp("ns9", "new", [172, 30, 200, 1]);
    extra.session_affinity_seconds = Some(60);
    insert(&mut after, extra, vec![ep([10, 99, 0, 1], 80, true)]);

    let o = opts(&[]);
    let mut incremental = Programmed::default();
    incremental.apply(incremental.plan_full(&before, &node(), &o, &Existing::default()));
    incremental.apply(incremental.plan_partial(&after, &changes(&before, &after), &node(), &o));
    let mut fresh = Programmed::default();
    let full = fresh.plan_full(&after, &node(), &o, &Existing::default());
    let rendered_rules = full
        .text
        .lines()
        .filter(|l| l.starts_with("add rule "))
        .count();
    fresh.apply(full);
    assert_eq!(incremental.counts(), fresh.counts());
    assert_eq!(fresh.counts().rules, rendered_rules as u64);
}

/// A full resync keeps endpoint chains that exist with the right affinity
/// (their rules follow from the name) and rewrites everything else.
#[test]
fn full_resync_keeps_existing_endpoint_chains() {
    let mut state = ProxyState::default();
    insert(&mut state, tcp("ns1", "svc1", [172, 30, 0, 41]), eps3());
    let o = opts(&[]);
    let mut programmed = Programmed::default();
    programmed.apply(programmed.plan_full(&state, &node(), &o, &Existing::default()));

    let resync = programmed.plan_full(&state, &node(), &o, &programmed.existing());
    assert!(
        !resync.text.contains("chain ip kube-proxy endpoint-"),
        "{}",
        resync.text
    );
    assert!(
        resync
            .text
            .contains("add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80")
    );
    assert!(!resync.text.contains("delete "), "{}", resync.text);

    // Turning affinity on changes what the endpoint chains must hold.
    let mut sticky = state.clone();
    sticky
        .services
        .values_mut()
        .next()
        .unwrap()
        .session_affinity_seconds = Some(30);
    let plan = programmed.plan_full(&sticky, &node(), &o, &programmed.existing());
    let rewritten = plan
        .text
        .lines()
        .filter(|l| l.starts_with("add chain ip kube-proxy endpoint-"))
        .count();
    assert_eq!(rewritten, 3, "{}", plan.text);

    // Whatever exists but is not wanted goes, known to the bookkeeping or not.
    let mut existing = programmed.existing();
    existing
        .chains
        .insert("service-AAAAAAAA-gone/svc/tcp/p".into());
    existing
        .sets
        .insert("affinity-AAAAAAAA-gone/svc/tcp/p__10.0.0.9/80".into());
    let plan = programmed.plan_full(&state, &node(), &o, &existing);
    assert!(
        plan.text
            .contains("delete chain ip kube-proxy service-AAAAAAAA-gone/svc/tcp/p\n")
    );
    assert!(
        plan.text
            .contains("delete set ip kube-proxy affinity-AAAAAAAA-gone/svc/tcp/p__10.0.0.9/80\n")
    );
}
