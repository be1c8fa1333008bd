//! svclab: an end-to-end test harness and benchmark lab for Kubernetes
//! Service proxies. The `svclab` binary is a thin CLI over these modules:
//!
//! - [`scenario`]: scenario files (a `Lab` document plus Kubernetes objects);
//! - [`topology`]: the emulated cluster's namespaces, links and routes;
//! - [`workload`]: the pods' echo and netexec servers;
//! - [`controlplane`]: Services, EndpointSlices and watch events, in one store;
//! - [`apiserver`]: that store as a Kubernetes API endpoint in every node;
//! - [`agent`]: the per-node agent process and its supervisor;
//! - [`kubeproxy`]: upstream kube-proxy binaries, configuration and processes;
//! - [`probe`], [`checks`]: probes from vantage points, and the checks;
//! - [`lab`], [`run`], [`results`]: one run, end to end, and its reports;
//! - [`bench`]: the benchmarks (`svclab bench`, `svclab compare`);
//! - [`trace`]: one probe's path through the kernel (`svclab trace`);
//! - [`capture`]: a live cluster's Services as a scenario (`svclab capture`);
//! - [`cleanup`], [`guard`], [`state`], [`stop`]: leaving the host as it was found.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod capture;
pub mod checks;
pub mod churn;
pub mod cleanup;
pub mod cli;
pub mod controlplane;
pub mod doctor;
pub mod guard;
pub mod kernels;
pub mod kubeproxy;
pub mod lab;
pub mod labs;
pub mod logging;
pub mod matrix;
pub mod netns;
pub mod probe;
pub mod results;
pub mod rules;
pub mod run;
pub mod scenario;
pub mod scrape;
pub mod state;
pub mod stop;
pub mod topology;
pub mod trace;
pub mod vm;
pub mod workload;
