//! Removing everything the backend made: per table, restore input that
//! flushes kube-proxy's chains, deletes every rule elsewhere that jumps
//! into them (the hooks, or any left by an earlier run), and deletes the
//! chains. It works from iptables-save, so it also removes what an earlier
//! crashed run left behind.

use super::names::{Chain, FILTER_TOP, NAT_TOP};
use super::render::NFT_CHAINS_PER_TRANSACTION;
use crate::BackendError;
use crate::kernel::iptables::saved::SavedTable;
use crate::kernel::iptables::{self, Flavor};
use crate::model::IpFamily;

/// Removes the backend's chains and the jumps into them from both tables;
/// keeps going after an error and returns all of them.
pub fn remove_all(flavor: Flavor, family: IpFamily) -> Result<(), Vec<BackendError>> {
    let errors: Vec<BackendError> = [("filter", &FILTER_TOP[..]), ("nat", &NAT_TOP[..])]
        .into_iter()
        .filter_map(|(table, top)| remove_table(flavor, family, table, top).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn remove_table(
    flavor: Flavor,
    family: IpFamily,
    table: &str,
    top: &[&str],
) -> Result<(), BackendError> {
    let saved = iptables::save_in(flavor, family, table)?;
    // The same reason as for syncs: iptables-nft 1.8.9 is quadratic in the
    // chains one transaction names.
    let limit = match flavor {
        Flavor::Nft => Some(NFT_CHAINS_PER_TRANSACTION),
        Flavor::Legacy => None,
    };
    match removal_input(table, &SavedTable::parse(&saved), top, limit) {
        Some(input) => iptables::restore_in(flavor, family, &input),
        None => Ok(()),
    }
}

/// Restore input that removes `top` and all service chains from a table,
/// or `None` when there is nothing of ours. With a `limit`, no transaction
/// names more than that many service chains: first the hooks go and the
/// top-level chains are flushed, then the service chains are flushed, then
/// deleted, then the top-level chains are deleted, so no chain is deleted
/// while anything still jumps to it.
pub fn removal_input(
    table: &str,
    saved: &SavedTable<'_>,
    top: &[&str],
    limit: Option<usize>,
) -> Option<String> {
    let ours = |c: &str| top.contains(&c) || Chain::parse(c).is_some();
    let (fixed, services): (Vec<&str>, Vec<&str>) = saved
        .chains
        .iter()
        .copied()
        .filter(|c| ours(c))
        .partition(|c| top.contains(c));
    if fixed.is_empty() && services.is_empty() {
        return None;
    }
    let hooks: Vec<String> = saved
        .rules
        .iter()
        .filter(|r| !ours(r.chain) && r.target.is_some_and(ours))
        .map(|r| format!("-D {} {}", r.chain, r.spec))
        .collect();
    let flush = |c: &&str| format!(":{c} - [0:0]");
    let delete = |c: &&str| format!("-X {c}");
    let mut s = String::new();
    let Some(limit) = limit else {
        let lines = fixed
            .iter()
            .chain(&services)
            .map(flush)
            .chain(hooks)
            .chain(fixed.iter().chain(&services).map(delete));
        transaction(&mut s, table, lines);
        return Some(s);
    };
    transaction(&mut s, table, fixed.iter().map(flush).chain(hooks));
    for group in services.chunks(limit) {
        transaction(&mut s, table, group.iter().map(flush));
    }
    for group in services.chunks(limit) {
        transaction(&mut s, table, group.iter().map(delete));
    }
    transaction(&mut s, table, fixed.iter().map(delete));
    Some(s)
}

/// Appends `*table`, the lines and `COMMIT`, unless there are no lines.
fn transaction(s: &mut String, table: &str, lines: impl Iterator<Item = String>) {
    let mut lines = lines.peekable();
    if lines.peek().is_none() {
        return;
    }
    s.push_str(&format!("*{table}\n"));
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::restore_model::Tables;

    const SAVED: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        :DOCKER - [0:0]\n:KUBE-MARK-DROP - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
        :KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]\n:KUBE-SERVICES - [0:0]\n\
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A PREROUTING -j DOCKER\n\
        -A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -j KUBE-MARK-MASQ\n\
        -A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-XPGD46QRK7WJZT7O\n\
        -A KUBE-SVC-XPGD46QRK7WJZT7O -j KUBE-SEP-SXIVWICOYRO3J4NJ\nCOMMIT\n";

    #[test]
    fn removes_hooks_and_our_chains_only() {
        let got = removal_input("nat", &SavedTable::parse(SAVED), &NAT_TOP, None).unwrap();
        assert_eq!(
            got,
            "*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n\
             :KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-MARK-MASQ\n-X KUBE-SERVICES\n\
             -X KUBE-SEP-SXIVWICOYRO3J4NJ\n-X KUBE-SVC-XPGD46QRK7WJZT7O\nCOMMIT\n"
        );
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            removal_input("nat", &SavedTable::parse(clean), &NAT_TOP, None),
            None
        );
    }

    #[test]
    fn split_removal_never_deletes_a_referenced_chain() {
        for limit in [None, Some(1)] {
            let mut t = Tables::default();
            t.restore(SAVED).unwrap();
            let input = removal_input("nat", &SavedTable::parse(SAVED), &NAT_TOP, limit).unwrap();
            t.restore(&input)
                .unwrap_or_else(|e| panic!("{limit:?}: {e}\n{input}"));
            assert_eq!(
                t.chains("nat"),
                vec!["DOCKER", "KUBE-MARK-DROP"],
                "{limit:?}"
            );
        }
    }
}
