//! Upstream kube-proxy: where `ci/kube-proxy` puts each version's binary, the
//! configuration of one node's kube-proxy ([`config`]), and starting it inside
//! a node's network namespace.
//!
//! The binaries are built from the Go modules in `backends/kube-proxy/<version>/`
//! (`ci/kube-proxy VERSION`, or `ci/setup --kube-proxy` for every supported one)
//! into `$SVCLAB_KUBE_PROXY_CACHE/<version>/kube-proxy`, by default
//! `/var/cache/svclab/kube-proxy/<version>/kube-proxy`.

pub mod config;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub use config::{Mode, NodeConfig};

use crate::netns::{Group, NetNs};

/// The versions with a Go module in `backends/kube-proxy/` (a unit test keeps
/// this list and the folders in step), oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1.34.4", "v1.37.2"];
pub use svclab_backends::kubeproxy::{
    CACHE_ENV, DEFAULT_CACHE, DEFAULT_VERSION, binary, cache_dir,
};
/// The PATH kube-proxy runs with (it execs iptables, ip6tables, nft).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command that builds `version`.
pub fn build_command(version: &str) -> String {
    format!("ci/kube-proxy {version}")
}

/// One version in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub version: String,
    pub path: PathBuf,
    /// What `kube-proxy --version` printed, or why it could not run.
    pub reported: Result<String, String>,
}

/// `kube-proxy --version`'s answer ("Kubernetes v1.37.2" -> "v1.37.2").
pub fn reported_version(path: &Path) -> Result<String, String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .env_clear()
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    match first.strip_prefix("Kubernetes ") {
        Some(v) if out.status.success() => Ok(v.to_string()),
        _ => Err(format!(
            "`{} --version` printed {first:?} ({})",
            path.display(),
            out.status
        )),
    }
}

/// Every version in the cache (supported or not), by version order.
pub fn built() -> Vec<Built> {
    built_in(&cache_dir())
}

/// Every version in `cache`, by version order.
pub fn built_in(cache: &Path) -> Vec<Built> {
    let mut out: Vec<Built> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| parse_version(v).is_some())
        .map(|version| {
            let path = cache.join(&version).join("kube-proxy");
            (version, path)
        })
        .filter(|(_, path)| is_executable(path))
        .map(|(version, path)| Built {
            reported: reported_version(&path),
            version,
            path,
        })
        .collect();
    out.sort_by_key(|b| parse_version(&b.version));
    out
}

/// Supported versions whose binary is not in the cache.
pub fn missing() -> Vec<&'static str> {
    missing_in(&cache_dir())
}

/// Supported versions whose binary is not in `cache`.
pub fn missing_in(cache: &Path) -> Vec<&'static str> {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .filter(|v| !is_executable(&cache.join(v).join("kube-proxy")))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `v1.37.2` -> (1, 37, 2).
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.strip_prefix('v')?.split('.');
    let out = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(out)
}

/// One kube-proxy process, inside a node's network namespace.
pub struct KubeProxy {
    pub node: String,
    pub child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl KubeProxy {
    /// Writes `cfg` to `<dir>/kube-proxy-<node>.yaml` and starts `binary` with
    /// it inside `netns`; its stdout and stderr go to
    /// `<dir>/kube-proxy-<node>.log`. The process gets SIGTERM when the thread
    /// that started it exits (PR_SET_PDEATHSIG), and SIGKILL when this value is
    /// dropped without [`KubeProxy::stop`].
    pub fn start(binary: &Path, cfg: &NodeConfig, netns: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join(format!("kube-proxy-{}.yaml", cfg.node));
        std::fs::write(&config, cfg.to_yaml())?;
        let log = dir.join(format!("kube-proxy-{}.log", cfg.node));
        let stdout = std::fs::File::create(&log)?;
        let stderr = stdout.try_clone()?;
        let ns_fd = NetNs::new(netns).open()?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config={}", config.display()))
            .env_clear()
            .env("PATH", PATH)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        // In the node's namespace, and never outliving the harness (as for
        // svclab's own agents).
        crate::netns::prepare_child(cmd.as_std_mut(), Some(ns_fd), Group::Inherit);
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "starting {} for node {} in {netns}: {e}",
                binary.display(),
                cfg.node
            )
        })?;
        Ok(KubeProxy {
            node: cfg.node.clone(),
            child,
            config,
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions_match_the_go_modules() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/kube-proxy");
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("go.mod").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        found.sort_by_key(|v| parse_version(v));
        assert_eq!(found, SUPPORTED_VERSIONS);
        assert!(SUPPORTED_VERSIONS.contains(&DEFAULT_VERSION));
        for v in SUPPORTED_VERSIONS {
            let gomod = std::fs::read_to_string(dir.join(v).join("go.mod")).unwrap();
            assert!(
                gomod.contains(&format!("\tk8s.io/kubernetes {v} ")),
                "{v}/go.mod pins k8s.io/kubernetes at another version"
            );
            let (_, minor, patch) = parse_version(v).unwrap();
            let staging = format!(" v0.{minor}.{patch}\n");
            for l in gomod.lines().filter(|l| l.contains(" => ")) {
                assert!(
                    l.starts_with("\tk8s.io/") && format!("{l}\n").ends_with(&staging),
                    "{v}/go.mod: {l:?} is not the matching staging release"
                );
            }
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("v1.37.2"), Some((1, 37, 2)));
        assert_eq!(parse_version("1.37.2"), None);
        assert_eq!(parse_version("v1.37"), None);
        assert_eq!(parse_version("v1.37.2.1"), None);
        assert_eq!(parse_version("v1.38.0-beta.0"), None);
        assert!(parse_version("v1.34.4") < parse_version("v1.37.2"));
    }

    #[test]
    fn cache_paths() {
        // The default (the environment may override it).
        if std::env::var_os(CACHE_ENV).is_none() {
            assert_eq!(
                binary("v1.37.2"),
                Path::new("/var/cache/svclab/kube-proxy/v1.37.2/kube-proxy")
            );
        }
        assert_eq!(build_command("v1.34.4"), "ci/kube-proxy v1.34.4");
    }
}
