//! The probe engine: TCP connects and UDP exchanges from a vantage point's
//! network namespace to a Service VIP or a node port. Each vantage point
//! gets one thread that lives inside its namespace and runs a
//! single-threaded tokio runtime, so every socket a probe opens there is in
//! that namespace. Every probe has a timeout; every batch is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use svclab_backends::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Where a probe comes from.
#[derive(Clone, Debug)]
pub struct Vantage {
    /// `pod`, `node`, `external`, or `hairpin`.
    pub kind: &'static str,
    pub name: String,
    pub node: Option<String>,
    pub netns: String,
    pub ip: IpAddr,
}

use crate::netns::{NetNs, NetNsGuard};
use crate::workload::Whoami;

/// What happened to one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// An echo server answered.
    Answered,
    /// TCP RST, ICMP port unreachable, or EPERM from the sender's own
    /// netfilter (a REJECT in the OUTPUT path fails `send` at once).
    Refused,
    /// ICMP host/net unreachable (or no route).
    Unreachable,
    Timeout,
    /// Anything else, with the error.
    Error(String),
}

/// One probe to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    pub target: SocketAddr,
    pub protocol: Protocol,
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Bind this local port (UDP: to keep one conntrack tuple across probes).
    pub source_port: Option<u16>,
}

impl ProbeSpec {
    /// An IPv4 or IPv6 target (`SocketAddrV4`, `SocketAddrV6` or either).
    pub fn new(target: impl Into<SocketAddr>, protocol: Protocol, timeout: Duration) -> Self {
        ProbeSpec {
            target: target.into(),
            protocol,
            timeout,
            source_port: None,
        }
    }
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub spec: ProbeSpec,
    pub outcome: Outcome,
    /// Who answered and which source address it saw.
    pub answer: Option<Whoami>,
    /// The probe's own source address.
    pub local: Option<SocketAddr>,
    /// TCP: connect() time; UDP: request to answer.
    #[serde(with = "micros")]
    pub latency: Duration,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// A thread inside one network namespace, running a single-threaded
/// runtime that probes are spawned onto.
pub struct NsRuntime {
    netns: String,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    pub fn start(netns: &str) -> anyhow::Result<NsRuntime> {
        let ns = NetNs::new(netns);
        let fd = ns.open()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let name = netns.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("probe:{}", short(netns)))
            .spawn(move || {
                let guard = NetNsGuard::enter(fd.as_fd(), &name);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match (guard, rt) {
                    (Ok(_guard), Ok(rt)) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    (Err(e), _) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!(e)));
                    }
                    (_, Err(e)) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!(e)));
                    }
                }
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("probe thread for {netns} died"))??;
        Ok(NsRuntime {
            netns: netns.to_string(),
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `fut` on this namespace's thread.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn short(netns: &str) -> &str {
    netns.rsplit('-').next().unwrap_or(netns)
}

/// Probes from many vantage points; one [`NsRuntime`] per namespace, made
/// when first needed.
#[derive(Default)]
pub struct Prober {
    runtimes: Mutex<HashMap<String, Arc<NsRuntime>>>,
}

impl Prober {
    pub fn new() -> Self {
        Prober::default()
    }

    pub fn vantage(&self, netns: &str) -> anyhow::Result<Arc<NsRuntime>> {
        let mut map = self.runtimes.lock().expect("prober lock");
        if let Some(rt) = map.get(netns) {
            return Ok(rt.clone());
        }
        let rt = Arc::new(NsRuntime::start(netns)?);
        map.insert(netns.to_string(), rt.clone());
        Ok(rt)
    }

    /// Runs one probe from `netns`.
    pub async fn probe(&self, netns: &str, spec: ProbeSpec) -> anyhow::Result<ProbeResult> {
        let rt = self.vantage(netns)?;
        cancellable(rt.spawn(run_probe(spec))).await
    }

    /// Runs `specs` from `netns`, at most `concurrency` at a time; results in
    /// the order of `specs`.
    pub async fn probe_many(
        &self,
        netns: &str,
        specs: Vec<ProbeSpec>,
        concurrency: usize,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        let rt = self.vantage(netns)?;
        let batch = rt.spawn(async move {
            use futures::StreamExt;
            futures::stream::iter(specs)
                .map(run_probe)
                .buffered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await
        });
        cancellable(batch).await
    }

    /// Drops the vantage threads.
    pub fn close(&self) {
        self.runtimes.lock().expect("prober lock").clear();
    }
}

/// A probe batch is cancelled when a stop signal arrives, and when its
/// caller is (a check cancelled by a stop signal drops it): its task is
/// aborted, so its sockets close at once, and the caller gets
/// [`Interrupted`] instead of results the teardown could have caused.
pub async fn cancellable<T>(task: tokio::task::JoinHandle<T>) -> anyhow::Result<T> {
    let mut task = AbortOnDrop(task);
    if let Some(sig) = crate::stop::stop_signal() {
        return Err(Interrupted(sig).into());
    }
    tokio::select! {
        biased;
        sig = crate::stop::stopped() => Err(Interrupted(sig).into()),
        r = &mut task.0 => Ok(r?),
    }
}

/// Aborts the task when dropped (a no-op once it has finished).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Work cut short by a stop signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", crate::stop::signal_name(*.0))]
pub struct Interrupted(pub i32);

/// One probe, on whatever namespace the current thread is in.
pub async fn run_probe(spec: ProbeSpec) -> ProbeResult {
    match spec.protocol {
        Protocol::Udp => udp_probe(spec).await,
        Protocol::Tcp | Protocol::Sctp => stream_probe(spec).await,
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) | Some(libc::EPERM) => Outcome::Refused,
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => Outcome::Unreachable,
        Some(libc::ETIMEDOUT) => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

/// The wildcard address of `target`'s family.
fn unspecified(target: SocketAddr) -> std::net::IpAddr {
    match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn result(spec: ProbeSpec, outcome: Outcome, latency: Duration) -> ProbeResult {
    ProbeResult {
        spec,
        outcome,
        answer: None,
        local: None,
        latency,
    }
}

/// A stream socket, bound to the spec's source port if it has one: TCP, or
/// SCTP one-to-one style (which connects, reads and writes as TCP does).
fn stream_socket(spec: &ProbeSpec) -> Result<socket2::Socket, String> {
    use socket2::{Domain, Socket, Type};
    let protocol = match spec.protocol {
        Protocol::Sctp => socket2::Protocol::from(libc::IPPROTO_SCTP),
        _ => socket2::Protocol::TCP,
    };
    let s = Socket::new(
        Domain::for_address(spec.target),
        Type::STREAM,
        Some(protocol),
    )
    .map_err(|e| format!("{} socket: {e}", spec.protocol))?;
    s.set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    if let Some(port) = spec.source_port {
        let _ = s.set_reuse_address(true);
        s.bind(&SocketAddr::new(unspecified(spec.target), port).into())
            .map_err(|e| format!("bind :{port}: {e}"))?;
    }
    Ok(s)
}

/// Connects a non-blocking stream socket; the result comes with
/// writability, as tokio's own TCP connect does.
async fn connect_stream(
    s: socket2::Socket,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(s))?;
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

async fn stream_probe(spec: ProbeSpec) -> ProbeResult {
    let start = Instant::now();
    let deadline = start + spec.timeout;
    let sock = match stream_socket(&spec) {
        Ok(s) => s,
        Err(e) => return result(spec, Outcome::Error(e), Duration::ZERO),
    };
    let connected = tokio::time::timeout(spec.timeout, connect_stream(sock, spec.target)).await;
    let latency = start.elapsed();
    let mut stream = match connected {
        Err(_) => return result(spec, Outcome::Timeout, latency),
        Ok(Err(e)) => return result(spec, classify(&e), latency),
        Ok(Ok(s)) => s,
    };
    let local = stream.local_addr().ok();
    let exchange = async {
        stream.write_all(b"whoami\n").await?;
        let mut buf = Vec::with_capacity(160);
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let outcome = tokio::time::timeout_at(deadline.into(), exchange).await;
    let mut r = result(spec, Outcome::Timeout, latency);
    r.local = local;
    match outcome {
        Err(_) => {}
        Ok(Err(e)) => r.outcome = classify(&e),
        Ok(Ok(buf)) => match Whoami::parse(&String::from_utf8_lossy(&buf)) {
            Some(w) => {
                r.outcome = Outcome::Answered;
                r.answer = Some(w);
                if spec.protocol == Protocol::Tcp {
                    abort_on_close(&stream);
                }
            }
            None => {
                r.outcome = Outcome::Error(format!(
                    "not an echo server's answer: {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(80)])
                ))
            }
        },
    }
    r
}

/// Makes dropping `stream` send a RST, not a FIN, once the whole answer
/// (up to the endpoint's FIN) is in: the endpoint's socket, which closed
/// first, then leaves no TIME_WAIT behind.
///
/// With FINs every answered probe left the endpoint a TIME_WAIT socket for
/// 60 s, keyed by the source address and port it saw, and the lab's probes
/// are thousands of short connections from a handful of addresses. A proxy
/// that DNATs outside netfilter's NAT, which would pick a free tuple, does
/// not keep those unique (IPVS's connection table; the README says how the
/// eBPF backend does), so a later probe could reach an endpoint with the
/// tuple of such a socket, which took its SYN for an old duplicate (PAWS).
/// In the VM stage about one IPVS NodePort probe in 1,500 timed out that
/// way, in 2 runs of 5, with `TcpExtPAWSEstab` up to 57 in an endpoint's
/// namespace; with RSTs no run of 6 failed. The collision is the kernel's
/// (kube-proxy's IPVS mode has it too), the checks are about what a proxy
/// programs, and `ebpf::traffic_tests` still reproduces the collision on
/// purpose, with its own sockets.
fn abort_on_close(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn udp_probe(spec: ProbeSpec) -> ProbeResult {
    let start = Instant::now();
    let bind = SocketAddr::new(unspecified(spec.target), spec.source_port.unwrap_or(0));
    let sock = match bind_udp(bind) {
        Ok(s) => s,
        Err(e) => {
            return result(
                spec,
                Outcome::Error(format!("bind {bind}: {e}")),
                Duration::ZERO,
            );
        }
    };
    if let Err(e) = sock.connect(spec.target).await {
        return result(spec, classify(&e), start.elapsed());
    }
    let local = sock.local_addr().ok();
    let exchange = async {
        sock.send(b"whoami").await?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).await?;
        Ok::<_, std::io::Error>(buf[..n].to_vec())
    };
    let outcome = tokio::time::timeout(spec.timeout, exchange).await;
    let mut r = result(spec, Outcome::Timeout, start.elapsed());
    r.local = local;
    match outcome {
        Err(_) => {}
        Ok(Err(e)) => r.outcome = classify(&e),
        Ok(Ok(buf)) => match Whoami::parse(&String::from_utf8_lossy(&buf)) {
            Some(w) => {
                r.outcome = Outcome::Answered;
                r.answer = Some(w);
            }
            None => r.outcome = Outcome::Error("not an echo server's answer".into()),
        },
    }
    r
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    // Only for a fixed port: with SO_REUSEADDR, bind(0) may hand two UDP
    // sockets the same port, and one of them never sees its answer.
    if addr.port() != 0 {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}
