//! `svclab trace`

use clap::Args;
use svclab_backends::model::{IpFamily, Protocol};

/// `svclab trace --from ... --to ...`
#[derive(Args, Clone, Debug)]
pub struct TraceArgs {
    /// Where the probe starts: pod/<namespace>/<name>, node/<name> or
    /// external.
    #[arg(long)]
    pub from: String,
    /// What it dials: <service>[.<namespace>]:<port> (a Service port, or
    /// a node port), or <ip>:<port>. From `external`, a Service port means
    /// its NodePort.
    #[arg(long)]
    pub to: String,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub proto: Protocol,
    /// ipv4 or ipv6: the family of the probe (its client's address and
    /// the ClusterIP or node address it dials). Default: the `--to`
    /// address's, else the Service's primary family.
    #[arg(long, value_parser = parse_family)]
    pub family: Option<IpFamily>,
    /// The node whose address a NodePort probe dials (default: the
    /// client's node, or the first node).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub run: super::RunArg,
    /// Output format (json: the trace documented in results/README.md).
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = super::Format::Text)]
    pub output: super::Format,
    /// The same as `-o json` (kept for compatibility).
    #[arg(long, hide = true)]
    pub json: bool,
}

impl TraceArgs {
    /// `-o json`, or the older `--json`.
    pub fn json(&self) -> bool {
        self.json || self.output == super::Format::Json
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("{s:?}: expected tcp or udp")),
    }
}

fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s.to_ascii_lowercase().as_str() {
        "ipv4" => Ok(IpFamily::IPv4),
        "ipv6" => Ok(IpFamily::IPv6),
        _ => Err(format!("{s:?}: expected ipv4 or ipv6")),
    }
}
