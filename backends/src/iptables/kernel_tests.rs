//! Kernel tests, for both flavors, each in a fresh private network
//! namespace: the kernel accepts setup and syncs, what it reads back is
//! what was meant, partial syncs end where a full sync does, and cleanup
//! leaves nothing behind.

use std::collections::BTreeSet;

use super::backend::IptablesBackend;
use super::fixtures::{ep, mixed, node, p80};
use super::hooks::{self, JUMPS};
use super::names::{ServiceChains, endpoint_chain};
use crate::kernel::iptables::{self, Flavor};
use crate::model::{ChangeSet, Endpoint, ProxyState, ServicePortName};
use crate::protocol::SyncMode;
use crate::testkit::in_new_netns;
use crate::{Backend, BackendOptions, SyncOutcome, SyncRequest, require_netns};

/// Runs `check` for each flavor the host supports, each in its own fresh
/// namespace; a flavor the kernel lacks is skipped with its reason.
fn for_each_flavor(check: fn(Flavor)) {
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        if let Err(why) = super::probe::capability(flavor) {
            eprintln!("SKIP {flavor:?}: {why}");
            continue;
        }
        in_new_netns(|| check(flavor));
    }
}

/// Both tables as iptables-save prints them, without the timestamped
/// comment lines and with counters zeroed.
fn saved(flavor: Flavor) -> String {
    let mut out = String::new();
    for table in ["filter", "nat"] {
        for line in iptables::save(flavor, table).unwrap().lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with(':') {
                let mut words: Vec<&str> = line.split(' ').collect();
                words.truncate(2);
                out.push_str(&format!("{} [0:0]\n", words.join(" ")));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn sync(
    b: &mut IptablesBackend,
    mode: SyncMode,
    seq: u64,
    state: &ProxyState,
    changes: &ChangeSet,
) -> SyncOutcome {
    let node = node();
    b.sync(&SyncRequest {
        mode,
        seq,
        state,
        changes,
        node: &node,
    })
    .unwrap_or_else(|e| panic!("sync {seq} ({mode}): {e}"))
}

fn full_changes(state: &ProxyState) -> ChangeSet {
    ChangeSet {
        changed: state.services.keys().cloned().collect(),
        ..ChangeSet::default()
    }
}

/// What a fresh namespace holds after setup and one full sync of `state`.
fn fresh_full(flavor: Flavor, state: &ProxyState) -> String {
    in_new_netns(|| {
        let mut b = IptablesBackend::new(flavor, &BackendOptions::default());
        b.setup(&node()).unwrap();
        sync(&mut b, SyncMode::Full, 1, state, &full_changes(state));
        saved(flavor)
    })
}

/// What a fresh namespace holds after the hooks and `state` restored as
/// one transaction per table.
fn one_transaction(flavor: Flavor, state: &ProxyState) -> String {
    in_new_netns(|| {
        hooks::ensure(flavor).unwrap();
        let text = super::render::render_full(state, &node(), &BackendOptions::default());
        iptables::restore(flavor, &text).unwrap();
        saved(flavor)
    })
}

fn name(ns: &str, svc: &str) -> ServicePortName {
    ServicePortName::new(ns, svc, "p80", crate::model::Protocol::Tcp)
}

#[test]
fn setup_and_full_sync_are_accepted_and_read_back() {
    require_netns!();
    for_each_flavor(|flavor| {
        let tmp = tempfile::tempdir().unwrap();
        let dump = tmp.path().join("dump");
        let options = BackendOptions {
            dump_dir: Some(dump.clone()),
            ..BackendOptions::default()
        };
        let state = mixed();
        let mut b = IptablesBackend::new(flavor, &options);
        b.setup(&node()).unwrap();
        let out = sync(&mut b, SyncMode::Full, 1, &state, &full_changes(&state));
        let text = saved(flavor);

        assert!(text.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        let three = ServiceChains::new(&name("ns1", "three")).svc();
        let etp = ServiceChains::new(&name("ns2", "etp-local"));
        let sep = endpoint_chain(&name("ns1", "three"), &ep([10, 180, 0, 1], 80, false));
        for chain in [three, etp.ext(), etp.svl(), etp.svc(), sep] {
            assert!(
                text.contains(&format!(":{chain} - [0:0]")),
                "{flavor:?}: no {chain}"
            );
        }
        assert!(
            text.contains("\"ns6/empty:p80 has no endpoints\""),
            "{text}"
        );

        // The kernel keeps probabilities as 32-bit fixed point; they read
        // back with 11 decimals within 1e-9 of 1/3 and 1/2.
        let probs: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {three} ")))
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|p| p.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(probs.len(), 2, "{flavor:?}: {text}");
        assert!((probs[0] - 1.0 / 3.0).abs() < 1e-9, "{probs:?}");
        assert!((probs[1] - 0.5).abs() < 1e-9, "{probs:?}");

        // The book's rule count is what the kernel holds in our chains.
        let ours = text.lines().filter(|l| l.starts_with("-A KUBE-")).count() as u64;
        assert_eq!(out.rules, ours, "{flavor:?}");
        assert_eq!(b.stats().unwrap().rules, ours);

        let dumped = std::fs::read_to_string(dump.join("1-full.iptables")).unwrap();
        assert_eq!(dumped.lines().count() as u64, out.written);
        std::fs::remove_dir_all(&dump).unwrap();

        // Setup again changes nothing.
        b.setup(&node()).unwrap();
        let jumps = |t: &str| t.lines().filter(|l| l.contains("-j KUBE-")).count();
        assert_eq!(jumps(&saved(flavor)), jumps(&text));
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with("-A KUBE-") && l.contains("-j KUBE-"))
                .count(),
            JUMPS.len()
        );
    });
}

#[test]
fn partial_syncs_end_where_a_full_sync_does() {
    require_netns!();
    for_each_flavor(|flavor| {
        let mut state = mixed();
        let mut b = IptablesBackend::new(flavor, &BackendOptions::default());
        b.setup(&node()).unwrap();
        sync(&mut b, SyncMode::Full, 1, &state, &full_changes(&state));

        let three = name("ns1", "three");
        let dns = ServicePortName::new("ns1", "dns", "dns", crate::model::Protocol::Udp);
        type Step = fn(&mut ProxyState, &mut ChangeSet);
        let steps: [(&str, ServicePortName, Step); 5] = [
            ("endpoint added", three.clone(), |s, _| {
                let n = name("ns1", "three");
                s.endpoints
                    .get_mut(&n)
                    .unwrap()
                    .push(ep([10, 180, 2, 1], 80, true));
                s.endpoints.get_mut(&n).unwrap().sort();
            }),
            ("endpoint removed", three.clone(), |s, _| {
                s.endpoints
                    .get_mut(&name("ns1", "three"))
                    .unwrap()
                    .remove(0);
            }),
            ("udp endpoint removed", dns.clone(), |s, cs| {
                let n = ServicePortName::new("ns1", "dns", "dns", crate::model::Protocol::Udp);
                let gone: Endpoint = s.endpoints.get_mut(&n).unwrap().remove(0);
                cs.removed_endpoints.insert(n, vec![gone]);
            }),
            ("service added", name("ns7", "new"), |s, _| {
                let svc = p80("ns7", "new", [172, 30, 0, 77]);
                s.endpoints
                    .insert(svc.name.clone(), vec![ep([10, 180, 7, 7], 80, false)]);
                s.services.insert(svc.name.clone(), svc);
            }),
            ("service deleted", name("ns2", "etp-local"), |s, cs| {
                let n = name("ns2", "etp-local");
                let old = s.services.remove(&n).unwrap();
                s.endpoints.remove(&n);
                cs.deleted.insert(n, old);
            }),
        ];
        for (seq, (what, changed, step)) in steps.into_iter().enumerate() {
            let mut changes = ChangeSet {
                changed: BTreeSet::from([changed]),
                ..ChangeSet::default()
            };
            step(&mut state, &mut changes);
            sync(&mut b, SyncMode::Partial, seq as u64 + 2, &state, &changes);
            let got = saved(flavor);
            let want = fresh_full(flavor, &state);
            assert!(
                got == want,
                "{flavor:?} after {what}: partial syncs differ from a full sync\n\
                 --- partial ---\n{got}\n--- full ---\n{want}"
            );
        }
        let deleted = ServiceChains::new(&name("ns2", "etp-local"));
        assert!(!saved(flavor).contains(&deleted.ext().to_string()));
    });
}

#[test]
fn cleanup_leaves_no_kube_chain() {
    require_netns!();
    for_each_flavor(|flavor| {
        let state = mixed();
        let mut b = IptablesBackend::new(flavor, &BackendOptions::default());
        b.setup(&node()).unwrap();
        sync(&mut b, SyncMode::Full, 1, &state, &full_changes(&state));
        assert!(saved(flavor).contains("KUBE-"));
        b.cleanup().unwrap();
        let after = saved(flavor);
        assert!(!after.contains("KUBE-"), "{flavor:?} left:\n{after}");
        // Nothing left to do is not an error.
        b.cleanup().unwrap();
    });
}

#[test]
fn setup_finds_an_earlier_runs_chains_and_the_first_sync_removes_them() {
    require_netns!();
    for_each_flavor(|flavor| {
        let mut earlier = IptablesBackend::new(flavor, &BackendOptions::default());
        earlier.setup(&node()).unwrap();
        let old = mixed();
        sync(&mut earlier, SyncMode::Full, 1, &old, &full_changes(&old));

        let new = super::fixtures::state(vec![(
            p80("ns9", "only", [172, 30, 0, 99]),
            vec![ep([10, 180, 9, 9], 80, false)],
        )]);
        let mut b = IptablesBackend::new(flavor, &BackendOptions::default());
        b.setup(&node()).unwrap();
        sync(&mut b, SyncMode::Full, 1, &new, &full_changes(&new));
        assert_eq!(saved(flavor), fresh_full(flavor, &new));
    });
}

#[test]
fn split_transactions_end_where_one_transaction_does() {
    require_netns!();
    for_each_flavor(|flavor| {
        // 130 x 10 endpoints: 1430 chains, so iptables-nft's restore is
        // split in two transactions (and large cluster mode is on).
        let mut state = super::fixtures::synthetic(130, 10);
        let tmp = tempfile::tempdir().unwrap();
        let dump = tmp.path().join("dump");
        let options = BackendOptions {
            dump_dir: Some(dump.clone()),
            ..BackendOptions::default()
        };
        let mut b = IptablesBackend::new(flavor, &options);
        b.setup(&node()).unwrap();
        sync(&mut b, SyncMode::Full, 1, &state, &full_changes(&state));
        let input = std::fs::read_to_string(dump.join("1-full.iptables")).unwrap();
        std::fs::remove_dir_all(&dump).unwrap();
        let transactions = input.matches("*nat\n").count();
        assert_eq!(transactions, if flavor == Flavor::Nft { 2 } else { 1 });
        assert!(
            saved(flavor) == one_transaction(flavor, &state),
            "{flavor:?}: split full sync differs from one transaction"
        );

        // A partial sync that adds a service port and removes another.
        let gone = state.services.keys().nth(3).unwrap().clone();
        let old = state.services.remove(&gone).unwrap();
        state.endpoints.remove(&gone);
        let added = p80("ns7", "added", [172, 31, 0, 7]);
        state
            .endpoints
            .insert(added.name.clone(), vec![ep([10, 190, 0, 7], 80, false)]);
        let changes = ChangeSet {
            changed: BTreeSet::from([gone.clone(), added.name.clone()]),
            deleted: [(gone, old)].into(),
            ..ChangeSet::default()
        };
        state.services.insert(added.name.clone(), added);
        sync(&mut b, SyncMode::Partial, 2, &state, &changes);
        assert!(
            saved(flavor) == one_transaction(flavor, &state),
            "{flavor:?}: after partial"
        );
    });
}
