//! The lab's Kubernetes API endpoint: one store (the control plane's),
//! served over HTTP/JSON on `127.0.0.1:6443` inside every node namespace
//! (a socket opened by a thread that entered the namespace, as the
//! workloads' are), never in the host's. Proxies list and watch it as they
//! would a real API server (svclab's agents through kube-rs, upstream
//! kube-proxy through client-go) and people use kubectl on it.
//!
//! - discovery, `/version`, `/healthz`, `/readyz`, `/livez`, and an OpenAPI
//!   v3 index that lets `kubectl apply` validate on the server;
//! - list and watch (resourceVersion, bookmarks, `sendInitialEvents`,
//!   `timeoutSeconds`, 410 Gone, set-based label selectors, `metadata.name`
//!   and `metadata.namespace` field selectors) for Services,
//!   EndpointSlices, Nodes, Pods, Namespaces, ServiceCIDRs and Deployments;
//! - create, update, patch and delete of Services, through the control
//!   plane's allocators and EndpointSlice controller; Deployments' `scale`;
//!   Events accepted and counted;
//! - every error a Kubernetes `Status` with its code;
//! - `POST /debug/svclab/drop-watches`: the lab's fault, ending every open
//!   watch at once (clients must resume without missing anything).

pub mod discovery;
pub mod http;
pub mod patch;
pub mod selector;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::controlplane::ControlPlane;
use crate::netns::NetNs;

/// Where the API listens inside every node namespace.
pub const API_PORT: u16 = 6443;

/// The control plane, shared by the lab (checks, churn) and the API.
pub type SharedControlPlane = Arc<Mutex<ControlPlane>>;

/// What every request handler shares.
pub struct Shared {
    pub cp: SharedControlPlane,
    /// Bumped to end every open watch (a fault clients must survive).
    drops: tokio::sync::watch::Sender<u64>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Open watches.
    pub watches: AtomicUsize,
    /// How long an idle watch waits before a bookmark.
    bookmark_every: Duration,
}

/// The running endpoint; dropping it stops every listener and watch.
pub struct ApiServer {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `127.0.0.1:port` in each of `namespaces`.
    pub async fn start(
        cp: SharedControlPlane,
        namespaces: &[String],
        port: u16,
    ) -> Result<ApiServer> {
        let shared = Arc::new(Shared {
            cp,
            drops: tokio::sync::watch::channel(0).0,
            shutdown: tokio::sync::watch::channel(false).0,
            watches: AtomicUsize::new(0),
            bookmark_every: Duration::from_secs(5),
        });
        let names = namespaces.to_vec();
        let listeners =
            tokio::task::spawn_blocking(move || -> Result<Vec<std::net::TcpListener>> {
                names
                    .iter()
                    .map(|ns| {
                        NetNs::new(ns)
                            .run(|| {
                                let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
                                l.set_nonblocking(true)?;
                                Ok::<_, std::io::Error>(l)
                            })
                            .map_err(anyhow::Error::from)
                            .and_then(|r| r.map_err(anyhow::Error::from))
                            .with_context(|| {
                                format!("API server: listening on 127.0.0.1:{port} in {ns}")
                            })
                    })
                    .collect()
            })
            .await??;
        let mut tasks = Vec::new();
        for l in listeners {
            let listener = tokio::net::TcpListener::from_std(l)?;
            let shared = shared.clone();
            tasks.push(tokio::spawn(accept_loop(listener, shared)));
        }
        Ok(ApiServer { shared, tasks })
    }
}

impl Shared {
    /// Ends every open watch at once, as an API server restart or a load
    /// balancer's idle timeout would; clients must resume. Returns how
    /// many were open.
    fn drop_watches(&self) -> usize {
        let open = self.watches.load(std::sync::atomic::Ordering::SeqCst);
        self.drops.send_modify(|n| *n += 1);
        open
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("API server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let svc = service_fn(move |req| http::handle(shared.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// The kubeconfig a client inside `node`'s namespace uses (the API is on
/// its loopback, plain HTTP: nothing outside the namespace reaches it).
pub fn kubeconfig(node: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: svclab\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         users:\n\
         - name: {node}\n  user: {{}}\n\
         contexts:\n\
         - name: svclab\n  context:\n    cluster: svclab\n    user: {node}\n    namespace: default\n\
         current-context: svclab\n"
    )
}

/// Writes `kubeconfig-<node>` for every node under `dir` (0600, as the
/// rest of the run's state); returns the paths.
pub fn write_kubeconfigs(dir: &Path, nodes: &[String], port: u16) -> Result<Vec<PathBuf>> {
    nodes
        .iter()
        .map(|n| {
            let path = dir.join(format!("kubeconfig-{n}"));
            use std::io::Write;
            crate::state::create_private_file(&path)
                .and_then(|mut f| f.write_all(kubeconfig(n, port).as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}
