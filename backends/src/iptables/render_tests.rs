//! Pure tests of the renderer: faults, large cluster mode, and the partial
//! sync invariant (any sequence of partial syncs leaves the tables exactly
//! as a full sync of the final state would), checked through
//! [`Tables`], a model of iptables-restore.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::book::Book;
use super::fixtures::{ep, node, p80, state, synthetic};
use super::names::ServiceChains;
use super::render::{Config, Scope, render, render_full};
use super::restore_model::Tables;
use crate::model::{Endpoint, ProxyState, ServicePort, ServicePortName};
use crate::{BackendOptions, Fault};

fn three_endpoints() -> ProxyState {
    state(vec![(
        p80("ns1", "svc1", [172, 30, 0, 41]),
        vec![
            ep([10, 180, 0, 1], 80, false),
            ep([10, 180, 0, 2], 80, false),
            ep([10, 180, 0, 3], 80, false),
        ],
    )])
}

fn with_fault(f: Fault) -> BackendOptions {
    BackendOptions {
        faults: vec![f],
        ..BackendOptions::default()
    }
}

fn probabilities(text: &str) -> Vec<&str> {
    text.split("--probability ")
        .skip(1)
        .filter_map(|s| s.split(' ').next())
        .collect()
}

#[test]
fn probabilities_step_down_to_an_unconditional_last_rule() {
    let text = render_full(&three_endpoints(), &node(), &BackendOptions::default());
    assert_eq!(probabilities(&text), vec!["0.3333333333", "0.5000000000"]);
    let svc = ServiceChains::new(&ServicePortName::new(
        "ns1",
        "svc1",
        "p80",
        crate::model::Protocol::Tcp,
    ))
    .svc();
    let last = text
        .lines()
        .rfind(|l| l.starts_with(&format!("-A {svc} ")))
        .unwrap();
    assert!(!last.contains("statistic"), "{last}");
}

#[test]
fn fault_wrong_probability_uses_one_over_n_throughout() {
    let text = render_full(
        &three_endpoints(),
        &node(),
        &with_fault(Fault::WrongProbability),
    );
    assert_eq!(probabilities(&text), vec!["0.3333333333", "0.3333333333"]);
}

#[test]
fn fault_missing_masquerade_drops_only_the_masquerade_rule() {
    let good = render_full(&three_endpoints(), &node(), &BackendOptions::default());
    let bad = render_full(
        &three_endpoints(),
        &node(),
        &with_fault(Fault::MissingMasquerade),
    );
    assert!(good.contains("-j MASQUERADE"));
    assert!(!bad.contains("MASQUERADE"));
    assert_eq!(good.lines().count(), bad.lines().count() + 1);
}

#[test]
fn fault_no_reject_leaves_services_without_endpoints_unanswered() {
    let empty = state(vec![(p80("ns1", "svc1", [172, 30, 0, 41]), vec![])]);
    let good = render_full(&empty, &node(), &BackendOptions::default());
    let bad = render_full(&empty, &node(), &with_fault(Fault::NoReject));
    assert!(good.contains("has no endpoints\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT"));
    assert!(!bad.contains("REJECT"));
}

#[test]
fn large_cluster_mode_drops_endpoint_comments_only() {
    let small = render_full(&synthetic(10, 10), &node(), &BackendOptions::default());
    let large = render_full(&synthetic(101, 10), &node(), &BackendOptions::default());
    let sep_rules = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(sep_rules(&small).iter().all(|l| l.contains("--comment")));
    assert!(sep_rules(&large).iter().all(|l| !l.contains("--comment")));
    assert!(large.contains("-m comment --comment \"bench/svc-0:http cluster IP\""));
}

#[test]
fn partial_render_writes_only_changed_service_chains() {
    let config = Config::default();
    let node = node();
    let mut s = synthetic(20, 3);
    let mut book = Book::default();
    let full = render(&config, &s, &node, Scope::Full, &book);
    assert!(full.full);
    book.apply(full.update);

    let name = s.services.keys().nth(7).unwrap().clone();
    let removed = s.endpoints.get_mut(&name).unwrap().remove(0);
    let changed = BTreeSet::from([name.clone()]);
    let partial = render(&config, &s, &node, Scope::Partial(&changed), &book);
    assert!(!partial.full);
    let svc_chains: Vec<&str> = partial
        .text
        .lines()
        .filter(|l| l.starts_with(":KUBE-SVC-"))
        .collect();
    assert_eq!(
        svc_chains,
        vec![format!(":{} - [0:0]", ServiceChains::new(&name).svc())]
    );
    let gone = super::names::endpoint_chain(&name, &removed);
    assert!(partial.text.contains(&format!("\n-X {gone}\n")));
    assert_eq!(partial.deleted_chains, 1);
    // KUBE-SERVICES and the filter table read the same as before: left out.
    assert!(!partial.text.contains("KUBE-SERVICES"), "{}", partial.text);
    assert!(!partial.text.contains("*filter"));
    book.apply(partial.update);

    // A new service port without endpoints adds a REJECT: the filter
    // table is written, the nat top-level chains are not.
    let empty = p80("ns9", "empty", [172, 30, 9, 9]);
    let changed = BTreeSet::from([empty.name.clone()]);
    s.services.insert(empty.name.clone(), empty);
    let partial = render(&config, &s, &node, Scope::Partial(&changed), &book);
    assert!(partial.text.contains("\"ns9/empty:p80 has no endpoints\""));
    assert!(!partial.text.contains("*nat"), "{}", partial.text);
    book.apply(partial.update);

    // One with endpoints changes KUBE-SERVICES: it is written whole.
    let added = p80("ns9", "added", [172, 30, 9, 10]);
    let changed = BTreeSet::from([added.name.clone()]);
    set_endpoints(&mut s, &added.name, vec![ep([10, 190, 0, 1], 80, false)]);
    s.services.insert(added.name.clone(), added);
    let partial = render(&config, &s, &node, Scope::Partial(&changed), &book);
    let captured = partial
        .text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("cluster IP"))
        .count();
    assert_eq!(captured, 21);
    assert!(!partial.text.contains("*filter"));
}

#[test]
fn an_unchanged_change_writes_nothing() {
    let config = Config::default();
    let s = synthetic(3, 2);
    let mut book = Book::default();
    book.apply(render(&config, &s, &node(), Scope::Full, &book).update);
    let changed = BTreeSet::from([s.services.keys().next().unwrap().clone()]);
    let r = render(&config, &s, &node(), Scope::Partial(&changed), &book);
    assert_eq!(r.text, "");
    assert_eq!(r.lines, 0);
}

#[test]
fn a_full_sync_writes_everything_again() {
    let config = Config::default();
    let s = synthetic(3, 2);
    let mut book = Book::default();
    let first = render(&config, &s, &node(), Scope::Full, &book);
    book.apply(first.update);
    let again = render(&config, &s, &node(), Scope::Full, &book);
    assert_eq!(again.text, first.text);
}

#[test]
fn nft_transactions_keep_each_service_port_whole() {
    let config = Config {
        chains_per_transaction: Some(25),
        ..Config::default()
    };
    let s = synthetic(40, 4);
    let r = render(&config, &s, &node(), Scope::Full, &Book::default());
    let sections: Vec<&str> = r.text.split("*nat\n").skip(1).collect();
    assert!(sections.len() > 5, "{} transactions", sections.len());
    for (i, sec) in sections.iter().enumerate() {
        let chains = sec.lines().filter(|l| l.starts_with(':')).count();
        let last = i + 1 == sections.len();
        // 25 reached, plus at most one service port's 5 chains; the last
        // also holds KUBE-SERVICES and KUBE-NODEPORTS.
        assert!(chains <= 30 + if last { 2 } else { 0 }, "{chains}");
        let in_service_chains = |l: &&str| {
            l.starts_with("-A ")
                && !l.starts_with("-A KUBE-SERVICES ")
                && !l.starts_with("-A KUBE-NODEPORTS ")
        };
        for line in sec.lines().filter(in_service_chains) {
            let target = crate::kernel::iptables::saved::target(line).unwrap_or("");
            if target.starts_with("KUBE-S") && target != "KUBE-SERVICES" {
                assert!(
                    sec.contains(&format!(":{target} - [0:0]")),
                    "{target} jumped to outside its transaction"
                );
            }
        }
    }
    assert!(sections.last().unwrap().contains(":KUBE-SERVICES - [0:0]"));
    assert!(sections[0].contains(":KUBE-MARK-MASQ - [0:0]"));
}

#[test]
fn outcome_counts_match_the_text() {
    let config = Config::default();
    let s = synthetic(5, 4);
    let r = render(&config, &s, &node(), Scope::Full, &Book::default());
    assert_eq!(r.lines, r.text.lines().count() as u64);
    let rules = r.text.lines().filter(|l| l.starts_with("-A ")).count() as u64;
    let mut book = Book::default();
    book.apply(r.update);
    assert_eq!(book.rules(), rules);
}

/// One random change to `s`; returns the service port it touched.
fn mutate(rng: &mut StdRng, s: &mut ProxyState, next_id: &mut u32) -> ServicePortName {
    let names: Vec<ServicePortName> = s.services.keys().cloned().collect();
    let pick = |rng: &mut StdRng| names[rng.random_range(0..names.len())].clone();
    let fresh_ep = |rng: &mut StdRng, id: &mut u32| -> Endpoint {
        *id += 1;
        let mut e = ep(
            [10, 200, (*id >> 8) as u8, *id as u8],
            80,
            rng.random_bool(0.5),
        );
        e.ready = rng.random_bool(0.8);
        e.terminating = !e.ready && rng.random_bool(0.5);
        e.serving = e.ready || e.terminating;
        e
    };
    match rng.random_range(0..9) {
        0 => {
            *next_id += 1;
            let id = *next_id;
            let svc = p80(
                "ns",
                &format!("new-{id}"),
                [172, 31, (id >> 8) as u8, id as u8],
            );
            let name = svc.name.clone();
            s.services.insert(name.clone(), svc);
            let eps = (0..rng.random_range(0..4))
                .map(|_| fresh_ep(rng, next_id))
                .collect::<Vec<_>>();
            set_endpoints(s, &name, eps);
            name
        }
        1 if names.len() > 1 => {
            let name = pick(rng);
            s.services.remove(&name);
            s.endpoints.remove(&name);
            name
        }
        2 | 3 => {
            let name = pick(rng);
            let mut eps = s.endpoints_of(&name).to_vec();
            eps.push(fresh_ep(rng, next_id));
            set_endpoints(s, &name, eps);
            name
        }
        4 => {
            let name = pick(rng);
            let mut eps = s.endpoints_of(&name).to_vec();
            if !eps.is_empty() {
                eps.remove(rng.random_range(0..eps.len()));
            }
            set_endpoints(s, &name, eps);
            name
        }
        _ => {
            let name = pick(rng);
            let svc: &mut ServicePort = s.services.get_mut(&name).unwrap();
            match rng.random_range(0..5) {
                0 => svc.internal_policy_local = !svc.internal_policy_local,
                1 => svc.external_policy_local = !svc.external_policy_local,
                2 => {
                    svc.node_port = match svc.node_port {
                        Some(_) => None,
                        None => Some(30000 + rng.random_range(0..2000)),
                    };
                    svc.health_check_node_port = svc.node_port.map(|p| p + 2000);
                }
                3 => {
                    svc.session_affinity_seconds = match svc.session_affinity_seconds {
                        Some(_) => None,
                        None => Some(rng.random_range(1..10800)),
                    }
                }
                _ => {
                    svc.external_ips = if svc.external_ips.is_empty() {
                        vec!["192.168.99.1".parse().unwrap()]
                    } else {
                        vec![]
                    }
                }
            }
            name
        }
    }
}

fn set_endpoints(s: &mut ProxyState, name: &ServicePortName, mut eps: Vec<Endpoint>) {
    eps.sort();
    if eps.is_empty() {
        s.endpoints.remove(name);
    } else {
        s.endpoints.insert(name.clone(), eps);
    }
}

fn full_tables(config: &Config, s: &ProxyState) -> Tables {
    // The reference is one transaction, however `config` splits them.
    let one = Config {
        chains_per_transaction: None,
        ..*config
    };
    let r = render(&one, s, &node(), Scope::Full, &Book::default());
    let mut t = Tables::default();
    t.restore(&r.text).unwrap();
    t
}

#[test]
fn partial_syncs_end_where_a_full_sync_does() {
    let node = node();
    for seed in 0..20u64 {
        let config = Config {
            chains_per_transaction: (seed % 2 == 1).then_some(6),
            ..Config::default()
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = synthetic(8, 2);
        let mut next_id = 0;
        let mut book = Book::default();
        let mut kernel = Tables::default();
        let first = render(&config, &s, &node, Scope::Full, &book);
        kernel.restore(&first.text).unwrap();
        book.apply(first.update);
        for step in 0..60 {
            let changed: BTreeSet<ServicePortName> = (0..rng.random_range(1..4))
                .map(|_| mutate(&mut rng, &mut s, &mut next_id))
                .collect();
            let r = render(&config, &s, &node, Scope::Partial(&changed), &book);
            kernel
                .restore(&r.text)
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}\n{}", r.text));
            book.apply(r.update);
            assert_eq!(
                kernel,
                full_tables(&config, &s),
                "seed {seed} step {step}: partial syncs diverged from a full sync"
            );
        }
    }
}

#[test]
fn crossing_the_large_cluster_threshold_rewrites_everything() {
    let config = Config::default();
    let node = node();
    let mut s = synthetic(100, 10);
    let mut book = Book::default();
    let mut kernel = Tables::default();
    let r = render(&config, &s, &node, Scope::Full, &book);
    kernel.restore(&r.text).unwrap();
    book.apply(r.update);

    let name = s.services.keys().next().unwrap().clone();
    let mut eps = s.endpoints_of(&name).to_vec();
    eps.push(ep([10, 250, 0, 1], 80, false));
    set_endpoints(&mut s, &name, eps);
    let changed = BTreeSet::from([name]);
    let r = render(&config, &s, &node, Scope::Partial(&changed), &book);
    assert!(r.full, "1001 endpoints: large cluster mode starts");
    kernel.restore(&r.text).unwrap();
    book.apply(r.update);
    assert_eq!(kernel, full_tables(&config, &s));
}

#[test]
fn full_sync_deletes_orphans_of_an_earlier_run() {
    let config = Config::default();
    let node = node();
    let old = synthetic(3, 2);
    let mut kernel = Tables::default();
    kernel
        .restore(&render(&config, &old, &node, Scope::Full, &Book::default()).text)
        .unwrap();
    let mut book = Book::default();
    book.set_orphans(
        kernel
            .chains("nat")
            .into_iter()
            .filter_map(super::names::Chain::parse)
            .collect(),
    );
    let new = three_endpoints();
    let r = render(&config, &new, &node, Scope::Full, &book);
    kernel.restore(&r.text).unwrap();
    assert_eq!(kernel, full_tables(&config, &new));
}
