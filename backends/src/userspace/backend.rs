//! The userspace backend: a tokio runtime in the agent that proxies every
//! service port through listeners of its own, and the iptables rules that
//! send Service traffic to them. A sync opens and closes listeners, hands
//! the proxies their new endpoints, and applies the rule diff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, UdpSocket};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::hooks::{self, FLAVOR, JUMPS};
use super::policy::Front;
use super::ports::{DEFAULT_RANGE, PortAllocator};
use super::rules::{self, ProxyPorts, Rule};
use super::service::ServiceProxy;
use super::{tcp, udp};
use crate::kernel::conntrack::{self, Flush};
use crate::kernel::{dump, iptables};
use crate::model::{
    Endpoint, IpFamily, NodeContext, Protocol, ProxyState, ServicePort, ServicePortName,
    categorize_endpoints,
};
use crate::protocol::SyncMode;
use crate::{Backend, BackendError, BackendOptions, BackendStats, Fault, SyncOutcome, SyncRequest};

/// Runtime worker threads: relaying is cheap, and the lab's machines share
/// few cores between many agents.
const WORKERS: usize = 2;
/// Pending connections per listener, for bursts of probes.
const BACKLOG: u32 = 1024;
/// The fixed rules that send portal traffic to its sub-chain.
const DISPATCH_RULES: u64 = 3 * rules::SHARDS as u64;
/// kube-proxy's userspace mode raised its descriptor limit to this.
const WANTED_FILES: u64 = 64_000;

pub struct UserspaceBackend {
    /// ip6tables and IPv6 sockets for the IPv6 proxier.
    family: IpFamily,
    options: BackendOptions,
    runtime: Option<Runtime>,
    ports: PortAllocator,
    udp_idle: Duration,
    proxies: BTreeMap<ServicePortName, Proxied>,
    /// What each service port has programmed in iptables.
    book: BTreeMap<ServicePortName, Programmed>,
    /// A failed sync leaves the book unsure, so the next one rewrites all
    /// (kube-proxy's needFullSync).
    need_full: bool,
    syncs: u64,
    /// SCTP service ports, which this proxy does not relay.
    unsupported: BTreeSet<ServicePortName>,
}

struct Proxied {
    proxy: Arc<ServiceProxy>,
    protocol: Protocol,
    listeners: BTreeMap<Front, Listener>,
}

impl Proxied {
    fn ports(&self) -> Option<ProxyPorts> {
        Some(ProxyPorts {
            portal: self.listeners.get(&Front::Portal)?.port,
            external: self.listeners.get(&Front::External).map(|l| l.port),
        })
    }
}

struct Listener {
    port: u16,
    task: JoinHandle<()>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Programmed {
    rules: Vec<Rule>,
    /// UDP (address, port) pairs clients reach the Service on: their
    /// conntrack entries go stale when the rules for them change.
    udp_fronts: Vec<(IpAddr, u16)>,
}

impl UserspaceBackend {
    pub fn new(options: &BackendOptions) -> Self {
        UserspaceBackend {
            family: options.family,
            options: options.clone(),
            runtime: None,
            ports: PortAllocator::new(DEFAULT_RANGE),
            udp_idle: udp::IDLE_TIMEOUT,
            proxies: BTreeMap::new(),
            book: BTreeMap::new(),
            need_full: true,
            syncs: 0,
            unsupported: BTreeSet::new(),
        }
    }

    /// The same backend with another UDP session idle timeout.
    pub fn with_udp_idle(mut self, idle: Duration) -> Self {
        self.udp_idle = idle;
        self
    }

    fn listeners(&self) -> u64 {
        self.proxies
            .values()
            .map(|p| p.listeners.len() as u64)
            .sum()
    }

    fn rules(&self) -> u64 {
        self.book
            .values()
            .map(|p| p.rules.len() as u64)
            .sum::<u64>()
            + JUMPS.len() as u64
            + DISPATCH_RULES
    }

    /// Creates or updates the proxy of `svc` and opens or closes its
    /// listeners; returns (opened, closed) listener counts.
    fn ensure_proxy(
        &mut self,
        svc: &ServicePort,
        endpoints: &[Endpoint],
        node: &NodeContext,
        finished: &mut Vec<JoinHandle<()>>,
    ) -> Result<(u64, u64), BackendError> {
        let runtime = self.runtime.as_ref().ok_or_else(not_set_up)?;
        let p = match self.proxies.get_mut(&svc.name) {
            Some(p) => {
                p.proxy.update(svc, endpoints, node);
                p
            }
            None => self.proxies.entry(svc.name.clone()).or_insert(Proxied {
                proxy: Arc::new(ServiceProxy::new(svc, endpoints, node)),
                protocol: svc.protocol,
                listeners: BTreeMap::new(),
            }),
        };
        let mut wanted = vec![Front::Portal];
        if svc.externally_accessible() {
            wanted.push(Front::External);
        }
        let unwanted: Vec<Front> = p
            .listeners
            .keys()
            .filter(|f| !wanted.contains(f))
            .copied()
            .collect();
        let closed = unwanted.len() as u64;
        for front in unwanted {
            if let Some(l) = p.listeners.remove(&front) {
                self.ports.release(l.port);
                l.task.abort();
                finished.push(l.task);
            }
        }
        let mut opened = 0;
        for front in wanted {
            if p.listeners.contains_key(&front) {
                continue;
            }
            let l = open(
                runtime,
                &mut self.ports,
                p.protocol,
                &p.proxy,
                front,
                self.udp_idle,
                self.family,
            )
            .map_err(|e| {
                BackendError::io(
                    format!(
                        "opening the {} proxy port of Service port {}/{}",
                        front.as_str(),
                        svc.name,
                        svc.protocol
                    ),
                    e,
                )
            })?;
            p.listeners.insert(front, l);
            opened += 1;
        }
        Ok((opened, closed))
    }

    /// Closes a service port's listeners and UDP sessions. Returns the
    /// listener tasks, to be awaited so their ports are free afterwards.
    fn stop(&mut self, name: &ServicePortName) -> Vec<JoinHandle<()>> {
        let Some(p) = self.proxies.remove(name) else {
            return Vec::new();
        };
        p.proxy.sessions.clear();
        p.listeners
            .into_values()
            .map(|l| {
                self.ports.release(l.port);
                l.task.abort();
                l.task
            })
            .collect()
    }

    /// Waits until aborted listener tasks are gone (their sockets closed).
    fn join(&self, tasks: Vec<JoinHandle<()>>) {
        if let Some(rt) = &self.runtime
            && !tasks.is_empty()
        {
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
        }
    }

    /// The rules a service port should have now.
    fn wanted(&self, state: &ProxyState, node: &NodeContext, name: &ServicePortName) -> Programmed {
        let (Some(svc), Some(ports)) = (
            state.services.get(name),
            self.proxies.get(name).and_then(Proxied::ports),
        ) else {
            return Programmed::default();
        };
        let has_any = categorize_endpoints(svc, state.endpoints_of(name)).has_any;
        let reject = !self.options.has_fault(Fault::NoReject);
        Programmed {
            rules: rules::service_rules(svc, node, ports, has_any, reject),
            udp_fronts: udp_fronts(svc, node),
        }
    }
}

fn not_set_up() -> BackendError {
    BackendError::Other("userspace backend: sync before setup".into())
}

/// Every (address, port) a UDP service port is reached on.
fn udp_fronts(svc: &ServicePort, node: &NodeContext) -> Vec<(IpAddr, u16)> {
    if svc.protocol != Protocol::Udp {
        return Vec::new();
    }
    let mut v = vec![(svc.cluster_ip, svc.port)];
    v.extend(svc.external_ips.iter().map(|ip| (*ip, svc.port)));
    v.extend(svc.load_balancer_ips.iter().map(|ip| (*ip, svc.port)));
    if let Some(np) = svc.node_port {
        v.extend(node.nodeport_ips().into_iter().map(|ip| (ip, np)));
    }
    v
}

/// Binds a listener for `front` on a free proxy port and starts serving it.
fn open(
    runtime: &Runtime,
    ports: &mut PortAllocator,
    protocol: Protocol,
    proxy: &Arc<ServiceProxy>,
    front: Front,
    udp_idle: Duration,
    family: IpFamily,
) -> std::io::Result<Listener> {
    let _in_runtime = runtime.enter();
    // The IPv6 proxier's listeners take IPv6 only: its rules redirect
    // nothing else to them, and the IPv4 proxier may hold the same port.
    let any = |port| match family {
        IpFamily::IPv4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        IpFamily::IPv6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    };
    let (port, task) = match protocol {
        Protocol::Tcp => {
            let (port, listener) = ports.allocate(|port| {
                let s = match family {
                    IpFamily::IPv4 => TcpSocket::new_v4()?,
                    IpFamily::IPv6 => {
                        let s = TcpSocket::new_v6()?;
                        socket2::SockRef::from(&s).set_only_v6(true)?;
                        s
                    }
                };
                s.set_reuseaddr(true)?;
                s.bind(any(port))?;
                s.listen(BACKLOG)
            })?;
            (
                port,
                runtime.spawn(tcp::serve(listener, proxy.clone(), front)),
            )
        }
        Protocol::Udp => {
            let (port, sock) = ports.allocate(|port| {
                let addr = any(port);
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                if family == IpFamily::IPv6 {
                    s.set_only_v6(true)?;
                }
                s.bind(&addr.into())?;
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s.into())
            })?;
            let serve = udp::serve(Arc::new(sock), proxy.clone(), front, udp_idle);
            (port, runtime.spawn(serve))
        }
        Protocol::Sctp => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the userspace proxy relays TCP and UDP only",
            ));
        }
    };
    Ok(Listener { port, task })
}

/// Raises the soft limit on open files towards the hard one: every
/// listener, connection and UDP session holds a descriptor.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = WANTED_FILES.min(hard);
        if soft < want
            && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        {
            tracing::warn!("userspace backend: raising RLIMIT_NOFILE to {want}: {e}");
        }
    }
}

impl Backend for UserspaceBackend {
    fn setup(&mut self, _node: &NodeContext) -> Result<(), BackendError> {
        raise_file_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("userspace-proxy")
            .enable_all()
            .build()
            .map_err(|e| BackendError::io("starting the userspace proxy's tokio runtime", e))?;
        hooks::ensure(self.family)?;
        self.runtime = Some(runtime);
        Ok(())
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        if self.runtime.is_none() {
            return Err(not_set_up());
        }
        let full = req.mode == SyncMode::Full || self.need_full;
        let names: BTreeSet<ServicePortName> = if full {
            req.state
                .services
                .keys()
                .chain(self.proxies.keys())
                .chain(self.book.keys())
                .cloned()
                .collect()
        } else {
            req.changes.changed.clone()
        };

        // Listeners first, so rules never point at a port nobody holds.
        let mut errors = Vec::new();
        let mut finished = Vec::new();
        let (mut opened, mut closed) = (0u64, 0u64);
        for name in &names {
            let svc = req.state.services.get(name);
            match svc {
                Some(svc) if svc.protocol == Protocol::Sctp => {
                    self.unsupported.insert(name.clone());
                }
                Some(svc) => {
                    match self.ensure_proxy(
                        svc,
                        req.state.endpoints_of(name),
                        req.node,
                        &mut finished,
                    ) {
                        Ok((o, c)) => {
                            opened += o;
                            closed += c;
                        }
                        Err(e) => errors.push(e),
                    }
                }
                None => {
                    self.unsupported.remove(name);
                    let tasks = self.stop(name);
                    closed += tasks.len() as u64;
                    finished.extend(tasks);
                }
            }
        }
        self.join(finished);

        // Then the rule diff, or everything on a full sync.
        let wanted: BTreeMap<ServicePortName, Programmed> = names
            .iter()
            .map(|n| (n.clone(), self.wanted(req.state, req.node, n)))
            .collect();
        let input = if full {
            let mut book = self.book.clone();
            book.retain(|n, _| !names.contains(n));
            book.extend(wanted.clone());
            Some(rules::full_input(
                self.family,
                book.values().flat_map(|p| &p.rules),
            ))
        } else {
            let (mut removed, mut added) = (Vec::new(), Vec::new());
            for (name, want) in &wanted {
                let old = self
                    .book
                    .get(name)
                    .map(|p| p.rules.as_slice())
                    .unwrap_or(&[]);
                removed.extend(old.iter().filter(|r| !want.rules.contains(r)).cloned());
                added.extend(want.rules.iter().filter(|r| !old.contains(r)).cloned());
            }
            rules::partial_input(&removed, &added)
        };
        let written_lines = input.as_deref().map_or(0, |s| {
            s.lines()
                .filter(|l| l.starts_with("-A ") || l.starts_with("-D "))
                .count() as u64
        });
        if let Some(input) = &input {
            if let Some(dir) = &self.options.dump_dir {
                dump::write(dir, req.seq, dump::mode(full), "iptables", input)?;
            }
            if let Err(e) = iptables::restore_in(FLAVOR, self.family, input) {
                self.need_full = true;
                return Err(e);
            }
        }

        // Conntrack entries still send a UDP client to an old proxy port,
        // or past a REJECT that has just gone: clear them wherever the
        // rules for a UDP front changed.
        let mut flushes = Vec::new();
        for (name, want) in wanted {
            let old = self.book.remove(&name).unwrap_or_default();
            if old.rules != want.rules {
                let fronts: BTreeSet<(IpAddr, u16)> = old
                    .udp_fronts
                    .iter()
                    .chain(&want.udp_fronts)
                    .copied()
                    .collect();
                flushes.extend(
                    fronts
                        .into_iter()
                        .map(|(vip, port)| Flush::Service { vip, port }),
                );
            }
            if !want.rules.is_empty() {
                self.book.insert(name, want);
            }
        }
        let now = Instant::now();
        for p in self.proxies.values() {
            p.proxy.expire(now);
        }
        self.need_full = !errors.is_empty();
        self.syncs += 1;
        conntrack::flush(&flushes)?;
        if !errors.is_empty() {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(BackendError::Other(all.join("; ")));
        }
        Ok(SyncOutcome {
            rules: self.rules() + self.listeners(),
            written: written_lines + opened + closed,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        let mut services = serde_json::Map::new();
        let mut sessions = 0;
        let mut pinned = 0;
        for (name, p) in &self.proxies {
            let live = p.proxy.sessions.live();
            let clients = p.proxy.pinned_clients();
            sessions += live;
            pinned += clients;
            let mut detail = p.proxy.counters.snapshot();
            detail["udpSessionsLive"] = live.into();
            detail["pinnedClients"] = clients.into();
            let ports: serde_json::Map<String, serde_json::Value> = p
                .listeners
                .iter()
                .map(|(f, l)| (f.as_str().to_string(), l.port.into()))
                .collect();
            detail["proxyPorts"] = ports.into();
            services.insert(format!("{name}/{}", p.protocol), detail);
        }
        let iptables_rules = self.rules();
        let listeners = self.listeners();
        Ok(BackendStats {
            rules: iptables_rules + listeners,
            detail: serde_json::json!({
                "iptablesRules": iptables_rules,
                "listeners": listeners,
                "servicePorts": self.proxies.len(),
                "udpSessions": sessions,
                "pinnedClients": pinned,
                "syncs": self.syncs,
                "unsupported": self.unsupported.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "services": services,
            }),
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        let names: Vec<ServicePortName> = self.proxies.keys().cloned().collect();
        let tasks: Vec<JoinHandle<()>> = names.iter().flat_map(|n| self.stop(n)).collect();
        self.join(tasks);
        if let Some(rt) = self.runtime.take() {
            // Ends the connections still being relayed.
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        self.book.clear();
        self.need_full = true;
        hooks::remove_all(self.family)
    }
}
