//! Golden rulesets: the full restore input for small states, compared with
//! files under `golden/` that were checked line by line against
//! kube-proxy's semantics and its proxier_test.go goldens. Set
//! `SVCLAB_BLESS=1` to rewrite the files after an intended change (then
//! review the diff).

use std::path::PathBuf;

use super::fixtures::{ep, node, p80, port, state};
use super::render_full;
use crate::BackendOptions;
use crate::model::{NodeContext, Protocol, ProxyState};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/iptables/golden")
        .join(format!("{name}.iptables"))
}

fn check_golden(name: &str, got: &str) {
    let path = golden_path(name);
    if std::env::var_os("SVCLAB_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SVCLAB_BLESS=1 to create)",
            path.display()
        )
    });
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{name}: rendered ruleset differs from {} at line {}\n got: {:?}\nwant: {:?}\n\
             --- full output ---\n{got}",
            path.display(),
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first),
        );
    }
}

struct Case {
    name: &'static str,
    state: ProxyState,
}

fn cases() -> Vec<Case> {
    let vip = [172, 30, 0, 41];
    vec![
        Case {
            name: "clusterip-no-endpoints",
            state: state(vec![(p80("ns1", "svc1", vip), vec![])]),
        },
        Case {
            name: "clusterip-one-endpoint",
            state: state(vec![(
                p80("ns1", "svc1", vip),
                vec![ep([10, 180, 0, 1], 80, false)],
            )]),
        },
        Case {
            name: "clusterip-three-endpoints",
            state: state(vec![(
                p80("ns1", "svc1", vip),
                vec![
                    ep([10, 180, 0, 1], 80, false),
                    ep([10, 180, 0, 2], 80, true),
                    ep([10, 180, 0, 3], 80, false),
                ],
            )]),
        },
        Case {
            name: "nodeport",
            state: state(vec![(
                {
                    let mut s = p80("ns3", "svc3", [172, 30, 0, 43]);
                    s.node_port = Some(3003);
                    s
                },
                vec![ep([10, 180, 0, 3], 80, false)],
            )]),
        },
        Case {
            name: "multiport",
            state: state(vec![
                (
                    port("ns1", "web", "http", Protocol::Tcp, [172, 30, 0, 50], 80),
                    vec![
                        ep([10, 180, 0, 1], 8080, false),
                        ep([10, 180, 0, 2], 8080, true),
                    ],
                ),
                (
                    port("ns1", "web", "dns", Protocol::Udp, [172, 30, 0, 50], 53),
                    vec![
                        ep([10, 180, 0, 1], 5353, false),
                        ep([10, 180, 0, 2], 5353, true),
                    ],
                ),
            ]),
        },
        Case {
            name: "affinity-clientip",
            state: state(vec![(
                {
                    let mut s = p80("ns5", "svc5", [172, 30, 0, 45]);
                    s.session_affinity_seconds = Some(10800);
                    s
                },
                vec![
                    ep([10, 180, 0, 3], 80, false),
                    ep([10, 180, 0, 4], 80, false),
                ],
            )]),
        },
        Case {
            name: "internal-policy-local",
            state: state(vec![
                (
                    {
                        let mut s = p80("ns1", "local", [172, 30, 0, 41]);
                        s.internal_policy_local = true;
                        s
                    },
                    vec![
                        ep([10, 180, 0, 1], 80, true),
                        ep([10, 180, 0, 2], 80, false),
                    ],
                ),
                (
                    {
                        let mut s = p80("ns1", "remote-only", [172, 30, 0, 42]);
                        s.internal_policy_local = true;
                        s
                    },
                    vec![ep([10, 180, 1, 1], 80, false)],
                ),
            ]),
        },
        Case {
            name: "external-policy-local",
            state: state(vec![
                (
                    {
                        let mut s = p80("ns2", "svc2", [172, 30, 0, 42]);
                        s.node_port = Some(3001);
                        s.external_policy_local = true;
                        s.health_check_node_port = Some(30000);
                        s.external_ips = vec!["192.168.99.22".parse().unwrap()];
                        s
                    },
                    vec![
                        ep([10, 180, 0, 2], 80, true),
                        ep([10, 180, 2, 2], 80, false),
                    ],
                ),
                (
                    {
                        let mut s = p80("ns2", "no-local", [172, 30, 0, 44]);
                        s.node_port = Some(3004);
                        s.external_policy_local = true;
                        s.health_check_node_port = Some(30001);
                        s
                    },
                    vec![ep([10, 180, 2, 4], 80, false)],
                ),
            ]),
        },
        Case {
            name: "hairpin",
            state: state(vec![(
                p80("ns1", "svc1", vip),
                vec![ep([10, 180, 0, 1], 80, true)],
            )]),
        },
        Case {
            name: "kube-proxy-overall",
            state: kube_proxy_overall(),
        },
    ]
}

/// kube-proxy's TestOverallIPTablesRules, without what the model has no
/// field for (LoadBalancer IPs and source ranges).
fn kube_proxy_overall() -> ProxyState {
    let svc1 = p80("ns1", "svc1", [172, 30, 0, 41]);
    let mut svc2 = p80("ns2", "svc2", [172, 30, 0, 42]);
    svc2.node_port = Some(3001);
    svc2.external_policy_local = true;
    svc2.external_ips = vec!["192.168.99.22".parse().unwrap()];
    svc2.health_check_node_port = Some(30000);
    let mut svc3 = p80("ns3", "svc3", [172, 30, 0, 43]);
    svc3.node_port = Some(3003);
    let mut svc4 = p80("ns4", "svc4", [172, 30, 0, 44]);
    svc4.external_ips = vec!["192.168.99.33".parse().unwrap()];
    let mut svc5 = p80("ns5", "svc5", [172, 30, 0, 45]);
    svc5.node_port = Some(3002);
    svc5.session_affinity_seconds = Some(10800);
    let svc6 = p80("ns6", "svc6", [172, 30, 0, 46]);
    state(vec![
        (svc1, vec![ep([10, 180, 0, 1], 80, false)]),
        (svc2, vec![ep([10, 180, 0, 2], 80, false)]),
        (svc3, vec![ep([10, 180, 0, 3], 80, false)]),
        (
            svc4,
            vec![
                ep([10, 180, 0, 4], 80, false),
                ep([10, 180, 0, 5], 80, true),
            ],
        ),
        (svc5, vec![ep([10, 180, 0, 3], 80, false)]),
        (svc6, vec![]),
    ])
}

#[test]
fn golden_rulesets() {
    let node = node();
    for c in cases() {
        let got = render_full(&c.state, &node, &BackendOptions::default());
        check_golden(c.name, &got);
    }
}

/// The IPv6 proxier's ruleset for kube-proxy's overall test, every
/// address its IPv6 twin (`testkit::ipv6_state`): what ip6tables-restore
/// is fed. The same chains and names; `[ip]:port` DNAT targets.
#[test]
fn golden_ipv6_ruleset() {
    use crate::testkit::{ipv6_node, ipv6_state};
    let got = render_full(
        &ipv6_state(&kube_proxy_overall()),
        &ipv6_node(&node()),
        &BackendOptions::default(),
    );
    check_golden("kube-proxy-overall-ipv6", &got);
    assert!(!got.contains("127.0.0"), "no IPv4 loopback in IPv6 rules");
    assert!(
        got.contains("-j DNAT --to-destination [fd00::10:180:0:1]:80"),
        "{got}"
    );
}

/// Lines of kube-proxy's own TestOverallIPTablesRules golden that do not
/// involve LoadBalancer IPs, localhost NodePorts or nfacct (which this lab
/// does not configure) appear verbatim in ours.
#[test]
fn kube_proxy_golden_lines_appear_verbatim() {
    let got = render_full(&kube_proxy_overall(), &node(), &BackendOptions::default());
    let lines: std::collections::HashSet<&str> = got.lines().collect();
    let kube_proxy = r#"
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
"#;
    let missing: Vec<&str> = kube_proxy
        .lines()
        .filter(|l| !l.is_empty() && !lines.contains(l))
        .collect();
    assert!(
        missing.is_empty(),
        "kube-proxy lines missing:\n{}",
        missing.join("\n")
    );
    // The only lines of ours kube-proxy's golden words differently: the
    // MASQUERADE (kube-proxy's fake iptables lacks --random-fully) and the
    // NodePort jump (nodePortAddresses is the node IP here, not all).
    assert!(lines.contains(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    ));
    assert!(lines.contains(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -d 192.168.0.2 -j KUBE-NODEPORTS"
    ));
}

/// With nodePortAddresses covering 127.0.0.1, the loopback jump and
/// kube-proxy's route_localnet guard, the guard as kube-proxy's own
/// golden (TestOverallIPTablesRules) writes it; without, neither.
#[test]
fn localhost_nodeports_add_the_loopback_jump_and_the_guard() {
    let guard = "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
                 -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate \
                 RELATED,ESTABLISHED,DNAT -j DROP";
    let jump = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: \
                this must be the last rule in this chain\" -d 127.0.0.1/32 -j KUBE-NODEPORTS";
    let on = NodeContext {
        localhost_node_ports: true,
        ..node()
    };
    for (node, served) in [(node(), false), (on, true)] {
        let got = render_full(&kube_proxy_overall(), &node, &BackendOptions::default());
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.contains(&guard), served, "guard:\n{got}");
        assert_eq!(lines.contains(&jump), served, "loopback jump:\n{got}");
        // The chain is the backend's either way (flushed with the table).
        assert!(lines.contains(&":KUBE-FIREWALL - [0:0]"), "{got}");
    }
}
