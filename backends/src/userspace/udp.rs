//! The UDP proxy: one socket per front receives the clients' datagrams;
//! each client (address and port) gets a session, a socket connected to the
//! endpoint it was given, whose replies a task of its own sends back
//! through the front's socket. A session ends after an idle timeout, when
//! its endpoint refuses (ICMP port unreachable), or when the endpoint
//! leaves the service.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::policy::{Front, Pool};
use super::service::{Counters, ServiceProxy};
use super::sessions::{Activity, Key, Session};

/// How long a session lives without a datagram either way: the kernel's
/// own UDP conntrack timeout (`nf_conntrack_udp_timeout`), so a client sees
/// the same stickiness as through kube-proxy's other modes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Serves one front until the task is aborted.
pub async fn serve(listener: Arc<UdpSocket>, svc: Arc<ServiceProxy>, front: Front, idle: Duration) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match listener.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(
                    "{}: UDP receive on the {} front: {e}",
                    svc.name,
                    front.as_str()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((upstream, activity)) = session_for(&listener, &svc, front, from, idle) else {
            Counters::add(&svc.counters.no_endpoint, 1);
            continue;
        };
        // A send error is an ICMP error from an earlier datagram; the
        // session's reply task sees it too and ends the session.
        if let Ok(sent) = upstream.send(&buf[..n]).await {
            activity.touch();
            Counters::add(&svc.counters.bytes_to_endpoints, sent as u64);
        }
    }
}

/// The client's session, made on its first datagram.
fn session_for(
    listener: &Arc<UdpSocket>,
    svc: &Arc<ServiceProxy>,
    front: Front,
    client: SocketAddr,
    idle: Duration,
) -> Option<(Arc<UdpSocket>, Arc<Activity>)> {
    let key = (front, client);
    let mut map = svc.sessions.map.lock().expect("sessions lock");
    if let Some(s) = map.get(&key) {
        return Some((s.upstream.clone(), s.activity.clone()));
    }
    let (pool, endpoint) = connect_any(svc, front, client.ip())?;
    let upstream = Arc::new(endpoint.1);
    let activity = Arc::new(Activity::new());
    let id = svc.sessions.next_id.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(replies(
        listener.clone(),
        upstream.clone(),
        svc.clone(),
        key,
        id,
        activity.clone(),
        idle,
    ))
    .abort_handle();
    map.insert(
        key,
        Session {
            id,
            pool,
            endpoint: endpoint.0,
            upstream: upstream.clone(),
            activity: activity.clone(),
            task,
        },
    );
    Counters::add(&svc.counters.udp_sessions, 1);
    Some((upstream, activity))
}

/// A socket connected to the next endpoint; an endpoint the node cannot
/// send to (no route) is skipped for the one after it, as for TCP.
fn connect_any(
    svc: &ServiceProxy,
    front: Front,
    client: IpAddr,
) -> Option<(Pool, (SocketAddr, UdpSocket))> {
    let mut reset = false;
    for _ in 0..super::tcp::DIAL_TIMEOUTS.len() {
        let (pool, ep) = svc.pick(front, client, reset)?;
        match connect(ep) {
            Ok(sock) => return Some((pool, (ep, sock))),
            Err(e) => {
                tracing::debug!("{}: UDP socket to {ep}: {e}", svc.name);
                Counters::add(&svc.counters.connect_failures, 1);
                reset = true;
            }
        }
    }
    None
}

fn connect(ep: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = match ep {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = std::net::UdpSocket::bind((any, 0))?;
    sock.connect(ep)?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock)
}

/// Sends the endpoint's replies to the client until the session idles out
/// or the endpoint refuses.
async fn replies(
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    svc: Arc<ServiceProxy>,
    key: Key,
    id: u64,
    activity: Arc<Activity>,
    idle: Duration,
) {
    loop {
        let left = idle.saturating_sub(activity.idle());
        if left.is_zero() {
            break;
        }
        let mut buf = Vec::with_capacity(MAX_DATAGRAM);
        match tokio::time::timeout(left, upstream.recv_buf(&mut buf)).await {
            // Woken by the timer: the client may have sent meanwhile.
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::debug!("{}: session of {} ends: {e}", svc.name, key.1);
                break;
            }
            Ok(Ok(n)) => {
                activity.touch();
                Counters::add(&svc.counters.bytes_from_endpoints, n as u64);
                if listener.send_to(&buf[..n], key.1).await.is_err() {
                    break;
                }
            }
        }
    }
    svc.sessions.remove(key, id);
}
