use super::*;
use std::collections::BTreeSet;

const LAB: &str = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n";

const DEPLOY: &str = "---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: c
          ports:
            - {name: http, containerPort: 8080}
";

fn svc(body: &str) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{body}")
}

#[test]
fn the_demo_scenario_has_every_kind_of_service() {
    let s = Scenario::demo();
    assert_eq!(s.name, "demo");
    assert_eq!(s.nodes.len(), 2);
    let text = super::DEMO;
    for needle in [
        "type: NodePort",
        "type: LoadBalancer",
        "externalTrafficPolicy: Local",
        "internalTrafficPolicy: Local",
        "sessionAffinity: ClientIP",
        "protocol: UDP",
        "nodeName: node-0",
    ] {
        assert!(text.contains(needle), "scenarios/demo.yaml lacks {needle}");
    }
}

#[test]
fn smoke_loads_and_plans_addresses() {
    let s = Scenario::smoke();
    assert_eq!(s.name, "smoke");
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.nodes[0].ip, Ipv4Addr::new(172, 18, 0, 2));
    assert_eq!(s.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
    assert_eq!(s.nodes[1].gateway, Ipv4Addr::new(10, 244, 1, 1));
    assert_eq!(s.fabric_gateway, Ipv4Addr::new(172, 18, 0, 1));
    assert_eq!(s.external_ip, Some(Ipv4Addr::new(172, 18, 0, 254)));
    // Two client pods plus three web pods, round-robin over the nodes.
    assert_eq!(s.pods.len(), 5);
    let web: Vec<(&str, usize, Ipv4Addr)> = s
        .pods
        .iter()
        .filter(|p| !p.client)
        .map(|p| (p.name.as_str(), p.node, p.ip))
        .collect();
    assert_eq!(
        web,
        vec![
            ("web-0", 0, Ipv4Addr::new(10, 244, 0, 3)),
            ("web-1", 1, Ipv4Addr::new(10, 244, 1, 3)),
            ("web-2", 0, Ipv4Addr::new(10, 244, 0, 4)),
        ]
    );
    assert_eq!(s.services.len(), 4);
}

/// Bad input: (what, scenario text, expected line, expected substring).
#[test]
fn bad_scenarios_name_file_line_and_field() {
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "unknown field in a Service",
            format!("{LAB}{DEPLOY}{}", svc("  selector: {app: web}\n  portz: []\n  ports: [{port: 80}]\n")),
            25,
            "Service default/s: spec.portz: unknown field \"portz\"",
        ),
        (
            "a health check node port on a NodePort Service",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30500\n  selector: {app: web}\n  ports: [{port: 80}]\n")
            ),
            26,
            "spec.healthCheckNodePort: may only be set when `type` is 'LoadBalancer'",
        ),
        (
            "unknown field in the Lab",
            "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  nodez: 3\n".into(),
            5,
            "Lab: spec.nodez: unknown field `nodez`",
        ),
        (
            "bad CIDR",
            "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  podCIDR: 10.244.0.0/33\n".into(),
            5,
            "spec.podCIDR",
        ),
        (
            "overlapping ranges",
            "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  serviceCIDR: 10.244.128.0/20\n".into(),
            5,
            "overlaps spec.podCIDR",
        ),
        (
            "port out of range",
            format!("{LAB}{DEPLOY}{}", svc("  selector: {app: web}\n  ports: [{port: 70000}]\n")),
            25,
            "spec.ports[0].port: 70000 is out of range",
        ),
        (
            "nodePort outside the range",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, nodePort: 80}]\n")
            ),
            26,
            "spec.ports[0].nodePort: 80 is outside the node port range",
        ),
        (
            "wrong type",
            format!("{LAB}{DEPLOY}{}", svc("  ports: [{port: eighty}]\n")),
            24,
            "spec.ports[0].port",
        ),
        (
            "no Lab",
            DEPLOY.to_string(),
            1,
            "no `kind: Lab` document",
        ),
        (
            "syntax error",
            "kind: Lab\nspec: [\n".into(),
            3,
            "(syntax)",
        ),
        (
            "RequireDualStack in a single-stack lab",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  ipFamilyPolicy: RequireDualStack\n  selector: {app: web}\n  ports: [{port: 80}]\n")
            ),
            24,
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this lab is not configured for dual-stack",
        ),
        (
            "an IPv6 family in a single-stack lab",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  selector: {app: web}\n  ports: [{port: 80}]\n")
            ),
            25,
            "spec.ipFamilies[1]: Invalid value: \"IPv6\": ipfamily IPv6 is not configured on this lab",
        ),
        (
            "clusterIPs without clusterIP",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  clusterIPs: [10.96.0.10]\n  selector: {app: web}\n  ports: [{port: 80}]\n")
            ),
            24,
            "spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: first value must match `clusterIP`",
        ),
    ];
    for (what, text, line, needle) in cases {
        let err = Scenario::parse("t.yaml", &text)
            .err()
            .unwrap_or_else(|| panic!("{what}: expected an error"));
        let shown = err.to_string();
        assert!(
            shown.contains(needle),
            "{what}: {needle:?} not in:\n{shown}"
        );
        let first = &err.0[0];
        assert_eq!(first.file, "t.yaml", "{what}");
        assert_eq!(first.pos.line, line, "{what}: wrong line in:\n{shown}");
        assert!(first.pos.col >= 1, "{what}");
    }
}

/// What a single-stack cluster's API server accepts, the lab accepts:
/// PreferDualStack (it gets the one family), and `clusterIPs` beside the
/// `clusterIP` it repeats.
#[test]
fn single_stack_family_fields_are_accepted() {
    let text = format!(
        "{LAB}{DEPLOY}{}",
        svc(
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4]\n  clusterIP: 10.96.0.77\n  clusterIPs: [10.96.0.77]\n  selector: {app: web}\n  ports: [{port: 80}]\n"
        )
    );
    let s = Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.services.len(), 1);
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let text = format!(
        "{LAB}{DEPLOY}{}",
        svc("  selector: {app: web}\n  ports: [{port: 0, name: a}, {port: 70000, name: b}]\n")
    );
    let err = Scenario::parse("t.yaml", &text).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
}

#[test]
fn pinned_pods_and_scale_headroom() {
    let text = format!(
        "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 3\n  clientPods: false\n  churn:\n    durationSeconds: 1\n    scale: [{{deployment: web, min: 1, max: 5, everySeconds: 1}}]\n{}",
        DEPLOY.replace(
            "    spec:\n      containers:",
            "    spec:\n      nodeName: node-2\n      containers:"
        )
    );
    let s = Scenario::parse("t.yaml", &text).unwrap();
    assert_eq!(s.pods.len(), 5);
    assert!(s.pods.iter().all(|p| p.node == 2));
    assert_eq!(s.pods.iter().filter(|p| p.active).count(), 3);
}

fn first_error(text: &str) -> ScenarioErrors {
    Scenario::parse("t.yaml", text).expect_err("expected an error")
}

/// Issue 14, finding 3: names reach paths and commands, so they are checked
/// as the API server checks them, with their place.
#[test]
fn names_are_checked_as_the_api_server_does() {
    let long = "a".repeat(300);
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "Lab name with ../",
            "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nmetadata: {name: ../x}\nspec:\n  nodes: 2\n"
                .into(),
            3,
            "Lab: metadata.name: \"../x\" is not a DNS-1123 subdomain",
        ),
        (
            "namespace with ../",
            format!(
                "{LAB}{DEPLOY}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ../../x}}\nspec:\n  ports: [{{port: 80}}]\n"
            ),
            22,
            "metadata.namespace: \"../../x\" is not a DNS-1123 label",
        ),
        (
            "300-character Deployment name",
            format!("{LAB}{}", DEPLOY.replace("{name: web}", &format!("{{name: {long}}}"))),
            8,
            "must be no more than 253 characters (it has 300)",
        ),
        (
            "shell in a Service name",
            format!(
                "{LAB}{DEPLOY}---\napiVersion: v1\nkind: Service\nmetadata: {{name: \"$(reboot)\"}}\nspec:\n  ports: [{{port: 80}}]\n"
            ),
            22,
            "\"$(reboot)\" is not a DNS-1035 label",
        ),
        (
            "selector key with a space",
            format!("{LAB}{DEPLOY}{}", svc("  selector: {\"a b\": web}\n  ports: [{port: 80}]\n")),
            24,
            "spec.selector.a b: key \"a b\" is not a qualified name",
        ),
        (
            "named targetPort that is no port name",
            format!("{LAB}{DEPLOY}{}", svc("  selector: {app: web}\n  ports: [{port: 80, targetPort: Not_A_Name}]\n")),
            25,
            "is not an IANA service name",
        ),
        (
            "Namespace document with a bad name",
            format!("{LAB}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: Prod}}\n"),
            8,
            "metadata.name: \"Prod\" is not a DNS-1123 label",
        ),
    ];
    for (what, text, line, needle) in cases {
        let err = first_error(&text);
        let shown = err.to_string();
        assert!(
            shown.contains(needle),
            "{what}: {needle:?} not in:\n{shown}"
        );
        assert_eq!(err.0[0].pos.line, line, "{what}: wrong line in:\n{shown}");
    }
    // The longest valid Deployment name loads; its pods get DNS-label names.
    let name = format!("{}.b", "a".repeat(251));
    let s = Scenario::parse(
        "t.yaml",
        &format!(
            "{LAB}{}",
            DEPLOY.replace("{name: web}", &format!("{{name: {name}}}"))
        ),
    )
    .unwrap();
    let pods: BTreeSet<&str> = s
        .pods
        .iter()
        .filter(|p| !p.client)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(pods.len(), 3);
    for p in pods {
        assert!(names::dns1123_label(p).is_ok(), "{p}");
    }
    // A Lab without a name is named after its file, as one path component.
    let s = Scenario::parse("../odd dir/My Lab.yaml", LAB).unwrap();
    assert_eq!(s.name, "my-lab");
}

fn lab_with(extra: &str) -> String {
    format!("{LAB}{extra}")
}

/// Issue 14, finding 5: limits are checked before anything is allocated.
#[test]
fn limits_come_before_allocation() {
    // Nine levels of ten aliases each would be 10^9 values.
    let mut bomb =
        String::from("apiVersion: svclab.dev/v1alpha1\nkind: Lab\nx0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("spec:\n  nodes: 2\n");
    let started = std::time::Instant::now();
    let err = first_error(&bomb);
    assert!(err.to_string().contains("aliases expand too much"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let err =
        first_error("apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 4294967295\n");
    assert!(
        err.to_string()
            .contains("t.yaml:4:10: Lab: spec.nodes: must be 1 to 250 nodes, not 4294967295"),
        "{err}"
    );

    let big = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  podCIDR: 100.64.0.0/10\n  nodeCIDRMaskSize: 12\n  clientPods: false\n";
    let limits = Limits {
        max_pods: 5000,
        max_pods_why: "a test's figure".into(),
    };
    let text = format!(
        "{big}{}",
        DEPLOY.replace("replicas: 3", "replicas: 1000000")
    );
    let err = Scenario::parse_with_limits("t.yaml", &text, &limits).unwrap_err();
    assert!(
        err.to_string().contains("spec.replicas: the lab would run 1000000 pods by here; this machine holds at most 5000 (a test's figure)"),
        "{err}"
    );
    let text = format!("{big}{}", DEPLOY.replace("replicas: 3", "replicas: 3000"));
    let err = Scenario::parse_with_limits("t.yaml", &text, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("node node-0 would run 1500 pods by here; at most 1023"),
        "{err}"
    );

    for (extra, needle) in [
        (
            "  probes: {timeoutMs: 9223372036854775807}\n",
            "spec.probes.timeoutMs: 9223372036854775807 is out of range 1-60000",
        ),
        (
            "  probes: {concurrency: 0}\n",
            "spec.probes.concurrency: 0 is out of range",
        ),
        (
            "  agent: {minSyncPeriodMs: 5000, syncPeriodMs: 1000}\n",
            "must not be longer than syncPeriodMs",
        ),
        (
            "  agent:\n    nodePortAddresses: [primary, nodes]\n",
            "spec.agent.nodePortAddresses[1]: \"nodes\" is neither a CIDR",
        ),
        (
            "  churn: {durationSeconds: 3600, endpointFlapsPerSecond: 10000}\n",
            "plans 36000000 changes",
        ),
    ] {
        let err = first_error(&lab_with(extra));
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    }

    // Error output is bounded: the first errors, then a count.
    let mut text = LAB.to_string();
    for i in 0..100 {
        text.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports: [{{port: 0}}]\n"));
    }
    let err = first_error(&text);
    assert_eq!(
        (err.0.len(), err.1),
        (limits::MAX_ERRORS, 100 - limits::MAX_ERRORS)
    );
    assert!(
        err.to_string().ends_with("... and 80 more error(s)"),
        "{err}"
    );
}

/// Issue 14, finding 9: invalid UTF-8 has a place; long values and big
/// files give short messages.
#[test]
fn invalid_utf8_long_values_and_big_files() {
    let dir = std::env::temp_dir().join(format!("svclab-scenario-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let mut bytes = b"apiVersion: svclab.dev/v1alpha1\nkind: Lab\nmetadata: {name: ab".to_vec();
    let offset = bytes.len();
    bytes.extend_from_slice(b"\xff}\nspec: {nodes: 2}\n");
    std::fs::write(&bad, &bytes).unwrap();
    let err = Scenario::load(&bad).unwrap_err();
    let e = &err.0[0];
    assert_eq!((e.pos.line, e.pos.col), (3, 20), "{err}");
    assert!(
        e.message
            .contains(&format!("invalid UTF-8 at byte offset {offset}")),
        "{err}"
    );

    let huge = dir.join("huge.yaml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(limits::MAX_FILE_BYTES + 1).unwrap();
    let err = Scenario::load(&huge).unwrap_err();
    assert!(err.to_string().contains("is larger than 32 MiB"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    let name = "x".repeat(1 << 20);
    let text = format!(
        "{LAB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {name}}}\nspec:\n  ports: [{{port: 80}}]\n"
    );
    let shown = first_error(&text).to_string();
    assert!(shown.len() < 2000, "{} bytes of errors", shown.len());
    assert!(shown.contains(&format!("({} bytes)", 1 << 20)), "{shown}");
}

/// Issue 14, finding 10: what the API server accepts, the lab accepts.
#[test]
fn valid_kubernetes_input_is_accepted() {
    let text = format!(
        "apiVersion: svclab.dev/v1alpha1
kind: Lab
spec:
  nodes: 2
  external: yes
  clientPods: on
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data: {{a: b}}
---
apiVersion: v1
kind: Pod
metadata: {{name: lone}}
spec: {{containers: [{{name: c, image: x}}]}}
{DEPLOY}---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: ext}}
  spec: {{type: ExternalName, externalName: db.example.com}}
- apiVersion: v1
  kind: Secret
  metadata: {{name: s}}
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {{name: ext-ports}}
  spec:
    type: ExternalName
    externalName: db.example.com.
    ports: [{{port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nomatch}}
spec:
  selector: {{app: nope}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: named}}
spec:
  selector: &sel {{app: web}}
  publishNotReadyAddresses: no
  ports:
  - &http {{name: http, port: 80, targetPort: http}}
  - {{<<: *http, name: grpc, port: 81, targetPort: grpc}}
"
    );
    let s = Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.lab.external && s.lab.client_pods);
    let notes = s.notes.join("\n");
    for needle in [
        "1 ConfigMap document(s) ignored",
        "1 Pod document(s) ignored",
        "1 Secret document(s) ignored",
        "1 Namespace document(s) accepted",
        "Service default/ext is ExternalName",
        "Service default/nomatch: selector app=nope matches no pod",
        "Service default/named: 3 of 3 selected pod(s) have no TCP containerPort named \"grpc\"",
    ] {
        assert!(notes.contains(needle), "{needle:?} not in:\n{notes}");
    }
    let named = s
        .services
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some("named"))
        .unwrap();
    let ports = named.spec.as_ref().unwrap().ports.as_ref().unwrap();
    // The merge key: grpc takes http's protocol-less shape, its own keys win.
    assert_eq!(
        (ports[1].name.as_deref(), ports[1].port),
        (Some("grpc"), 81)
    );
    assert_eq!(
        named.spec.as_ref().unwrap().publish_not_ready_addresses,
        Some(false)
    );

    let cp = crate::controlplane::ControlPlane::new(&s).unwrap();
    for ext in ["ext", "ext-ports"] {
        let svc = cp.service("default", ext).unwrap();
        assert_eq!(svc.spec.as_ref().unwrap().cluster_ip, None, "{ext}");
        assert!(cp.slices_of("default", ext).is_empty(), "{ext}");
    }
    assert!(
        cp.service("default", "nomatch")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .is_some()
    );
    assert!(cp.slices_of("default", "nomatch").is_empty());
    let slices = cp.slices_of("default", "named");
    assert_eq!(
        slices
            .iter()
            .map(|x| x.endpoints.as_ref().unwrap().len())
            .sum::<usize>(),
        3
    );
    for slice in slices {
        let names: Vec<_> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["http".to_string()]);
    }
    // The checks probe no ExternalName Service; the endpoint-less ones are
    // targets without endpoints (a proxy rejects them).
    let targets = crate::checks::expect::targets(&cp, svclab_backends::model::IpFamily::IPv4);
    assert!(targets.iter().all(|t| !t.service.starts_with("ext")));
    let grpc = targets
        .iter()
        .find(|t| t.service == "named" && t.port_name == "grpc")
        .unwrap();
    assert!(!grpc.has_any());
    let nomatch = targets.iter().find(|t| t.service == "nomatch").unwrap();
    assert!(!nomatch.has_any());

    // An error inside a List names the item's own line.
    let err = first_error(&format!(
        "{LAB}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: bad}}\n  spec:\n    ports: [{{port: 70000}}]\n"
    ));
    assert_eq!(err.0[0].pos.line, 13, "{err}");
    assert!(
        err.to_string()
            .contains("Service default/bad: spec.ports[0].port: 70000 is out of range"),
        "{err}"
    );
}

/// Zones per node: on the plan, and checked with their place.
#[test]
fn zones_name_lab_nodes() {
    let s = Scenario::parse(
        "t.yaml",
        &lab_with("  zones: {node-0: zone-a, node-1: zone-b}\n"),
    )
    .unwrap();
    let zones: Vec<Option<&str>> = s.nodes.iter().map(|n| n.zone.as_deref()).collect();
    assert_eq!(zones, vec![Some("zone-a"), Some("zone-b")]);
    let s = Scenario::parse("t.yaml", &lab_with("  zones: {node-1: zone-b}\n")).unwrap();
    assert_eq!(s.nodes[0].zone, None, "a node not named has no zone");

    let cases = [
        (
            "  zones:\n    node-0: zone-a\n    node-7: zone-b\n",
            7,
            "Lab: spec.zones.node-7: \"node-7\" is not one of the Lab's nodes",
        ),
        (
            "  zones:\n    node-0: \"zone a\"\n",
            6,
            "Lab: spec.zones.node-0: zone ",
        ),
        (
            "  zones:\n    node-0: \"\"\n",
            6,
            "Lab: spec.zones.node-0: zone must not be empty",
        ),
    ];
    for (extra, line, needle) in cases {
        let err = first_error(&lab_with(extra));
        let shown = err.to_string();
        assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
        assert_eq!(err.0[0].pos.line, line, "{shown}");
    }
}

const DUAL: &str = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n  serviceCIDRs: [fd00:10:96::/112, 10.96.0.0/16]\n";

/// A dual-stack Lab: every node, pod and client gets the IPv6 address at
/// its IPv4 address's host offset; the ranges come from the lists.
#[test]
fn a_dual_stack_lab_plans_both_families() {
    let s = Scenario::parse("t.yaml", &format!("{DUAL}{DEPLOY}")).unwrap_or_else(|e| panic!("{e}"));
    use svclab_backends::model::IpFamily;
    assert_eq!(s.stack.families, vec![IpFamily::IPv4, IpFamily::IPv6]);
    let v6 = s.stack.v6.as_ref().unwrap();
    assert_eq!(v6.service_cidr.to_string(), "fd00:10:96::/112");
    assert_eq!(s.lab.service_cidr.to_string(), "10.96.0.0/16");
    assert_eq!(v6.fabric_gateway.to_string(), "fd00:172:18::1");
    assert_eq!(v6.external_ip.unwrap().to_string(), "fd00:172:18::fe");
    assert_eq!(s.nodes[1].ip6.unwrap().to_string(), "fd00:172:18::3");
    assert_eq!(
        s.nodes[1].pod_cidr6.unwrap().to_string(),
        "fd00:10:244:1::/64"
    );
    assert_eq!(s.nodes[1].gateway6.unwrap().to_string(), "fd00:10:244:1::1");
    for p in &s.pods {
        let n = &s.nodes[p.node];
        let off = u32::from(p.ip) - u32::from(n.pod_cidr.network());
        let off6 = u128::from(p.ip6.unwrap()) - u128::from(n.pod_cidr6.unwrap().network());
        assert_eq!(u128::from(off), off6, "{}", p.name);
    }
    // IPv6 first, IPv6 only.
    let v6only = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  ipFamilies: [IPv6]\n  podCIDRs: [fd00:10:244::/56]\n  serviceCIDRs: [fd00:10:96::/112]\n";
    let s =
        Scenario::parse("t.yaml", &format!("{v6only}{DEPLOY}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.stack.families, vec![IpFamily::IPv6]);
    assert!(s.pods.iter().all(|p| p.ip6.is_some()));
    // The default Lab is IPv4 only, with no IPv6 anywhere.
    let s = Scenario::smoke();
    assert_eq!(s.stack.families, vec![IpFamily::IPv4]);
    assert!(s.stack.v6.is_none() && s.pods.iter().all(|p| p.ip6.is_none()));
}

/// Issue 18: bad dual-stack specs get an error naming file, line and
/// field, and nothing is planned.
#[test]
fn bad_dual_stack_specs_name_the_field() {
    let lab = |spec: &str| {
        format!("apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n{spec}")
    };
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "a family without a pod CIDR",
            lab("  ipFamilies: [IPv4, IPv6]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n"),
            5,
            "spec.ipFamilies: lists IPv6, and spec.podCIDRs has no IPv6 CIDR",
        ),
        (
            "a list without the second family",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n",
            ),
            6,
            "spec.podCIDRs: has no IPv6 CIDR, and spec.ipFamilies lists IPv6",
        ),
        (
            "a CIDR of a family the Lab does not list",
            lab("  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n"),
            5,
            "spec.serviceCIDRs[1]: fd00:10:96::/112 is IPv6, which spec.ipFamilies does not list",
        ),
        (
            "two CIDRs of one family",
            lab(
                "  ipFamilies: [IPv6]\n  podCIDRs: [fd00:10:244::/56, fd00:10:245::/56]\n  serviceCIDRs: [fd00:10:96::/112]\n",
            ),
            6,
            "spec.podCIDRs[1]: a second IPv6 CIDR: give one per family",
        ),
        (
            "IPv6 ranges that overlap",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10::/48]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:0:1::/112]\n",
            ),
            7,
            "spec.serviceCIDRs[1]: fd00:10:0:1::/112 overlaps spec.podCIDRs[1] fd00:10::/48",
        ),
        (
            "an IPv4-mapped range, which overlaps the IPv4 ones",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, '::ffff:10.244.0.0/112']\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n",
            ),
            6,
            "is an IPv4-mapped range",
        ),
        (
            "an unknown family",
            lab("  ipFamilies: [IPv4, IPv7]\n"),
            5,
            "spec.ipFamilies[1]: Unsupported value: \"IPv7\"",
        ),
        (
            "both the single field and the list",
            lab("  podCIDR: 10.244.0.0/16\n  podCIDRs: [10.244.0.0/16]\n"),
            6,
            "spec.podCIDRs: give spec.podCIDR or spec.podCIDRs, not both",
        ),
        (
            "an IPv6 node range too small for the IPv4 pod range",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n  nodeCIDRMaskSizeIPv6: 124\n",
            ),
            8,
            "spec.nodeCIDRMaskSizeIPv6: must be longer than the IPv6 pod CIDR's /56 and at most 120",
        ),
        (
            "RequireDualStack in a single-stack lab",
            format!(
                "{LAB}{DEPLOY}{}",
                svc(
                    "  ipFamilyPolicy: RequireDualStack\n  selector: {app: web}\n  ports: [{port: 80}]\n"
                )
            ),
            24,
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\"",
        ),
        (
            "an IPv6 clusterIP outside the IPv6 service CIDR",
            format!(
                "{DUAL}{DEPLOY}{}",
                svc(
                    "  ipFamilyPolicy: RequireDualStack\n  clusterIP: 10.96.0.50\n  clusterIPs: [10.96.0.50, 'fd00:10:97::50']\n  selector: {app: web}\n  ports: [{port: 80}]\n"
                )
            ),
            29,
            "spec.clusterIPs[1]: fd00:10:97::50 is outside the service CIDR fd00:10:96::/112",
        ),
        (
            "an IPv6 load balancer pool in an IPv4-only lab",
            lab("  loadBalancerPoolIPv6: fd00:198:51:100::/124\n"),
            5,
            "spec.loadBalancerPoolIPv6: is an IPv6 pool, and spec.ipFamilies is [\"IPv4\"]",
        ),
        (
            "an IPv4 range in the IPv6 pool",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n  loadBalancerPoolIPv6: 198.51.100.0/28\n",
            ),
            8,
            "spec.loadBalancerPoolIPv6: 198.51.100.0/28 is not IPv6: IPv4 pools go in spec.loadBalancerPool",
        ),
        (
            "an IPv6 pool inside the IPv6 node network",
            lab(
                "  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n  loadBalancerPoolIPv6: ['fd00:172:18::99']\n",
            ),
            8,
            "spec.loadBalancerPoolIPv6[0]: fd00:172:18::99/128 overlaps spec.nodeNetworkIPv6 fd00:172:18::/64",
        ),
    ];
    for (what, text, line, needle) in cases {
        let err = Scenario::parse("t.yaml", &text).expect_err(what);
        let shown = err.to_string();
        assert!(shown.contains(needle), "{what}: {shown}");
        let e = err
            .0
            .iter()
            .find(|e| e.to_string().contains(needle))
            .unwrap();
        assert_eq!(e.file, "t.yaml", "{what}");
        assert_eq!(e.pos.line, line, "{what}: {shown}");
    }
}

/// A dual-stack lab accepts what a dual-stack cluster's API server does.
#[test]
fn a_dual_stack_lab_accepts_every_policy() {
    for body in [
        "  ipFamilyPolicy: RequireDualStack\n",
        "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6]\n",
        "  ipFamilies: [IPv6]\n",
        "  ipFamilyPolicy: RequireDualStack\n  clusterIP: 10.96.0.50\n  clusterIPs: [10.96.0.50, 'fd00:10:96::50']\n",
        "  clusterIP: 'fd00:10:96::51'\n",
        "  clusterIP: None\n  ipFamilyPolicy: PreferDualStack\n",
    ] {
        let text = format!(
            "{DUAL}{DEPLOY}{}",
            svc(&format!(
                "{body}  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
            ))
        );
        Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
}
