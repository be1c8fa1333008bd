//! Can this host run the ebpf backend? The object must have been built,
//! and the kernel must create its maps, pass every program through the
//! verifier and attach tc programs. The probe loads and attaches for real,
//! inside a throwaway network namespace (attached to its `lo`), so the
//! caller's namespace is never touched.

use std::net::Ipv4Addr;

use super::loader::{Hook, LoadError, NodeConfig, Programs};
use super::object;
use crate::Unavailable;
use crate::kernel::probe::in_throwaway_netns;

pub fn capability() -> Result<(), Unavailable> {
    object::bytes()?;
    in_throwaway_netns(|| probe().map_err(explain))?
}

fn probe() -> Result<(), LoadError> {
    let cfg = NodeConfig {
        node_ip: Ipv4Addr::new(192, 0, 2, 1),
        gateway_ip: Ipv4Addr::new(10, 244, 0, 1),
        pod_cidr: "10.244.0.0/24".parse().expect("constant"),
        cluster_cidr: "10.244.0.0/16".parse().expect("constant"),
        faults: 0,
        nodeport_on: super::loader::NODEPORT_ON_NODE_IP,
    };
    let mut programs = Programs::load(&cfg)?;
    programs.attach("lo", Hook::FromPod)?;
    programs.attach("lo", Hook::FromLo)
}

fn explain(e: LoadError) -> Unavailable {
    let text = e.to_string();
    let eperm = text.contains("Operation not permitted") || text.contains("os error 1)");
    Unavailable::new(match e {
        LoadError::NoObject(u) => return u,
        LoadError::Object(_) if eperm => format!(
            "the kernel refused to create the ebpf backend's BPF maps: run as root (CAP_BPF \
             and CAP_NET_ADMIN): {text}"
        ),
        LoadError::Object(_) => format!(
            "the kernel refused the ebpf backend's BPF object (hash, LRU hash and per-CPU \
             array maps with BTF): {text}"
        ),
        LoadError::Program { .. } => format!(
            "the kernel does not accept the ebpf backend's tc programs (BPF_PROG_TYPE_SCHED_CLS \
             with bpf_redirect_neigh, bpf_fib_lookup and bpf_skb_change_tail, Linux 5.10 or \
             newer): {text}"
        ),
        LoadError::Attach { .. } => format!(
            "the kernel cannot attach tc programs to a link in a private network namespace \
             (needs tcx, Linux 6.6, or the clsact qdisc, CONFIG_NET_CLS_ACT): {text}"
        ),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_loads_and_attaches_the_programs() {
        crate::require_netns!();
        if let Err(e) = super::super::object::bytes() {
            eprintln!("SKIP: {e}");
            return;
        }
        super::capability().unwrap();
    }
}
