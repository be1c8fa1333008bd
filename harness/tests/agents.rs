//! Agents in a real lab: every agent reaches "synced", then a churn burst is
//! accounted for change by change, with the `none` baseline and with an
//! external program speaking the documented protocol (`exec:`).

mod common;

fn churn(backend: &str) -> serde_json::Value {
    let out = common::run(&[
        "churn",
        "scenarios/smoke.yaml",
        "--backend",
        backend,
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{backend}: {}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::text(&out)))
}

#[test]
fn churn_is_accounted_for_by_every_agent() {
    require_root!();
    let _lab = common::lab_lock();
    let exec = format!(
        "exec:{}/harness/tests/exec_backend.py",
        common::root().display()
    );
    for backend in ["none", exec.as_str()] {
        let r = churn(backend);
        assert_eq!(r["accounted"], true, "{backend}: {r:#}");
        let sent = r["eventsSent"].as_u64().unwrap();
        assert!(sent > 50, "{backend}: the burst sent only {sent} events");
        for (node, n) in r["nodes"].as_object().unwrap() {
            assert_eq!(
                n["fullSyncs"], 1,
                "{backend} {node}: one full sync, then partial ones"
            );
            assert!(
                n["partialSyncs"].as_u64().unwrap() >= 5,
                "{backend} {node}: {n}"
            );
            assert_eq!(n["eventsSynced"].as_u64(), Some(sent), "{backend} {node}");
        }
    }
}
