use super::*;

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
            "selector matching nothing",
            format!("{LAB}{DEPLOY}{}", svc("  selector: {app: nope}\n  ports: [{port: 80}]\n")),
            24,
            "spec.selector: app=nope matches no Deployment",
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
            "named targetPort nobody has",
            format!(
                "{LAB}{DEPLOY}{}",
                svc("  selector: {app: web}\n  ports: [{port: 80, targetPort: grpc}]\n")
            ),
            25,
            "no selected pod has a TCP containerPort named \"grpc\"",
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
