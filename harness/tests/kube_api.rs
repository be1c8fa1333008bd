//! The lab's Kubernetes API endpoint against real clients: kubectl (which
//! this project did not write) lists, watches, applies, scales and deletes;
//! the agents (kube-rs watchers) follow every change into the kernel; bad
//! requests get a Kubernetes `Status` with the right code; and watches
//! ended mid-stream are resumed by every agent with nothing missed.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Api {
    run: String,
    node_ns: Vec<String>,
    /// kubectl's discovery cache: private to the test, not the host's ~/.kube.
    cache: tempfile::TempDir,
}

impl Api {
    fn kubeconfig(&self, node: usize) -> String {
        format!("/run/svclab/{}/kubeconfig-node-{node}", self.run)
    }

    fn kubectl_on(&self, node: usize, args: &[&str]) -> Output {
        let kc = self.kubeconfig(node);
        let cache = format!("--cache-dir={}", self.cache.path().display());
        let mut full = vec![
            "kubectl",
            "--kubeconfig",
            kc.as_str(),
            cache.as_str(),
            "--request-timeout=20s",
        ];
        full.extend_from_slice(args);
        common::in_netns(&self.node_ns[node], &full)
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_on(0, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", common::text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl -o json")
    }

    /// A raw request with curl; returns (HTTP code, body as JSON).
    fn raw(&self, method: &str, path: &str, ctype: &str, body: &str) -> (u16, serde_json::Value) {
        let url = format!("http://127.0.0.1:6443{path}");
        let o = common::in_netns(
            &self.node_ns[0],
            &[
                "curl",
                "-s",
                "-m",
                "10",
                "-X",
                method,
                "-H",
                &format!("Content-Type: {ctype}"),
                "--data-binary",
                body,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("curl prints the code last");
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    fn apply(&self, yaml: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("svc.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.ok(&["apply", "-f", f.to_str().unwrap()])
    }

    fn nft_in(&self, node: usize) -> String {
        String::from_utf8_lossy(
            &common::in_netns(&self.node_ns[node], &["nft", "list", "ruleset"]).stdout,
        )
        .into_owned()
    }
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  selector: {{app: web}}\n  ports:\n  - {{name: http, port: {port}, targetPort: 8080}}\n"
    )
}

fn up(backend: &str) -> (Api, common::LabGuard) {
    let up = common::run(&["up", "scenarios/smoke.yaml", "--backend", backend]);
    assert!(up.status.success(), "{}", common::text(&up));
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    let run = common::run_id(&out);
    assert!(
        out.contains(&format!(
            "kubectl --kubeconfig /run/svclab/{run}/kubeconfig-node-0 get svc,endpointslices -A"
        )),
        "up prints a kubectl line that works as is: {out}"
    );
    let api = Api {
        node_ns: (0..2).map(|i| format!("svclab-{run}-node-{i}")).collect(),
        run: run.clone(),
        cache: tempfile::tempdir().expect("a temporary folder"),
    };
    (api, common::LabGuard(run))
}

/// Polls `f` for up to `within`; true once it holds.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn curl_vip(api: &Api, vip: &str, port: u16) -> bool {
    let o = common::in_netns(
        &api.node_ns[1],
        &[
            "curl",
            "-s",
            "-m",
            "2",
            &format!("http://{vip}:{port}/hostname"),
        ],
    );
    o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("web-")
}

#[test]
fn kubectl_lists_watches_applies_scales_and_deletes_and_agents_follow() {
    require_root!();
    let _lab = common::lab_lock();
    let (api, _guard) = up("nftables");

    // Lists: the scenario's Services, their slices, the nodes with their
    // addresses and pod CIDRs, from either node's namespace.
    let svcs = api.json(&["get", "svc", "-A"]);
    let names: Vec<&str> = svcs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dns", "empty", "web", "web-nodeport"]);
    let slices = api.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert_eq!(slices["items"].as_array().unwrap().len(), 1);
    let node = api.json(&["get", "node", "node-1"]);
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
    assert_eq!(node["status"]["addresses"][0]["address"], "172.18.0.3");
    let o = api.kubectl_on(1, &["get", "--raw", "/version"]);
    assert!(
        common::text(&o).contains("gitVersion"),
        "{}",
        common::text(&o)
    );

    // A watch sees what apply creates.
    let kc = api.kubeconfig(0);
    let mut watch = Command::new("ip")
        .args([
            "netns",
            "exec",
            &api.node_ns[0],
            "kubectl",
            "--kubeconfig",
            &kc,
        ])
        .arg(format!("--cache-dir={}", api.cache.path().display()))
        .args(["get", "svc", "-w", "-o", "name", "--request-timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        api.apply(&service("api-web", 81))
            .contains("service/api-web created")
    );
    let created = api.json(&["get", "svc", "api-web"]);
    let vip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_eq!(
        created["spec"]["ports"][0]["protocol"], "TCP",
        "defaulted as the API server does"
    );
    assert!(
        eventually(Duration::from_secs(15), || curl_vip(&api, &vip, 81)),
        "the agents did not program the applied Service {vip}:81"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let watched = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        watched.contains("service/api-web"),
        "kubectl get -w printed {watched:?}"
    );

    // apply again with another port: a strategic merge patch; the old port stops.
    assert!(api.apply(&service("api-web", 82)).contains("configured"));
    assert!(
        eventually(Duration::from_secs(15), || curl_vip(&api, &vip, 82)),
        "the patched port 82 does not answer"
    );
    assert_eq!(
        api.json(&["get", "svc", "api-web"])["spec"]["clusterIP"],
        vip.as_str()
    );

    // scale: the Deployment's slice follows; beyond what the lab made is a 422.
    assert!(
        api.ok(&["scale", "deployment", "web", "--replicas=1"])
            .contains("scaled")
    );
    let eps = api.json(&["get", "endpointslice", "web-0"]);
    assert_eq!(eps["endpoints"].as_array().unwrap().len(), 1);
    let too_many = api.kubectl(&["scale", "deployment", "web", "--replicas=7"]);
    assert!(!too_many.status.success());
    assert!(
        common::text(&too_many).contains("spec.replicas: Invalid value: 7"),
        "{}",
        common::text(&too_many)
    );
    api.ok(&["scale", "deployment", "web", "--replicas=3"]);

    // delete: gone from the API and from every node's ruleset.
    assert!(api.ok(&["delete", "svc", "api-web"]).contains("deleted"));
    let gone = api.kubectl(&["get", "svc", "api-web"]);
    assert!(
        common::text(&gone).contains("NotFound"),
        "{}",
        common::text(&gone)
    );
    for n in 0..2 {
        assert!(
            eventually(Duration::from_secs(15), || !api.nft_in(n).contains(&vip)),
            "node-{n} still programs the deleted Service's {vip}"
        );
    }
}

#[test]
fn bad_requests_get_a_status_with_the_right_code_and_change_nothing() {
    require_root!();
    let _lab = common::lab_lock();
    let (api, _guard) = up("none");
    let before = api.json(&["get", "svc", "-A"])["metadata"]["resourceVersion"].clone();
    let svcs = "/api/v1/namespaces/default/services";
    let cases: Vec<(&str, String, &str, &str, u16, &str)> = vec![
        (
            "POST",
            svcs.into(),
            "application/json",
            "{not json",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/widgets".into(),
            "application/json",
            "",
            404,
            "NotFound",
        ),
        (
            "GET",
            format!("{svcs}/nope"),
            "application/json",
            "",
            404,
            "NotFound",
        ),
        (
            "DELETE",
            "/api/v1/nodes/node-0".into(),
            "application/json",
            "",
            405,
            "MethodNotAllowed",
        ),
        (
            "POST",
            svcs.into(),
            "application/json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}"#,
            409,
            "AlreadyExists",
        ),
        (
            "POST",
            svcs.into(),
            "application/json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"Bad_Name"},"spec":{"ports":[{"port":0}]}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            svcs.into(),
            "application/json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"np"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30080}]}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            svcs.into(),
            "application/json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"ds"},"spec":{"ipFamilyPolicy":"RequireDualStack","ports":[{"port":80}]}}"#,
            422,
            "Invalid",
        ),
        (
            "PATCH",
            format!("{svcs}/web"),
            "application/apply-patch+yaml",
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PUT",
            format!("{svcs}/web"),
            "application/json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","resourceVersion":"1"},"spec":{"ports":[{"port":80}]}}"#,
            409,
            "Conflict",
        ),
        (
            "GET",
            "/api/v1/services?labelSelector=a+in+b".into(),
            "application/json",
            "",
            400,
            "BadRequest",
        ),
    ];
    for (method, path, ctype, body, code, reason) in cases {
        let (got, status) = api.raw(method, &path, ctype, body);
        assert_eq!(got, code, "{method} {path}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}: {status}");
        assert_eq!(status["reason"], reason, "{method} {path}: {status}");
        assert_eq!(status["code"], code);
    }
    let after = api.json(&["get", "svc", "-A"])["metadata"]["resourceVersion"].clone();
    assert_eq!(before, after, "a refused request changed the store");

    // A watch from a version older than the log: 200, then an ERROR 410 event.
    let o = common::in_netns(
        &api.node_ns[0],
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "http://127.0.0.1:6443/api/v1/services?watch=true&resourceVersion=1",
        ],
    );
    let first = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let ev: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
    assert_eq!(ev["type"], "ERROR", "{first}");
    assert_eq!(ev["object"]["code"], 410, "{first}");

    // What the API server accepts is accepted: PreferDualStack in a
    // single-stack lab gets the one family, and an apply that turns a
    // Service into an ExternalName loses the family fields the stored one
    // carried (its merge keeps them), as dropTypeDependentFields does.
    let yaml =
        service("turns", 81).replace("spec:\n", "spec:\n  ipFamilyPolicy: PreferDualStack\n");
    api.apply(&yaml);
    let svc = api.json(&["get", "svc", "turns"]);
    assert_eq!(
        svc["spec"]["ipFamilies"],
        serde_json::json!(["IPv4"]),
        "{svc}"
    );
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "PreferDualStack", "{svc}");
    let alias = "apiVersion: v1\nkind: Service\nmetadata:\n  name: turns\n  namespace: default\nspec:\n  type: ExternalName\n  externalName: example.org\n";
    let out = api.apply(alias);
    assert!(out.contains("configured"), "{out}");
    let svc = api.json(&["get", "svc", "turns"]);
    assert_eq!(svc["spec"]["type"], "ExternalName", "{svc}");
    assert!(svc["spec"]["ipFamilies"].is_null(), "{svc}");
    assert!(svc["spec"]["clusterIP"].is_null(), "{svc}");
}

#[test]
fn agents_resume_dropped_watches_without_missing_a_change() {
    require_root!();
    let _lab = common::lab_lock();
    let (api, _guard) = up("nftables");
    let drop_watches = || {
        let (code, body) = api.raw("POST", "/debug/svclab/drop-watches", "application/json", "");
        assert_eq!(code, 200, "{body}");
        body["dropped"].as_u64().unwrap_or(0)
    };
    // Both agents watch three resources each.
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, b) = api.raw("POST", "/debug/svclab/drop-watches", "application/json", "");
            b["dropped"].as_u64().unwrap_or(0) >= 6
        }),
        "the agents' watches never showed up"
    );
    let mut vips = Vec::new();
    for i in 0..5 {
        api.apply(&service(&format!("churn-{i}"), 80));
        drop_watches();
        let vip = api.json(&["get", "svc", &format!("churn-{i}")])["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_string();
        vips.push(vip);
        if i > 0 {
            api.ok(&["delete", "svc", &format!("churn-{}", i - 1)]);
            drop_watches();
        }
        // A change while no watch is open: the resumed watch must carry it.
        std::thread::sleep(Duration::from_millis(300));
    }
    let (last, deleted) = vips.split_last().unwrap();
    for n in 0..2 {
        let converged = eventually(Duration::from_secs(20), || {
            let rules = api.nft_in(n);
            rules.contains(last.as_str())
                && deleted.iter().all(|v| !rules.contains(v.as_str()))
                && rules.contains("10.96.0.11")
        });
        assert!(
            converged,
            "node-{n} did not converge after dropped watches (want {last}, none of {deleted:?}):\n{}",
            api.nft_in(n)
        );
    }
}
