//! A model of what `iptables-restore --noflush` does to the kernel's
//! tables, strict where the kernel is strict (a jump needs its chain; a
//! chain is deleted only when empty and unreferenced; a rule is deleted
//! only if it exists). Pure tests run long
//! random sequences of partial syncs through it, which would take hours
//! against the kernel.

use std::collections::BTreeMap;

use crate::kernel::iptables::saved::target;

const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Chains and their rules, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    tables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Tables {
    /// Applies restore input, all or nothing.
    pub fn restore(&mut self, input: &str) -> Result<(), String> {
        let mut next = self.clone();
        let mut table: Option<&str> = None;
        for (i, line) in input.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: `{line}`", i + 1);
            if let Some(name) = line.strip_prefix('*') {
                table = Some(name);
                let t = next.tables.entry(name.to_string()).or_default();
                for b in BUILTIN_CHAINS {
                    t.entry(b.to_string()).or_default();
                }
                continue;
            }
            if line == "COMMIT" {
                table = None;
                continue;
            }
            let t = table
                .and_then(|name| next.tables.get_mut(name))
                .ok_or_else(|| fail("outside a table"))?;
            if let Some(rest) = line.strip_prefix(':') {
                let chain = rest.split(' ').next().unwrap_or_default();
                if !BUILTIN_CHAINS.contains(&chain) {
                    // Creates the chain, or flushes it if it exists.
                    t.insert(chain.to_string(), Vec::new());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').ok_or_else(|| fail("no rule"))?;
                if let Some(to) = target(spec).filter(|to| to.starts_with("KUBE-"))
                    && !t.contains_key(to)
                {
                    return Err(fail("jump to a missing chain"));
                }
                t.get_mut(chain)
                    .ok_or_else(|| fail("no such chain"))?
                    .push(spec.to_string());
            } else if let Some(rest) = line.strip_prefix("-D ") {
                let (chain, spec) = rest.split_once(' ').ok_or_else(|| fail("no rule"))?;
                let rules = t.get_mut(chain).ok_or_else(|| fail("no such chain"))?;
                let at = rules
                    .iter()
                    .position(|r| r == spec)
                    .ok_or_else(|| fail("no such rule"))?;
                rules.remove(at);
            } else if let Some(chain) = line.strip_prefix("-X ") {
                let rules = t.get(chain).ok_or_else(|| fail("no such chain"))?;
                if !rules.is_empty() {
                    return Err(fail("chain not empty"));
                }
                if t.values().flatten().any(|r| target(r) == Some(chain)) {
                    return Err(fail("chain still referenced"));
                }
                t.remove(chain);
            } else {
                return Err(fail("not understood"));
            }
        }
        *self = next;
        Ok(())
    }

    /// The user-defined chains of `table`.
    pub fn chains(&self, table: &str) -> Vec<&str> {
        self.tables
            .get(table)
            .map(|t| {
                t.keys()
                    .map(String::as_str)
                    .filter(|c| !BUILTIN_CHAINS.contains(c))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_like_the_kernel() {
        let mut t = Tables::default();
        t.restore("*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n")
            .unwrap();
        let before = t.clone();
        let err = t.restore("*nat\n-X KUBE-B\nCOMMIT\n").unwrap_err();
        assert!(
            err.contains("not empty") || err.contains("referenced"),
            "{err}"
        );
        assert!(t.restore("*nat\n-A KUBE-A -j KUBE-C\nCOMMIT\n").is_err());
        assert_eq!(t, before, "a failed restore changes nothing");
        t.restore("*nat\n:KUBE-A - [0:0]\n-X KUBE-B\nCOMMIT\n")
            .unwrap();
        assert_eq!(t.chains("nat"), vec!["KUBE-A"]);
    }
}
