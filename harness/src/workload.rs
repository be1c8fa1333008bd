//! The pods' workloads: TCP and UDP echo servers on every pod's
//! containerPorts, all served by one process. A socket opened by a thread
//! that has entered a pod's namespace stays in that namespace, so one tokio
//! runtime serves every pod.
//!
//! TCP ports speak agnhost netexec's HTTP API (`GET /hostname`,
//! `/clientip`, `/echo?msg=`, `/healthz`) and, for the probe engine, a
//! one-line protocol: send `whoami\n` (or `hostname`, `clientip`,
//! `echo TEXT`), read the answer until the server closes. UDP answers the
//! same words in one datagram, as netexec's UDP server does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use svclab_backends::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::{NetNs, NetNsGuard};

/// One pod's servers, as the workload process is told about them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodServers {
    /// `namespace/name`
    pub pod: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a lab with IPv6: the pod answers on both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub ports: Vec<(u16, Protocol)>,
}

/// The answer to `whoami`: who served, and whom it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// `namespace/name` of the pod that answered.
    pub pod: String,
    /// The pod's address in the family the connection came in on.
    pub ip: IpAddr,
    pub port: u16,
    /// The client address the server saw.
    pub peer: SocketAddr,
}

impl Whoami {
    pub fn parse(text: &str) -> Option<Whoami> {
        serde_json::from_str(text.trim()).ok()
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 4096;

/// Whether socket(2) failed because the kernel has no such protocol (SCTP
/// on a kernel built without it).
fn no_such_protocol(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT) | Some(libc::ESOCKTNOSUPPORT)
    )
}

/// Opens a listening TCP or SCTP (one-to-one style) or bound UDP socket on
/// `0.0.0.0:port` (or `[::]:port`, IPv6 only) inside `netns`.
fn open_in(netns: &NetNs, port: u16, proto: Protocol, v6: bool) -> io::Result<Socket> {
    let fd = netns.open().map_err(io::Error::other)?;
    let _inside = NetNsGuard::enter(fd.as_fd(), &netns.name).map_err(io::Error::other)?;
    let ty = match proto {
        Protocol::Udp => Type::DGRAM,
        _ => Type::STREAM,
    };
    let protocol = (proto == Protocol::Sctp).then(|| socket2::Protocol::from(libc::IPPROTO_SCTP));
    let s = Socket::new(if v6 { Domain::IPV6 } else { Domain::IPV4 }, ty, protocol)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    let any: IpAddr = if v6 {
        s.set_only_v6(true)?;
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    s.bind(&SocketAddr::from((any, port)).into())?;
    if proto != Protocol::Udp {
        s.listen(4096)?;
    }
    Ok(s)
}

/// Binds every pod's sockets (on the calling thread) and serves them on the
/// current tokio runtime until the runtime stops. Returns how many sockets.
pub async fn serve(pods: Vec<PodServers>) -> anyhow::Result<usize> {
    let bound = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let mut out = Vec::new();
        for pod in pods {
            let ns = NetNs::new(&pod.netns);
            let pod = Arc::new(pod);
            let families: &[bool] = if pod.ip6.is_some() {
                &[false, true]
            } else {
                &[false]
            };
            for &(port, proto) in &pod.ports {
                for &v6 in families {
                    let s = match open_in(&ns, port, proto, v6) {
                        Ok(s) => s,
                        // A kernel without SCTP: its ports stay closed, and
                        // the sctp check says why it skips.
                        Err(e) if proto == Protocol::Sctp && no_such_protocol(&e) => continue,
                        Err(e) => {
                            anyhow::bail!("pod {}: listening on {port}/{proto}: {e}", pod.pod)
                        }
                    };
                    out.push((pod.clone(), port, proto, s));
                }
            }
        }
        Ok(out)
    })
    .await??;
    let n = bound.len();
    for (pod, port, proto, sock) in bound {
        match proto {
            Protocol::Udp => {
                let s = tokio::net::UdpSocket::from_std(sock.into())?;
                tokio::spawn(serve_udp(pod, port, s));
            }
            // An SCTP one-to-one socket accepts, reads and writes as a
            // TCP one does.
            _ => {
                let l = tokio::net::TcpListener::from_std(sock.into())?;
                tokio::spawn(serve_tcp(pod, port, l));
            }
        }
    }
    Ok(n)
}

async fn serve_tcp(pod: Arc<PodServers>, port: u16, listener: tokio::net::TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            let _ = handle_tcp(&pod, port, stream, peer).await;
        });
    }
}

async fn handle_tcp(
    pod: &PodServers,
    port: u16,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    // Read until a full line (or the end of HTTP headers) has arrived.
    let request = loop {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let is_http = is_http(&text);
        let complete = if is_http {
            text.contains("\r\n\r\n") || text.contains("\n\n")
        } else {
            text.contains('\n')
        };
        if complete || n == 0 || buf.len() >= MAX_REQUEST {
            break text.into_owned();
        }
    };
    let peer = unmapped(peer);
    let reply = if is_http(&request) {
        http_reply(pod, port, &request, peer)
    } else {
        let mut line = command_reply(pod, port, request.lines().next().unwrap_or(""), peer, "tcp");
        line.push('\n');
        line
    };
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn is_http(text: &str) -> bool {
    ["GET ", "HEAD ", "POST ", "PUT "]
        .iter()
        .any(|m| text.starts_with(m))
}

/// An IPv4 peer seen on an IPv6 socket (never here: those sockets are
/// IPv6 only) is shown as IPv4.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), v.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn whoami_json(pod: &PodServers, port: u16, peer: SocketAddr) -> String {
    serde_json::to_string(&Whoami {
        pod: pod.pod.clone(),
        ip: match (peer, pod.ip6) {
            (SocketAddr::V6(_), Some(ip6)) => ip6.into(),
            _ => pod.ip.into(),
        },
        port,
        peer,
    })
    .expect("plain struct")
}

fn pod_name(pod: &PodServers) -> &str {
    pod.pod.rsplit('/').next().unwrap_or(&pod.pod)
}

/// The one-line protocol, shared by TCP and UDP.
fn command_reply(
    pod: &PodServers,
    port: u16,
    line: &str,
    peer: SocketAddr,
    _proto: &str,
) -> String {
    let line = line.trim();
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "hostname" => pod_name(pod).to_string(),
        "clientip" => peer.to_string(),
        "echo" => arg.to_string(),
        _ => whoami_json(pod, port, peer),
    }
}

/// agnhost netexec's HTTP endpoints.
fn http_reply(pod: &PodServers, port: u16, request: &str, peer: SocketAddr) -> String {
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body, ctype) = match path {
        "/hostname" => ("200 OK", pod_name(pod).to_string(), "text/plain"),
        "/clientip" => ("200 OK", peer.to_string(), "text/plain"),
        "/healthz" => ("200 OK", "ok".to_string(), "text/plain"),
        "/whoami" => ("200 OK", whoami_json(pod, port, peer), "application/json"),
        "/echo" => {
            let msg = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("msg="))
                .map(percent_decode)
                .unwrap_or_default();
            ("200 OK", msg, "text/plain")
        }
        "/" => ("200 OK", "NOW: svclab netexec".to_string(), "text/plain"),
        _ => (
            "404 Not Found",
            "404 page not found\n".to_string(),
            "text/plain",
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve_udp(pod: Arc<PodServers>, port: u16, sock: tokio::net::UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let reply = command_reply(
            &pod,
            port,
            text.lines().next().unwrap_or(""),
            unmapped(peer),
            "udp",
        );
        let _ = sock.send_to(reply.as_bytes(), peer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodServers {
        PodServers {
            pod: "default/web-0".into(),
            netns: "x".into(),
            ip: Ipv4Addr::new(10, 244, 0, 3),
            ip6: None,
            ports: vec![],
        }
    }

    #[test]
    fn netexec_http_answers() {
        let peer = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 2), 40000));
        let r = http_reply(
            &pod(),
            8080,
            "GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n",
            peer,
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nweb-0"), "{r}");
        let r = http_reply(&pod(), 8080, "GET /clientip HTTP/1.1\r\n\r\n", peer);
        assert!(r.ends_with("10.244.1.2:40000"), "{r}");
        let r = http_reply(
            &pod(),
            8080,
            "GET /echo?msg=hello%20there+you HTTP/1.1\r\n\r\n",
            peer,
        );
        assert!(r.ends_with("hello there you"), "{r}");
        assert!(
            http_reply(&pod(), 8080, "GET /nope HTTP/1.1\r\n\r\n", peer)
                .starts_with("HTTP/1.1 404")
        );
    }

    #[test]
    fn line_protocol_and_whoami_round_trip() {
        let peer = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 2), 40000));
        assert_eq!(command_reply(&pod(), 80, "hostname", peer, "udp"), "web-0");
        assert_eq!(
            command_reply(&pod(), 80, "clientip\n", peer, "udp"),
            "10.244.1.2:40000"
        );
        assert_eq!(command_reply(&pod(), 80, "echo a b", peer, "udp"), "a b");
        let w = Whoami::parse(&command_reply(&pod(), 8080, "whoami", peer, "tcp")).unwrap();
        assert_eq!(w.pod, "default/web-0");
        assert_eq!(w.port, 8080);
        assert_eq!(w.peer, peer);
    }
}
