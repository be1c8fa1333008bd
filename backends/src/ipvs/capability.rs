//! Whether this kernel and these tools can run the ipvs backend, and if
//! not, exactly what is missing. The kernel is probed inside a throwaway
//! private network namespace, never the host's.

use std::net::Ipv4Addr;

use super::DEFAULT_SCHEDULER;
use super::netlink::{self, IpvsClient, IpvsError, Op};
use crate::Unavailable;
use crate::kernel::cmd;
use crate::kernel::conntrack;
use crate::kernel::iptables::Flavor;
use crate::kernel::links::Links;
use crate::kernel::probe::in_throwaway_netns;
use crate::model::Protocol;

pub fn capability(flavor: Flavor) -> Result<(), Unavailable> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Unavailable::new(
            "the ipvs backend needs root (CAP_NET_ADMIN) to program IPVS, links and iptables",
        ));
    }
    for tool in ["ipset", flavor.restore(), flavor.save()] {
        if !cmd::have(tool) {
            return Err(Unavailable::new(format!(
                "{tool} is not installed (the ipvs backend needs ipset and {}; ci/setup installs them)",
                flavor.iptables()
            )));
        }
    }
    let missing = in_throwaway_netns(probe_kernel)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unavailable::new(format!(
            "{}: run under `svclab vm`",
            missing.join("; ")
        )))
    }
}

/// Tries everything the backend needs from the kernel (in a throwaway
/// namespace). Returns what is missing.
fn probe_kernel() -> Vec<String> {
    let mut missing = Vec::new();
    match IpvsClient::open() {
        Err(IpvsError::FamilyMissing) => {
            missing.push("kernel lacks IP_VS (no IPVS generic netlink family)".to_string())
        }
        Err(e) => missing.push(format!("IPVS is not usable: {e}")),
        Ok(mut ipvs) => {
            if let Err(e) = probe_scheduler(&mut ipvs, DEFAULT_SCHEDULER) {
                missing.push(e);
            }
        }
    }
    match Links::open().and_then(|mut l| l.ensure_dummy("svclab-probe0")) {
        Ok(_) => {}
        Err(e) => missing.push(format!(
            "kernel cannot create dummy links for kube-ipvs0 (CONFIG_DUMMY): {e}"
        )),
    }
    if let Err(e) = cmd::run(
        "ipset",
        &["create", "svclab-probe", "hash:ip,port,ip"],
        None,
    ) {
        missing.push(format!("kernel ipset support is missing: {e}"));
    }
    if let Err(e) = conntrack::probe() {
        missing.push(e);
    }
    missing
}

/// kube-proxy's own probe: creates and deletes a virtual server on
/// TEST-NET-2 with `scheduler`, which fails if its module is missing.
pub(super) fn probe_scheduler(ipvs: &mut IpvsClient, scheduler: &str) -> Result<(), String> {
    let probe = netlink::VirtualServer {
        key: netlink::ServiceKey {
            protocol: Protocol::Tcp,
            addr: Ipv4Addr::new(198, 51, 100, 0),
            port: 20000,
        },
        scheduler: scheduler.into(),
        flags: 0,
        timeout: 0,
    };
    ipvs.apply(&[Op::NewService(probe.clone()), Op::DelService(probe.key)])
        .map_err(|e| {
            format!(
                "IPVS cannot create a virtual server with scheduler {scheduler:?} (kernel module ip_vs_{scheduler}?): {e}"
            )
        })
}
