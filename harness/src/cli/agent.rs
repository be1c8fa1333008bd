//! `svclab agent` (hidden: the lab starts one per node).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;
use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;
use svclab_backends::{BackendKind, Fault};

/// `svclab agent` flags. The lab starts each agent with [`AgentArgs::to_flags`],
/// which reads this one definition: a new field is passed on with no more
/// code.
#[derive(Args, Clone, Debug, PartialEq, Serialize)]
pub struct AgentArgs {
    /// The node this agent serves.
    #[arg(long)]
    pub node: String,
    /// The backend it programs.
    #[arg(long)]
    pub backend: BackendKind,
    /// The node's address.
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR.
    #[arg(long)]
    pub pod_cidr: Ipv4Net,
    /// The node's IPv6 address, in a lab with IPv6.
    #[arg(long)]
    pub node_ip_v6: Option<std::net::Ipv6Addr>,
    /// The node's IPv6 pod CIDR, in a lab with IPv6.
    #[arg(long)]
    pub pod_cidr_v6: Option<ipnet::Ipv6Net>,
    /// The node's zone (its `topology.kubernetes.io/zone` label).
    #[arg(long)]
    pub zone: Option<String>,
    /// Every pod's CIDR (for masquerading).
    #[arg(long)]
    pub cluster_cidr: Ipv4Net,
    /// The IPv6 pod CIDR, in a lab with IPv6.
    #[arg(long)]
    pub cluster_cidr_v6: Option<ipnet::Ipv6Net>,
    /// The ClusterIP range.
    #[arg(long)]
    pub service_cidr: Ipv4Net,
    /// The IPv6 ClusterIP range, in a lab with IPv6.
    #[arg(long)]
    pub service_cidr_v6: Option<ipnet::Ipv6Net>,
    /// Prefix for kernel objects outside kube-proxy's fixed names.
    #[arg(long, default_value = "svclab-")]
    pub run_prefix: String,
    /// Minimum time between syncs, ms.
    #[arg(long, default_value_t = 100)]
    pub min_sync_period_ms: u64,
    /// Time between full resyncs, ms.
    #[arg(long, default_value_t = 60_000)]
    pub sync_period_ms: u64,
    /// Deliberate defects, for negative tests.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,
    /// Write each sync's tool input here.
    #[arg(long)]
    pub dump_dir: Option<PathBuf>,
    /// IPVS's scheduler.
    #[arg(long, default_value = "rr")]
    pub ipvs_scheduler: String,
    /// kube-proxy's healthz port, on 0.0.0.0 (0: off).
    #[arg(long, default_value_t = 10256)]
    pub healthz_port: u16,
    /// kube-proxy's metrics port, on 127.0.0.1 (0: off).
    #[arg(long, default_value_t = 10249)]
    pub metrics_port: u16,
    /// kube-proxy's `nodePortAddresses`: CIDRs or `primary`, `localhost`,
    /// `all` (none: the backend's default).
    #[arg(long = "nodeport-address", value_parser = parse_nodeport_address)]
    pub node_port_addresses: Vec<String>,
    /// Watch the lab's API through this kubeconfig (as kube-proxy does);
    /// without it, watch events come as JSON lines on stdin.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

fn parse_nodeport_address(s: &str) -> Result<String, String> {
    svclab_backends::nodeport_addresses::parse_entry(s).map(|()| s.to_string())
}

impl AgentArgs {
    /// The command line that gives these args back: for every flag clap
    /// defines above, the field of the same id in its serde form (which
    /// each field's type parses back); absent options and false switches
    /// are left out, lists repeat the flag.
    pub fn to_flags(&self) -> Vec<String> {
        let Value::Object(fields) = serde_json::to_value(self).expect("agent args serialize")
        else {
            unreachable!("a struct serializes to an object");
        };
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let cmd = <AgentArgs as Args>::augment_args(clap::Command::new("agent"));
        let mut out = Vec::new();
        for arg in cmd.get_arguments() {
            let flag = format!("--{}", arg.get_long().expect("agent flags are long ones"));
            match fields.get(arg.get_id().as_str()) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => out.push(flag),
                Some(Value::Array(items)) => {
                    for v in items {
                        out.extend([flag.clone(), text(v)]);
                    }
                }
                Some(v) => out.extend([flag, text(v)]),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Agent {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse<S: Into<String>>(flags: impl IntoIterator<Item = S>) -> AgentArgs {
        let argv = std::iter::once("agent".to_string()).chain(flags.into_iter().map(Into::into));
        Agent::try_parse_from(argv).expect("flags parse").args
    }

    /// Only the required flags: every other field at its default.
    fn required_only() -> AgentArgs {
        parse([
            "--node=n",
            "--backend=none",
            "--node-ip=10.0.0.2",
            "--pod-cidr=10.244.0.0/24",
            "--cluster-cidr=10.244.0.0/16",
            "--service-cidr=10.96.0.0/16",
        ])
    }

    #[test]
    fn to_flags_gives_the_same_args_back() {
        let every = AgentArgs {
            node: "node-1".into(),
            backend: "kube-proxy:nftables@v1.34.4".parse().unwrap(),
            node_ip: Ipv4Addr::new(172, 18, 0, 3),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            zone: Some("zone-a".into()),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            cluster_cidr_v6: Some("fd00:10:244::/56".parse().unwrap()),
            node_ip_v6: Some("fd00:172:18::3".parse().unwrap()),
            pod_cidr_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            service_cidr_v6: Some("fd00:10:96::/112".parse().unwrap()),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            run_prefix: "svclab-0a1f-".into(),
            min_sync_period_ms: 7,
            sync_period_ms: 9_000,
            faults: vec![Fault::NoReject, Fault::WrongProbability],
            dump_dir: Some("/run/svclab/0a1f/dumps".into()),
            ipvs_scheduler: "wrr".into(),
            healthz_port: 0,
            metrics_port: 10_250,
            node_port_addresses: vec!["primary".into(), "10.244.0.0/16".into()],
            kubeconfig: Some("/run/svclab/0a1f/kubeconfig-node-1".into()),
        };
        assert_eq!(parse(every.to_flags()), every);
        let fewest = required_only();
        assert_eq!(parse(fewest.to_flags()), fewest);
    }

    #[test]
    fn every_flag_is_a_field_and_every_field_a_flag() {
        let cmd = <AgentArgs as Args>::augment_args(clap::Command::new("agent"));
        let flags: BTreeSet<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        let Value::Object(fields) = serde_json::to_value(required_only()).unwrap() else {
            panic!("agent args serialize to an object");
        };
        let fields: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(flags, fields);
    }
}
