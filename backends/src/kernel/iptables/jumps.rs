//! The jumps from the built-in chains into a backend's own chains. The
//! built-in chains are shared with other software, so jumps are checked
//! and inserted one by one, never written by a restore that would have to
//! own the whole chain.

use super::Flavor;
use crate::BackendError;
use crate::model::IpFamily;

/// One jump rule from a built-in chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub comment: &'static str,
    /// Only for new connections (`-m conntrack --ctstate NEW`).
    pub new_only: bool,
    /// Appended to `from` instead of inserted at its top.
    pub append: bool,
}

impl Jump {
    /// A jump inserted at the top of `from`, for every packet.
    pub const fn new(
        table: &'static str,
        from: &'static str,
        to: &'static str,
        comment: &'static str,
    ) -> Jump {
        Jump {
            table,
            from,
            to,
            comment,
            new_only: false,
            append: false,
        }
    }

    /// The same jump, only for new connections.
    pub const fn new_only(self) -> Jump {
        Jump {
            new_only: true,
            ..self
        }
    }

    /// The same jump, appended to its chain.
    pub const fn appended(self) -> Jump {
        Jump {
            append: true,
            ..self
        }
    }

    /// The rule's match and target, as iptables takes them.
    pub fn spec(&self) -> Vec<&'static str> {
        let mut a = Vec::with_capacity(10);
        if self.new_only {
            a.extend(["-m", "conntrack", "--ctstate", "NEW"]);
        }
        if !self.comment.is_empty() {
            a.extend(["-m", "comment", "--comment", self.comment]);
        }
        a.extend(["-j", self.to]);
        a
    }

    /// The rule's match and target as `iptables-save` prints them (and
    /// restore input takes them).
    pub fn saved_spec(&self) -> String {
        let state = if self.new_only {
            "-m conntrack --ctstate NEW "
        } else {
            ""
        };
        let comment = if self.comment.is_empty() {
            String::new()
        } else {
            format!("-m comment --comment \"{}\" ", self.comment)
        };
        format!("{state}{comment}-j {}", self.to)
    }

    /// The whole rule as `iptables-save` prints it.
    pub fn saved_line(&self) -> String {
        format!("-A {} {}", self.from, self.saved_spec())
    }
}

/// Creates the target chains and adds the jumps that are missing, in
/// order; running it again changes nothing.
pub fn ensure(flavor: Flavor, jumps: &[Jump]) -> Result<(), BackendError> {
    ensure_in(flavor, IpFamily::IPv4, jumps)
}

/// [`ensure`] in `family`'s tables (ip6tables for IPv6).
pub fn ensure_in(flavor: Flavor, family: IpFamily, jumps: &[Jump]) -> Result<(), BackendError> {
    for j in jumps {
        ensure_chain(flavor, family, j.table, j.to)?;
        if !has_rule(flavor, family, j)? {
            let mut args = if j.append {
                vec!["-A", j.from]
            } else {
                vec!["-I", j.from, "1"]
            };
            args.extend(j.spec());
            super::run_in(flavor, family, j.table, &args)?;
        }
    }
    Ok(())
}

fn ensure_chain(
    flavor: Flavor,
    family: IpFamily,
    table: &str,
    chain: &str,
) -> Result<(), BackendError> {
    match super::run_in(flavor, family, table, &["-N", chain]) {
        Err(BackendError::Command { stderr, .. }) if stderr.contains("already exists") => Ok(()),
        other => other,
    }
}

fn has_rule(flavor: Flavor, family: IpFamily, j: &Jump) -> Result<bool, BackendError> {
    let mut args = vec!["-C", j.from];
    args.extend(j.spec());
    match super::run_in(flavor, family, j.table, &args) {
        Ok(()) => Ok(true),
        // An absent rule: iptables-nft says "Bad rule (does a matching rule
        // exist in that chain?)", iptables-legacy "No chain/target/match by
        // that name" (the chains themselves exist by now).
        Err(BackendError::Command { stderr, .. })
            if stderr.contains("matching rule exist")
                || stderr.contains("No chain/target/match") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_form_matches_the_arguments() {
        let j = Jump::new("filter", "INPUT", "KUBE-X", "a comment").new_only();
        assert_eq!(
            j.saved_line(),
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"a comment\" -j KUBE-X"
        );
        assert_eq!(
            j.spec(),
            [
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "a comment",
                "-j",
                "KUBE-X"
            ]
        );
        assert!(!j.append && j.appended().append);
    }
}
