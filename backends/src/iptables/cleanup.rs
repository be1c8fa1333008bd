//! Removing everything the backend made: per table, one restore that
//! flushes kube-proxy's chains, deletes every rule elsewhere that jumps
//! into them (the hooks, or any left by an earlier run), and deletes the
//! chains. It works from iptables-save, so it also removes what an earlier
//! crashed run left behind.

use super::names::Chain;
use super::render::{FILTER_TOP, NAT_TOP};
use super::saved::SavedTable;
use super::tool::{self, Flavor};
use crate::BackendError;

/// Removes the backend's chains and the jumps into them from both tables;
/// keeps going after an error and returns all of them.
pub fn remove_all(flavor: Flavor) -> Result<(), Vec<BackendError>> {
    let errors: Vec<BackendError> = [("filter", &FILTER_TOP[..]), ("nat", &NAT_TOP[..])]
        .into_iter()
        .filter_map(|(table, top)| remove_table(flavor, table, top).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn remove_table(flavor: Flavor, table: &str, top: &[&str]) -> Result<(), BackendError> {
    let saved = tool::save(flavor, table)?;
    let input = removal_input(table, &SavedTable::parse(&saved), top);
    match input {
        Some(input) => tool::restore(flavor, &input),
        None => Ok(()),
    }
}

/// Restore input that removes `top` and all service chains from a table,
/// or `None` when there is nothing of ours.
pub fn removal_input(table: &str, saved: &SavedTable<'_>, top: &[&str]) -> Option<String> {
    let ours = |c: &str| top.contains(&c) || Chain::parse(c).is_some();
    let chains: Vec<&str> = saved.chains.iter().copied().filter(|c| ours(c)).collect();
    if chains.is_empty() {
        return None;
    }
    let mut s = format!("*{table}\n");
    for c in &chains {
        s.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in &saved.rules {
        if !ours(r.chain) && r.target.is_some_and(ours) {
            s.push_str(&format!("-D {} {}\n", r.chain, r.spec));
        }
    }
    for c in &chains {
        s.push_str(&format!("-X {c}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hooks_and_our_chains_only() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
            :DOCKER - [0:0]\n:KUBE-MARK-DROP - [0:0]\n:KUBE-SERVICES - [0:0]\n\
            :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -j DOCKER\n\
            -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-XPGD46QRK7WJZT7O\nCOMMIT\n";
        let got = removal_input("nat", &SavedTable::parse(text), &NAT_TOP).unwrap();
        assert_eq!(
            got,
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-SERVICES\n-X KUBE-SVC-XPGD46QRK7WJZT7O\nCOMMIT\n"
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            removal_input("nat", &SavedTable::parse(clean), &NAT_TOP),
            None
        );
    }
}
