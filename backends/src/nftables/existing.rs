//! The service-port chains and affinity sets a table already holds. A full
//! sync lists them from the kernel first, as kube-proxy does, so it can keep
//! endpoint chains that are already right and delete leftovers the
//! bookkeeping does not know about (from an earlier agent, say).

use std::collections::HashSet;

use serde_json::Value;

use crate::model::IpFamily;
use crate::nftables::names::{Family, TABLE};
use crate::{BackendError, kernel::cmd};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    /// Service-port and endpoint chains (the ones with a `/` in the name).
    pub chains: HashSet<String>,
    /// Affinity sets.
    pub sets: HashSet<String>,
}

impl Existing {
    /// Lists the `ip kube-proxy` table's per-service objects. Listing the
    /// whole `ip` family never fails on a missing table; that is just an
    /// empty list.
    pub fn list(family: IpFamily) -> Result<Existing, BackendError> {
        let ip = Family(family).ip();
        Ok(Existing {
            chains: list_names(ip, "chains", "chain", |n| n.contains('/'))?,
            sets: list_names(ip, "sets", "set", |n| n.starts_with("affinity-"))?,
        })
    }
}

fn list_names(
    ip: &str,
    what: &str,
    kind: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<HashSet<String>, BackendError> {
    let out = cmd::run("nft", &["-j", "list", what, ip], None)?;
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| {
        BackendError::Other(format!(
            "`nft -j list {what} {ip}` printed invalid JSON: {e}"
        ))
    })?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get(kind))
        .filter(|b| b["table"] == TABLE)
        .filter_map(|b| b["name"].as_str())
        .filter(|n| wanted(n))
        .map(str::to_string)
        .collect())
}
