//! What the backends' tests share: one node to sync for, and namespaces
//! with echo servers to send traffic to.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::model::NodeContext;

/// The echo servers' TCP port.
pub const TCP_PORT: u16 = 8080;
/// The echo servers' UDP port.
pub const UDP_PORT: u16 = 5353;

/// The node every backend test syncs for; a test that needs other
/// addresses overrides them (`NodeContext { pod_cidr, ..node() }`).
pub fn node() -> NodeContext {
    NodeContext {
        node_name: "n0".into(),
        node_ip: Ipv4Addr::new(192, 168, 0, 2),
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        run_prefix: "t".into(),
        bridge: "cni0".into(),
        uplink: "eth0".into(),
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace on a thread of its own whose TCP ([`TCP_PORT`]) and
/// UDP ([`UDP_PORT`]) servers on `ip` answer `<ip> <peer address>`, until
/// it is dropped (or after five minutes).
pub struct Host {
    pub ip: Ipv4Addr,
    jobs: mpsc::Sender<Job>,
}

impl Host {
    /// A new namespace whose servers bind `ip`; returns it and the path of
    /// its namespace (for `ip link ... netns`). The first [`Host::run`]
    /// job runs before the servers start: it sets the namespace up.
    pub fn spawn(ip: Ipv4Addr) -> (Host, String) {
        let (path_tx, path_rx) = mpsc::channel::<String>();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let tid = nix::unistd::gettid();
            // Not `self`: that would be the `ip` process opening the path.
            let _ = path_tx.send(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
            let Ok(setup) = job_rx.recv() else { return };
            setup();
            serve(ip, &job_rx);
        });
        (
            Host { ip, jobs },
            path_rx.recv().expect("namespace thread started"),
        )
    }

    /// Runs `f` in this namespace (on a thread of its own, so the servers
    /// keep serving) and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("namespace thread alive");
        rx.recv_timeout(Duration::from_secs(60))
            .expect("job finished in time")
    }
}

/// The servers, until the host's handle is dropped; jobs run on threads
/// spawned here, which inherit the namespace.
fn serve(on: Ipv4Addr, jobs: &mpsc::Receiver<Job>) {
    let tcp = TcpListener::bind((on, TCP_PORT)).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind((on, UDP_PORT)).unwrap();
    udp.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let mut idle = true;
        match jobs.try_recv() {
            Ok(job) => {
                std::thread::spawn(job);
                idle = false;
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if let Ok((mut conn, peer)) = tcp.accept() {
            let _ = conn.write_all(format!("{on} {}", peer.ip()).as_bytes());
            idle = false;
        }
        if let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{on} {}", peer.ip()).as_bytes(), peer);
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
