//! The agent's informers: Services and EndpointSlices (with kube-proxy's
//! label selector) and its own Node (field selector), watched through
//! kube-rs's `watcher` on the lab's API endpoint, turned into the agent's
//! watch events. A relist (after a 410 or a lost watch) becomes upserts
//! plus a DELETED for every object the relist no longer has, so the change
//! tracker never keeps a ghost. `SYNCED` follows the first complete list of
//! all three, like an informer's `HasSynced`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use svclab_backends::protocol::{ApiObject, WatchEvent};

use super::Input;

/// kube-proxy's Service informer selector (cmd/kube-proxy since v1.37: it
/// skips Services another proxy owns; v1.34 also skipped Services labelled
/// headless).
pub const PROXY_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";

/// kube-proxy's EndpointSlice informer selector (cmd/kube-proxy since
/// v1.37): the EndpointSlice controller labels the slices of Services
/// without a ClusterIP headless.
pub const SLICE_SELECTOR: &str = "!service.kubernetes.io/headless";

/// kube-proxy's Service field selector (cmd/kube-proxy, pkg/proxy/config).
pub const SERVICE_FIELDS: &str = "spec.clusterIP!=None";

enum Item {
    Object(ApiObject),
    Node(Box<Node>),
}

impl Item {
    fn key(&self) -> String {
        match self {
            Item::Object(o) => o.key(),
            Item::Node(n) => n.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// The three streams' states, and what `SYNCED` waits for.
#[derive(Default)]
struct Informers {
    /// Per stream: what the last complete list and the changes since hold.
    known: [BTreeMap<String, Option<ApiObject>>; 3],
    /// Per stream: the relist in progress.
    fresh: [Option<BTreeMap<String, Option<ApiObject>>>; 3],
    listed: [bool; 3],
    synced: bool,
}

impl Informers {
    /// Folds one watcher event into agent events.
    fn on(&mut self, stream: usize, ev: Event<Item>) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        match ev {
            Event::Init => self.fresh[stream] = Some(BTreeMap::new()),
            Event::InitApply(item) => {
                let key = item.key();
                let obj = match item {
                    Item::Object(o) => Some(o),
                    Item::Node(_) => None,
                };
                if let Some(o) = &obj {
                    out.push(if self.known[stream].contains_key(&key) {
                        WatchEvent::Modified { object: o.clone() }
                    } else {
                        WatchEvent::Added { object: o.clone() }
                    });
                }
                self.fresh[stream]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, obj);
            }
            Event::InitDone => {
                let fresh = self.fresh[stream].take().unwrap_or_default();
                for (key, old) in &self.known[stream] {
                    if !fresh.contains_key(key)
                        && let Some(o) = old
                    {
                        out.push(WatchEvent::Deleted { object: o.clone() });
                    }
                }
                self.known[stream] = fresh;
                self.listed[stream] = true;
                if !self.synced && self.listed.iter().all(|l| *l) {
                    self.synced = true;
                    out.push(WatchEvent::Synced);
                }
            }
            Event::Apply(item) => {
                let key = item.key();
                if let Item::Object(o) = item {
                    let known = self.known[stream].insert(key, Some(o.clone()));
                    out.push(if known.is_some() {
                        WatchEvent::Modified { object: o }
                    } else {
                        WatchEvent::Added { object: o }
                    });
                } else {
                    self.known[stream].insert(key, None);
                }
            }
            Event::Delete(item) => {
                let key = item.key();
                self.known[stream].remove(&key);
                if let Item::Object(o) = item {
                    out.push(WatchEvent::Deleted { object: o });
                }
            }
        }
        out
    }
}

/// Starts the informers on a thread of their own; events go to `tx` until
/// it closes.
pub(super) fn spawn(kubeconfig: &Path, node: &str, tx: Sender<Input>) -> std::io::Result<()> {
    spawn_selecting(kubeconfig, node, tx, true)
}

/// [`spawn`], with kube-proxy's label selectors or (`selecting` false, the
/// `ignore-proxy-labels` fault) without them.
pub(super) fn spawn_selecting(
    kubeconfig: &Path,
    node: &str,
    tx: Sender<Input>,
    selecting: bool,
) -> std::io::Result<()> {
    let path: PathBuf = kubeconfig.to_path_buf();
    let node = node.to_string();
    std::thread::Builder::new()
        .name("informers".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("agent {node}: starting the informers' runtime: {e}");
                    let _ = tx.send(Input::Stop("informers could not start"));
                    return;
                }
            };
            if let Err(e) = rt.block_on(run(&path, &node, &tx, selecting)) {
                tracing::error!("agent {node}: informers: {e:#}");
                let _ = tx.send(Input::Stop("informers failed"));
            }
        })
        .map(|_| ())
}

async fn client(path: &Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// The same watcher event, for another item type.
fn item<K>(e: Event<K>, f: impl Fn(K) -> Item) -> Event<Item> {
    match e {
        Event::Apply(k) => Event::Apply(f(k)),
        Event::Delete(k) => Event::Delete(f(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(f(k)),
        Event::InitDone => Event::InitDone,
    }
}

async fn run(path: &Path, node: &str, tx: &Sender<Input>, selecting: bool) -> anyhow::Result<()> {
    let client = client(path).await?;
    let (svc_labels, slice_labels) = if selecting {
        (PROXY_SELECTOR, SLICE_SELECTOR)
    } else {
        ("", "")
    };
    // kube-proxy's Service informer also leaves headless Services out by field.
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default()
            .labels(svc_labels)
            .fields(SERVICE_FIELDS),
    )
    .default_backoff()
    .map(|r| {
        (
            0usize,
            r.map(|e| item(e, |s| Item::Object(ApiObject::Service(Box::new(s))))),
        )
    });
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(slice_labels),
    )
    .default_backoff()
    .map(|r| {
        (
            1usize,
            r.map(|e| item(e, |s| Item::Object(ApiObject::EndpointSlice(Box::new(s))))),
        )
    });
    let nodes = watcher::watcher(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .default_backoff()
    .map(|r| (2usize, r.map(|e| item(e, |n| Item::Node(Box::new(n))))));
    let mut all = futures::stream::select_all([services.boxed(), slices.boxed(), nodes.boxed()]);
    let mut inf = Informers::default();
    let mut errors = 0u64;
    while let Some((stream, r)) = all.next().await {
        match r {
            Ok(ev) => {
                for e in inf.on(stream, ev) {
                    if tx.send(Input::Event(Box::new(e))).is_err() {
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                // The watcher backs off and resumes; say so, sparingly.
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!("agent {node}: watch error {errors} (retrying): {e}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: &str) -> Item {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.metadata.resource_version = Some(rv.into());
        Item::Object(ApiObject::Service(Box::new(s)))
    }

    fn types(evs: &[WatchEvent]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                WatchEvent::Added { object } => format!("ADDED {}", object.key()),
                WatchEvent::Modified { object } => format!("MODIFIED {}", object.key()),
                WatchEvent::Deleted { object } => format!("DELETED {}", object.key()),
                WatchEvent::Synced => "SYNCED".into(),
            })
            .collect()
    }

    #[test]
    fn synced_after_all_three_lists_and_relists_delete_what_vanished() {
        let mut inf = Informers::default();
        let mut out = Vec::new();
        out.extend(inf.on(0, Event::Init));
        out.extend(inf.on(0, Event::InitApply(svc("a", "1"))));
        out.extend(inf.on(0, Event::InitApply(svc("b", "2"))));
        out.extend(inf.on(0, Event::InitDone));
        out.extend(inf.on(1, Event::Init));
        out.extend(inf.on(1, Event::InitDone));
        assert!(!out.iter().any(|e| matches!(e, WatchEvent::Synced)));
        out.extend(inf.on(2, Event::Init));
        out.extend(inf.on(2, Event::InitDone));
        assert_eq!(
            types(&out),
            ["ADDED default/a", "ADDED default/b", "SYNCED"]
        );
        // A relist that lacks b: b is deleted, a is an update; no second SYNCED.
        let mut out = Vec::new();
        out.extend(inf.on(0, Event::Init));
        out.extend(inf.on(0, Event::InitApply(svc("a", "5"))));
        out.extend(inf.on(0, Event::InitDone));
        assert_eq!(types(&out), ["MODIFIED default/a", "DELETED default/b"]);
        let out = inf.on(0, Event::Apply(svc("c", "6")));
        assert_eq!(types(&out), ["ADDED default/c"]);
        let out = inf.on(0, Event::Delete(svc("c", "7")));
        assert_eq!(types(&out), ["DELETED default/c"]);
    }
}
