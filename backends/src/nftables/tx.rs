//! The text of one `nft -f` transaction on the `ip kube-proxy` table, in
//! the command syntax knftables writes (one command per line).

use std::fmt::Write as _;

use crate::model::IpFamily;
use crate::nftables::names::Family;
use crate::nftables::objects::{AffinitySet, Container, ElementValue};

/// A transaction being written, with its line and rule counts.
#[derive(Debug)]
pub struct Tx {
    family: Family,
    table: String,
    text: String,
    lines: u64,
    rules: u64,
}

impl Tx {
    pub fn with_capacity(family: IpFamily, bytes: usize) -> Self {
        let family = Family(family);
        Tx {
            family,
            table: family.table(),
            text: String::with_capacity(bytes),
            lines: 0,
            rules: 0,
        }
    }

    /// The family's nft spellings (`ip`/`ip6`, `ipv4_addr`/`ipv6_addr`).
    pub fn family(&self) -> Family {
        self.family
    }

    pub fn into_text(self) -> String {
        self.text
    }

    /// Commands written.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// `add rule` commands written.
    pub fn rules(&self) -> u64 {
        self.rules
    }

    /// Writes one command on the table: `<verb> <object> ip kube-proxy <rest>`.
    fn command(&mut self, verb: &str, object: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{verb} {object} {} {rest}", self.table);
        self.lines += 1;
    }

    pub fn raw(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.text, "{line}");
        self.lines += 1;
    }

    /// `add chain` then `flush chain`: the chain exists and is empty, whether
    /// or not it existed before (kube-proxy's `ensureChain`).
    pub fn ensure_chain(&mut self, name: &str) {
        self.command("add", "chain", format_args!("{name}"));
        self.command("flush", "chain", format_args!("{name}"));
    }

    pub fn flush_chain(&mut self, name: &str) {
        self.command("flush", "chain", format_args!("{name}"));
    }

    pub fn delete_chain(&mut self, name: &str) {
        self.command("delete", "chain", format_args!("{name}"));
    }

    pub fn add_rule(&mut self, chain: &str, rule: &str) {
        self.command("add", "rule", format_args!("{chain} {rule}"));
        self.rules += 1;
    }

    pub fn add_affinity_set(&mut self, set: &AffinitySet) {
        self.command(
            "add",
            "set",
            format_args!(
                "{} {{ type {} ; flags dynamic,timeout ; timeout {}s ; }}",
                set.name,
                self.family.addr_type(),
                set.timeout_seconds
            ),
        );
    }

    pub fn delete_set(&mut self, name: &str) {
        self.command("delete", "set", format_args!("{name}"));
    }

    pub fn flush_container(&mut self, c: Container) {
        let object = if c.is_set() { "set" } else { "map" };
        self.command("flush", object, format_args!("{}", c.name()));
    }

    pub fn add_element(&mut self, c: Container, key: &str, value: &ElementValue) {
        let mut body = String::with_capacity(key.len() + 64);
        body.push_str(key);
        if let Some(comment) = &value.comment {
            let _ = write!(body, " comment \"{comment}\"");
        }
        if let Some(verdict) = &value.verdict {
            let _ = write!(body, " : {verdict}");
        }
        self.command("add", "element", format_args!("{} {{ {body} }}", c.name()));
    }

    pub fn delete_element(&mut self, c: Container, key: &str) {
        self.command(
            "delete",
            "element",
            format_args!("{} {{ {key} }}", c.name()),
        );
    }
}
