//! The iptables binaries of each flavor, and running them with errors that
//! name the command and, for a rejected restore, the rejected line. Every
//! backend that writes iptables rules (iptables, userspace, ipvs) goes
//! through here, with either flavor.
//!
//! - [`saved`]: reading `iptables-save` output.
//! - [`jumps`]: the jumps from built-in chains into a backend's chains.

pub mod jumps;
pub mod saved;

pub use jumps::Jump;

use crate::BackendError;
use crate::kernel::cmd;
use crate::model::IpFamily;

/// Which iptables binary family programs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// iptables-nft: iptables rules as nf_tables objects.
    Nft,
    /// iptables-legacy: the x_tables kernel interface.
    Legacy,
}

impl Flavor {
    pub const fn iptables(self) -> &'static str {
        match self {
            Flavor::Nft => "iptables-nft",
            Flavor::Legacy => "iptables-legacy",
        }
    }

    pub const fn restore(self) -> &'static str {
        match self {
            Flavor::Nft => "iptables-nft-restore",
            Flavor::Legacy => "iptables-legacy-restore",
        }
    }

    pub const fn save(self) -> &'static str {
        match self {
            Flavor::Nft => "iptables-nft-save",
            Flavor::Legacy => "iptables-legacy-save",
        }
    }

    /// The flavor's `tool` (`iptables`, `iptables-restore`,
    /// `iptables-save`) for `family`: IPv6 rules go through ip6tables.
    pub fn binary(self, family: IpFamily, tool: &str) -> String {
        let kind = match self {
            Flavor::Nft => "nft",
            Flavor::Legacy => "legacy",
        };
        let ip = match family {
            IpFamily::IPv4 => "iptables",
            IpFamily::IPv6 => "ip6tables",
        };
        match tool.strip_prefix("iptables") {
            Some(rest) => format!("{ip}-{kind}{rest}"),
            None => panic!("{tool} is not an iptables tool"),
        }
    }

    /// Arguments of every restore: never flush tables (other software owns
    /// the other chains), and for legacy wait for the xtables lock, as
    /// kube-proxy does (iptables-nft takes no lock).
    pub const fn restore_args(self) -> &'static [&'static str] {
        match self {
            Flavor::Nft => &["--noflush"],
            Flavor::Legacy => &["-w", "5", "--noflush"],
        }
    }
}

/// Feeds `input` to the flavor's iptables-restore.
pub fn restore(flavor: Flavor, input: &str) -> Result<(), BackendError> {
    restore_in(flavor, IpFamily::IPv4, input)
}

/// Feeds `input` to the flavor's iptables-restore, or ip6tables-restore.
pub fn restore_in(flavor: Flavor, family: IpFamily, input: &str) -> Result<(), BackendError> {
    cmd::run(
        &flavor.binary(family, "iptables-restore"),
        flavor.restore_args(),
        Some(input.as_bytes()),
    )
    .map(drop)
    .map_err(|e| with_failed_line(e, input))
}

/// `iptables-save -t table`.
pub fn save(flavor: Flavor, table: &str) -> Result<String, BackendError> {
    save_in(flavor, IpFamily::IPv4, table)
}

/// `iptables-save -t table`, or `ip6tables-save`.
pub fn save_in(flavor: Flavor, family: IpFamily, table: &str) -> Result<String, BackendError> {
    cmd::run(
        &flavor.binary(family, "iptables-save"),
        &["-t", table],
        None,
    )
    .map(|o| o.stdout)
}

/// `iptables -w -t table args..`.
pub fn run(flavor: Flavor, table: &str, args: &[&str]) -> Result<(), BackendError> {
    run_in(flavor, IpFamily::IPv4, table, args)
}

/// `iptables -w -t table args..`, or `ip6tables`.
pub fn run_in(
    flavor: Flavor,
    family: IpFamily,
    table: &str,
    args: &[&str],
) -> Result<(), BackendError> {
    let mut all = vec!["-w", "-t", table];
    all.extend_from_slice(args);
    cmd::run(&flavor.binary(family, "iptables"), &all, None).map(drop)
}

/// iptables-restore reports only "line N failed"; the line itself is what
/// a person needs to see.
fn with_failed_line(err: BackendError, input: &str) -> BackendError {
    let BackendError::Command {
        command,
        status,
        stderr,
    } = err
    else {
        return err;
    };
    let line = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| input.lines().nth(n.checked_sub(1)?));
    let stderr = match line {
        Some(line) => format!("{stderr} (the rejected line: `{line}`)"),
        None => stderr,
    };
    BackendError::Command {
        command,
        status,
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_line_is_quoted() {
        let err = BackendError::Command {
            command: "iptables-nft-restore --noflush".into(),
            status: "exit status: 1".into(),
            stderr: "iptables-nft-restore: line 3 failed".into(),
        };
        let msg =
            with_failed_line(err, "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -j NOPE\nCOMMIT\n").to_string();
        assert!(msg.contains("`-A KUBE-X -j NOPE`"), "{msg}");
        assert!(msg.contains("iptables-nft-restore --noflush"), "{msg}");
    }
}
