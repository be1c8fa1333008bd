//! The TCP proxy: accept on a front, connect to an endpoint (the next one
//! when a connect fails, with growing timeouts, as kube-proxy's
//! `tryConnect`), then relay both ways until both sides are done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::policy::Front;
use super::service::{Counters, ServiceProxy};

/// One connect attempt per entry, each to the next endpoint.
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Serves one front until the task is aborted; each connection gets a task
/// of its own, which outlives the listener (as kube-proxy left open
/// connections alone when a Service went away).
pub async fn serve(listener: TcpListener, svc: Arc<ServiceProxy>, front: Front) {
    loop {
        match listener.accept().await {
            Ok((inbound, client)) => {
                tokio::spawn(relay(inbound, client, svc.clone(), front));
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!("{}: accept on the {} front: {e}", svc.name, front.as_str());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn relay(mut inbound: TcpStream, client: SocketAddr, svc: Arc<ServiceProxy>, front: Front) {
    let Some(mut outbound) = connect(&svc, front, client).await else {
        Counters::add(&svc.counters.no_endpoint, 1);
        // A reset tells the client at once that nobody will answer.
        let _ = inbound.set_zero_linger();
        return;
    };
    Counters::add(&svc.counters.tcp_connections, 1);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if let Ok((to, from)) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        Counters::add(&svc.counters.bytes_to_endpoints, to);
        Counters::add(&svc.counters.bytes_from_endpoints, from);
    }
}

async fn connect(svc: &ServiceProxy, front: Front, client: SocketAddr) -> Option<TcpStream> {
    let mut reset = false;
    for timeout in DIAL_TIMEOUTS {
        let (_, ep) = svc.pick(front, client.ip(), reset)?;
        match tokio::time::timeout(timeout, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => tracing::debug!("{}: connect to {ep}: {e}", svc.name),
            Err(_) => tracing::debug!("{}: connect to {ep}: no answer in {timeout:?}", svc.name),
        }
        Counters::add(&svc.counters.connect_failures, 1);
        // Retrying the pinned endpoint would fail again: re-pin.
        reset = true;
    }
    None
}
