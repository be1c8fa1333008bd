//! `svclab doctor`: which kernel features and tools this host has, which
//! backends can run here, and why the others cannot. Every kernel probe
//! happens inside a throwaway namespace, never in the host's own.

use std::process::Command;

use svclab_backends::BackendKind;

use crate::netns::NetNs;

/// One line of the report.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

fn tool_in(ns: &NetNs, program: &str, args: &[&str]) -> Result<String, String> {
    let out = ns
        .run(|| Command::new(program).args(args).output())
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn version(program: &str, arg: &str) -> Result<String, String> {
    Command::new(program)
        .arg(arg)
        .output()
        .map_err(|_| format!("{program} is not installed"))
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
}

/// Creates a veth pair and a bridge over rtnetlink inside `ns`.
async fn links_in(ns: &NetNs) -> (Result<String, String>, Result<String, String>) {
    let h = match crate::topology::build::connect_in(&ns.name) {
        Ok(h) => h,
        Err(e) => return (Err(e.to_string()), Err(e.to_string())),
    };
    let veth = h
        .link()
        .add(rtnetlink::LinkVeth::new("d0", "d1").build())
        .execute()
        .await
        .map(|_| "can create".to_string())
        .map_err(|e| format!("creating a veth pair: {e}"));
    let bridge = h
        .link()
        .add(rtnetlink::LinkBridge::new("b0").build())
        .execute()
        .await
        .map(|_| "can create".to_string())
        .map_err(|e| format!("creating a bridge: {e}"));
    (veth, bridge)
}

pub async fn findings() -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |what: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        out.push(Finding {
            what: what.into(),
            ok,
            detail,
        });
    };
    let ns = NetNs::new(format!("svclab-doctor-{}", std::process::id()));
    let made = ns.create();
    add(
        "network namespaces",
        made.as_ref()
            .map(|_| "can create".to_string())
            .map_err(|e| e.to_string()),
    );
    if made.is_ok() {
        let (veth, bridge) = links_in(&ns).await;
        add("veth", veth);
        add("bridge", bridge);
        add(
            "br_netfilter",
            ns.run(|| std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables"))
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.map_err(|_| {
                        "no bridge-nf-call-iptables: br_netfilter is not loaded".to_string()
                    })
                })
                .map(|v| format!("bridge-nf-call-iptables={}", v.trim())),
        );
        add(
            "iptables-nft",
            tool_in(&ns, "iptables-nft", &["-w", "-t", "nat", "-S"]).map(|_| "works".into()),
        );
        add(
            "iptables-legacy",
            tool_in(&ns, "iptables-legacy", &["-w", "-t", "nat", "-S"]).map(|_| "works".into()),
        );
        add(
            "nftables (nft)",
            tool_in(&ns, "nft", &["list", "ruleset"]).map(|_| "works".into()),
        );
        add(
            "ipset",
            tool_in(&ns, "ipset", &["list", "-n"]).map(|_| "works".into()),
        );
        add(
            "conntrack",
            tool_in(&ns, "conntrack", &["-L"]).map(|_| "works".into()),
        );
        let _ = ns.delete();
    }
    add(
        "IP_VS",
        BackendKind::Ipvs
            .capability()
            .map(|_| "available".into())
            .map_err(|e| e.reason),
    );
    add(
        "BPF (tc, BTF)",
        BackendKind::Ebpf
            .capability()
            .map(|_| "available".into())
            .map_err(|e| e.reason),
    );
    add("clang (eBPF build)", version("clang", "--version"));
    add("qemu (VM mode)", version("qemu-system-x86_64", "--version"));
    add("virtme-ng (VM mode)", version("vng", "--version"));
    add(
        "VM kernel",
        crate::vm::default_kernel()
            .map(|p| p.display().to_string())
            .ok_or_else(|| {
                "no /boot/vmlinuz-*: install linux-image-amd64 (ci/setup --vm)".to_string()
            }),
    );
    out
}

/// Whether one backend can run here, and why not.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendFinding {
    pub backend: String,
    pub can_run: bool,
    /// Why it cannot (absent when it can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Everything `svclab doctor` reports (`-o json` prints it as is).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub kernel: String,
    pub findings: Vec<Finding>,
    pub backends: Vec<BackendFinding>,
    /// The upstream kube-proxy section, as the text report's lines.
    pub kube_proxy: Vec<String>,
    /// The kernels VM mode can boot, and those `ci/kernels` would fetch.
    pub vm_kernels: crate::kernels::Inventory,
}

/// Whether `b` can run here: Ok, or the reason it cannot.
pub fn backend_finding(b: &BackendKind) -> BackendFinding {
    let r = b.capability();
    BackendFinding {
        backend: b.to_string(),
        can_run: r.is_ok(),
        reason: r.err().map(|e| e.reason),
    }
}

/// Takes the report (kernel probes run in a throwaway namespace).
pub async fn report() -> Report {
    Report {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        findings: findings().await,
        backends: BackendKind::BUILTIN.iter().map(backend_finding).collect(),
        kube_proxy: kube_proxy_lines(&crate::kubeproxy::cache_dir()),
        vm_kernels: crate::kernels::Sources::host().inventory(),
    }
}

/// The text report.
pub fn text(r: &Report) -> String {
    let mut out = format!("kernel {} · features and tools:\n", r.kernel);
    for f in &r.findings {
        out.push_str(&format!(
            "  {} {:<22} {}\n",
            if f.ok { "✔" } else { "✘" },
            f.what,
            f.detail
        ));
    }
    out.push_str("backends:\n");
    for b in &r.backends {
        match &b.reason {
            None => out.push_str(&format!("  ✔ {:<16} can run here\n", b.backend)),
            Some(why) => out.push_str(&format!("  ✘ {:<16} {why}\n", b.backend)),
        }
    }
    for l in &r.kube_proxy {
        out.push_str(l);
        out.push('\n');
    }
    for l in crate::kernels::doctor_lines(&r.vm_kernels) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// Prints the report; returns the backends that can run here.
pub async fn print() -> Vec<BackendKind> {
    let r = report().await;
    print!("{}", text(&r));
    runnable()
}

/// The upstream kube-proxy section: each built version (path, and what
/// `--version` says), then each supported version that is missing, with the
/// command that builds it.
pub fn kube_proxy_lines(cache: &std::path::Path) -> Vec<String> {
    use crate::kubeproxy;
    let mut lines = vec![format!("upstream kube-proxy (cache {}):", cache.display())];
    for b in kubeproxy::built_in(cache) {
        let supported = kubeproxy::SUPPORTED_VERSIONS.contains(&b.version.as_str());
        let (ok, detail) = match &b.reported {
            Ok(v) if *v == b.version => (true, format!("{} ({v})", b.path.display())),
            Ok(v) => (
                false,
                format!(
                    "{} reports {v}: rebuild it (rm it, then {})",
                    b.path.display(),
                    kubeproxy::build_command(&b.version)
                ),
            ),
            Err(e) => (false, e.clone()),
        };
        let note = if supported {
            ""
        } else {
            " [no Go module in backends/kube-proxy]"
        };
        lines.push(format!(
            "  {} {:<16} {detail}{note}",
            if ok { "✔" } else { "✘" },
            b.version
        ));
    }
    for v in kubeproxy::missing_in(cache) {
        lines.push(format!(
            "  ✘ {v:<16} missing: {} (or ci/setup --kube-proxy)",
            kubeproxy::build_command(v)
        ));
    }
    lines
}

/// The backends `demo` runs: every built-in one that can run here.
pub fn runnable() -> Vec<BackendKind> {
    BackendKind::BUILTIN
        .into_iter()
        .filter(|b| b.capability().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_section_lists_built_wrong_and_missing_versions() {
        use std::os::unix::fs::PermissionsExt;
        let cache = std::env::temp_dir().join(format!("svclab-doctor-kp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let fake = |version: &str, says: &str| {
            let dir = cache.join(version);
            std::fs::create_dir_all(&dir).unwrap();
            let bin = dir.join("kube-proxy");
            std::fs::write(&bin, format!("#!/bin/sh\necho 'Kubernetes {says}'\n")).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("v1.34.4", "v1.34.4");
        fake("v1.36.1", "v1.36.0");
        std::fs::create_dir_all(cache.join("not-a-version")).unwrap();
        let mut lines = kube_proxy_lines(&cache);
        // Another test thread forking while the fake was open for writing
        // makes exec fail with ETXTBSY for a moment.
        for _ in 0..20 {
            if !lines.iter().any(|l| l.contains("Text file busy")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            lines = kube_proxy_lines(&cache);
        }
        let _ = std::fs::remove_dir_all(&cache);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("upstream kube-proxy (cache /"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("  ✔ v1.34.4")
                && lines[1].ends_with("/v1.34.4/kube-proxy (v1.34.4)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("  ✘ v1.36.1")
                && lines[2].contains("reports v1.36.0")
                && lines[2].ends_with("[no Go module in backends/kube-proxy]"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("  ✘ v1.37.2")
                && lines[3].contains("missing: ci/kube-proxy v1.37.2"),
            "{}",
            lines[3]
        );
    }
}
