//! `svclab capture`: recorded objects of a real-shaped cluster
//! (`fixtures/cluster-*.json`, as `kubectl get -A -o json` prints them)
//! become a scenario that loads, and whose control plane serves the same
//! Services and equivalent EndpointSlices. Against a live k3s when a
//! Docker engine exists.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use svclab::capture::{self, ENDPOINTS_OF_LABEL, Options};
use svclab::controlplane::ControlPlane;
use svclab::scenario::Scenario;

fn items<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    serde_json::from_value(list["items"].clone()).unwrap()
}

fn fixtures() -> (Vec<Service>, Vec<EndpointSlice>) {
    (
        items("cluster-services.json"),
        items("cluster-endpointslices.json"),
    )
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Per service port (name, protocol): every endpoint as (target port,
/// ready, serving, terminating, node), sorted.
type Endpoints = BTreeMap<(String, String), Vec<(i32, bool, bool, bool, String)>>;

fn endpoints_of<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    node: impl Fn(&str) -> String,
) -> Endpoints {
    let mut out: Endpoints = BTreeMap::new();
    for s in slices {
        for p in s.ports.iter().flatten() {
            let k = (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            );
            for e in s.endpoints.iter().flatten() {
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                out.entry(k.clone()).or_default().push((
                    p.port.unwrap_or(0),
                    ready,
                    c.serving.unwrap_or(ready),
                    c.terminating.unwrap_or(false),
                    e.node_name.as_deref().map(&node).unwrap_or_default(),
                ));
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// What a proxy reads from a Service spec.
fn proxy_view(svc: &Service) -> serde_json::Value {
    let s = svc.spec.clone().unwrap_or_default();
    let ports: Vec<serde_json::Value> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            serde_json::json!([
                p.name,
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.target_port,
                p.node_port
            ])
        })
        .collect();
    serde_json::json!({
        "type": s.type_,
        "clusterIP": s.cluster_ip,
        "ports": ports,
        "etp": s.external_traffic_policy,
        "itp": s.internal_traffic_policy,
        "hc": s.health_check_node_port,
        "affinity": s.session_affinity,
        "affinityConfig": s.session_affinity_config,
        "publishNotReady": s.publish_not_ready_addresses,
    })
}

#[test]
fn fixtures_round_trip_through_a_scenario() {
    let (services, slices) = fixtures();
    let captured = capture::convert(
        &services,
        &slices,
        &Options {
            source: "fixtures".into(),
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::parse("captured.yaml", &captured.yaml)
        .unwrap_or_else(|e| panic!("{e}\n{}", captured.yaml));
    let cp = ControlPlane::new(&scenario).unwrap_or_else(|e| panic!("{e}\n{}", captured.yaml));

    // Node names become DNS labels, the same way for every endpoint.
    let node = |n: &str| n.replace('.', "-");
    let mut checked = 0;
    for svc in &services {
        let (ns, name) = key(&svc.metadata);
        let ty = svc.spec.as_ref().and_then(|s| s.type_.clone());
        if ty.as_deref() == Some("ExternalName") {
            assert!(cp.service(&ns, &name).is_none(), "{ns}/{name}");
            assert!(
                captured
                    .notes
                    .iter()
                    .any(|n| n.contains(&format!("{ns}/{name}")) && n.contains("ExternalName")),
                "{:?}",
                captured.notes
            );
            continue;
        }
        let lab = cp
            .service(&ns, &name)
            .unwrap_or_else(|| panic!("Service {ns}/{name} missing"));
        assert_eq!(proxy_view(lab), proxy_view(svc), "Service {ns}/{name}");
        let want = endpoints_of(
            slices.iter().filter(|s| {
                key(&s.metadata).0 == ns
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&name)
            }),
            node,
        );
        // An endpoint without a node may land on any node in the lab.
        let unplaced = want.values().flatten().all(|e| e.4.is_empty());
        let have = endpoints_of(cp.slices_of(&ns, &name).iter(), |n: &str| {
            if unplaced {
                String::new()
            } else {
                n.to_string()
            }
        });
        assert_eq!(have, want, "endpoints of Service {ns}/{name}");
        checked += 1;
    }
    assert_eq!(checked, 9);

    // The selector-less Service keeps its endpoint through a label.
    let k = cp.service("default", "kubernetes").unwrap();
    let sel = k.spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(
        sel.get(ENDPOINTS_OF_LABEL).map(String::as_str),
        Some("kubernetes")
    );
    // 150 endpoints come back as slices of at most 100.
    let sizes: Vec<usize> = cp
        .slices_of("batch", "workers")
        .iter()
        .map(|s| s.endpoints.as_ref().unwrap().len())
        .collect();
    assert_eq!(sizes, [100, 50]);
    // Pods keep their nodes.
    assert_eq!(
        scenario.node_names(),
        [
            "ip-10-0-1-23-eu-west-1-compute-internal",
            "ip-10-0-2-41-eu-west-1-compute-internal",
            "ip-10-0-3-7-eu-west-1-compute-internal"
        ]
    );
    // Server-set fields and status are gone; ranges are the cluster's own.
    for gone in [
        "resourceVersion",
        "managedFields",
        "uid:",
        "loadBalancer:",
        "ingress",
    ] {
        assert!(
            !captured.yaml.contains(gone),
            "{gone} in\n{}",
            captured.yaml
        );
    }
    assert_eq!(scenario.lab.service_cidr.to_string(), "10.96.0.0/16");
    assert_eq!(scenario.lab.pod_cidr.to_string(), "10.244.0.0/16");
}

#[test]
fn anonymized_capture_hides_names_and_keeps_the_shape() {
    let (services, slices) = fixtures();
    let captured = capture::convert(
        &services,
        &slices,
        &Options {
            anonymize: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for secret in [
        "shop",
        "storefront",
        "checkout",
        "catalog",
        "workers",
        "eu-west-1",
        "helm",
        "aws-load-balancer",
    ] {
        assert!(
            !captured.yaml.to_lowercase().contains(secret),
            "{secret} leaked:\n{}",
            captured.yaml
        );
        assert!(
            !captured.notes.iter().any(|n| n.contains(secret)),
            "{secret} leaked in {:?}",
            captured.notes
        );
    }
    let scenario = Scenario::parse("anon.yaml", &captured.yaml).unwrap();
    let cp = ControlPlane::new(&scenario).unwrap();
    assert_eq!(cp.services().count(), 9);
    let endpoints: usize = cp
        .slices()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum();
    let want: usize = slices
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(endpoints, want);
    // Same shape: the multiset of (ports, endpoint count) per Service.
    let shape = |cp: &ControlPlane| {
        let mut v: Vec<(usize, usize)> = cp
            .services()
            .map(|s| {
                let (ns, name) = key(&s.metadata);
                (
                    s.spec.as_ref().unwrap().ports.as_ref().map_or(0, Vec::len),
                    cp.slices_of(&ns, &name)
                        .iter()
                        .map(|sl| sl.endpoints.as_ref().map_or(0, Vec::len))
                        .sum(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let plain = capture::convert(&services, &slices, &Options::default()).unwrap();
    let plain = ControlPlane::new(&Scenario::parse("plain.yaml", &plain.yaml).unwrap()).unwrap();
    assert_eq!(shape(&cp), shape(&plain));
}

#[test]
fn one_namespace_only() {
    let (services, slices) = fixtures();
    let captured = capture::convert(
        &services,
        &slices,
        &Options {
            namespace: Some("batch".into()),
            ..Options::default()
        },
    )
    .unwrap();
    let scenario = Scenario::parse("batch.yaml", &captured.yaml).unwrap();
    let names: Vec<String> = scenario
        .services
        .iter()
        .map(|s| format!("{}/{}", key(&s.metadata).0, key(&s.metadata).1))
        .collect();
    assert_eq!(names, ["batch/idle", "batch/workers"]);
    assert_eq!(captured.services, 2);
    // The idle Service's selector matches a Deployment with no replicas.
    let cp = ControlPlane::new(&scenario).unwrap();
    assert!(cp.slices_of("batch", "idle").is_empty());
}

/// Why the live test cannot run here, if it cannot: testcontainers needs
/// a Docker engine, not only the CLI.
fn docker_missing() -> Option<String> {
    match std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Err(e) => Some(format!("no docker CLI ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "no Docker engine: `docker info` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        )),
        Ok(_) => None,
    }
}

mod live {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{Api, PostParams};
    use testcontainers::core::{ExecCommand, IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    const K3S_IMAGE: &str = "rancher/k3s";
    const K3S_TAG: &str = "v1.31.4-k3s1";

    /// Services with hand-made EndpointSlices (no workload images needed):
    /// created in k3s, captured with `svclab capture`'s client, replayed.
    #[tokio::test]
    async fn capture_from_k3s_and_replay() {
        if let Some(why) = docker_missing() {
            eprintln!("SKIP: {why}");
            return;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let k3s = GenericImage::new(K3S_IMAGE, K3S_TAG)
            .with_wait_for(WaitFor::message_on_stderr(
                "Node controller sync successful",
            ))
            .with_exposed_port(6443.tcp())
            .with_privileged(true)
            .with_cmd(["server", "--disable=traefik,metrics-server,servicelb"])
            .start()
            .await
            .expect("starting k3s");
        let port = k3s.get_host_port_ipv4(6443.tcp()).await.unwrap();
        let mut out = k3s
            .exec(ExecCommand::new(["cat", "/etc/rancher/k3s/k3s.yaml"]))
            .await
            .unwrap();
        let kubeconfig = String::from_utf8(out.stdout_to_vec().await.unwrap())
            .unwrap()
            .replace(
                "https://127.0.0.1:6443",
                &format!("https://127.0.0.1:{port}"),
            );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();

        let (services, slices) = fixtures();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&path).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let pp = PostParams::default();
        for ns in ["shop", "batch"] {
            let ns: k8s_openapi::api::core::v1::Namespace =
                serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
            ns_api.create(&pp, &ns).await.unwrap();
        }
        // Only the fixtures' own namespaces (k3s has kube-system's and
        // default's). Selectors dropped, so the endpoint controller leaves
        // the slices created below alone; ClusterIPs left to k3s, whose
        // service range differs.
        let ours = |m: &ObjectMeta| ["shop", "batch"].contains(&key(m).0.as_str());
        for svc in services.iter().filter(|s| ours(&s.metadata)) {
            let mut s = svc.clone();
            s.metadata = ObjectMeta {
                name: s.metadata.name.clone(),
                namespace: s.metadata.namespace.clone(),
                ..Default::default()
            };
            s.status = None;
            if let Some(spec) = s.spec.as_mut() {
                spec.selector = None;
                if spec.cluster_ip.as_deref() != Some("None") {
                    spec.cluster_ip = None;
                    spec.cluster_ips = None;
                }
            }
            let api: Api<Service> = Api::namespaced(client.clone(), &key(&s.metadata).0);
            api.create(&pp, &s).await.unwrap();
        }
        for sl in slices.iter().filter(|s| ours(&s.metadata)) {
            let mut s = sl.clone();
            s.metadata = ObjectMeta {
                name: s.metadata.name.clone(),
                namespace: s.metadata.namespace.clone(),
                labels: s.metadata.labels.clone().map(|mut l| {
                    l.insert(
                        "endpointslice.kubernetes.io/managed-by".into(),
                        "svclab-test".into(),
                    );
                    l
                }),
                ..Default::default()
            };
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key(&s.metadata).0);
            api.create(&pp, &s).await.unwrap();
        }

        let listed = capture::client::list(&path, None).await.unwrap();
        let captured = capture::convert(&listed.services, &listed.slices, &Options::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::new(&Scenario::parse("k3s.yaml", &captured.yaml).unwrap()).unwrap();
        for svc in services.iter().filter(|s| {
            s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) != Some("ExternalName")
                && ours(&s.metadata)
        }) {
            let (ns, name) = key(&svc.metadata);
            let want: usize = slices
                .iter()
                .filter(|s| {
                    key(&s.metadata).0 == ns
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/service-name"))
                            == Some(&name)
                })
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .sum();
            let have: usize = cp
                .slices_of(&ns, &name)
                .iter()
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .sum();
            assert_eq!(have, want, "{ns}/{name}");
        }
    }
}
