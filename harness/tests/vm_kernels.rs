//! Kernels for VM mode: `ci/kernels` fetches a kernel only when it is
//! missing and never touches the host's apt configuration, /boot or
//! /lib/modules; `svclab vm --kernel` names a missing kernel before booting
//! anything; `svclab doctor` lists them. No VM is booted here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every file and folder under `root`: its size, mode and mtime (contents
/// change their size or mtime).
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        out.insert(p.to_path_buf(), common::host::file_state(p));
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

fn changes(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut v = Vec::new();
    for (p, s) in after {
        match before.get(p) {
            None => v.push(format!("created {}", p.display())),
            Some(b) if b != s => v.push(format!("changed {}: {b} -> {s}", p.display())),
            _ => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        v.push(format!("removed {}", p.display()));
    }
    v
}

fn ci_kernels(env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = Command::new("bash");
    c.arg(common::root().join("ci/kernels")).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running ci/kernels")
}

/// The host's apt configuration, its installed kernels and dpkg's state.
fn host_trees() -> BTreeMap<PathBuf, String> {
    let mut t = tree(Path::new("/etc/apt"));
    for d in ["/boot", "/lib/modules"] {
        // Names and states one level down: the modules trees are large.
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            t.insert(e.path(), common::host::file_state(&e.path()));
        }
    }
    for f in ["/var/lib/dpkg/status", "/var/cache/apt/pkgcache.bin"] {
        t.insert(f.into(), common::host::file_state(Path::new(f)));
    }
    t
}

/// With every kernel it is asked for already there (a fixture cache, /boot
/// and /lib/modules), ci/kernels says so for each and does nothing: no apt
/// folder appears, nothing in the cache changes. No network, no root.
#[test]
fn present_kernels_are_not_fetched_again() {
    let dir = std::env::temp_dir().join(format!("svclab-ci-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (boot, modules, cache, apt) = (
        dir.join("boot"),
        dir.join("lib/modules"),
        dir.join("cache"),
        dir.join("apt"),
    );
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz-6.1.0-57-amd64"), "k").unwrap();
    std::fs::create_dir_all(modules.join("6.1.0-57-amd64")).unwrap();
    std::fs::write(modules.join("6.1.0-57-amd64/modules.dep"), "").unwrap();
    for (release, suite) in [
        ("6.12.95+deb12-amd64", "bookworm-backports"),
        ("7.2.13+deb14-amd64", "sid"),
    ] {
        let d = cache.join(release);
        std::fs::create_dir_all(d.join("lib/modules").join(release)).unwrap();
        std::fs::write(d.join(format!("vmlinuz-{release}")), "k").unwrap();
        std::fs::write(d.join("lib/modules").join(release).join("modules.dep"), "").unwrap();
        std::fs::write(
            d.join("svclab-kernel"),
            format!("release={release}\nsuite={suite}\n"),
        )
        .unwrap();
    }
    let env = [
        ("SVCLAB_BOOT", boot.as_path()),
        ("SVCLAB_MODULES", modules.as_path()),
        ("SVCLAB_KERNELS", cache.as_path()),
        ("SVCLAB_APT", apt.as_path()),
    ];
    let host = host_trees();
    let before = tree(&dir);
    for _ in 0..2 {
        let out = ci_kernels(
            &env,
            &[
                "6.1",
                "6.12",
                "unstable",
                "6.12.95+deb12-amd64",
                "linux-image-6.1.0-57-amd64",
            ],
        );
        let text = common::text(&out);
        assert!(out.status.success(), "{text}");
        for line in [
            "ci/kernels: 6.1: 6.1.0-57-amd64 is installed under ",
            "ci/kernels: 6.12: 6.12.95+deb12-amd64 is cached",
            "ci/kernels: unstable: 7.2.13+deb14-amd64 is cached",
            "ci/kernels: 6.12.95+deb12-amd64 is cached",
            "ci/kernels: 6.1.0-57-amd64 is installed under ",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("updating") && !text.contains("fetching"),
            "{text}"
        );
        assert_eq!(
            changes(&before, &tree(&dir)),
            Vec::<String>::new(),
            "{text}"
        );
    }
    // A kernel without its modules.dep is not there: it would be fetched
    // (which needs root and the network, so only the refusal is checked
    // without root).
    std::fs::remove_file(
        cache.join("6.12.95+deb12-amd64/lib/modules/6.12.95+deb12-amd64/modules.dep"),
    )
    .unwrap();
    if common::skip_reason().is_some() {
        let out = ci_kernels(&env, &["6.12"]);
        assert!(!out.status.success(), "{}", common::text(&out));
        assert!(
            common::text(&out).contains("needs root"),
            "{}",
            common::text(&out)
        );
    }
    let out = ci_kernels(&env, &["5.x"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("unknown kernel '5.x'"),
        "{}",
        common::text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(changes(&host, &host_trees()), Vec::<String>::new());
}

/// The real cache: ci/kernels 6.12 fetches bookworm-backports' newest 6.12
/// if it is missing (about 100 MiB), then a second run changes nothing. The
/// host's /etc/apt, /boot, /lib/modules and dpkg state are untouched by both,
/// and the guest-visible layout is what `svclab vm --kernel 6.12` resolves.
#[test]
fn fetching_6_12_is_idempotent_and_leaves_the_hosts_apt_alone() {
    if let Some(why) = common::skip_reason() {
        common::skip(&why);
        return;
    }
    let cache = svclab::kernels::cache_dir();
    let host = host_trees();
    let first = ci_kernels(&[], &["6.12"]);
    let text = common::text(&first);
    assert!(first.status.success(), "{text}");
    assert_eq!(
        changes(&host, &host_trees()),
        Vec::<String>::new(),
        "{text}"
    );
    let k = svclab::kernels::Sources::host()
        .resolve("6.12")
        .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    assert!(k.release.starts_with("6.12."), "{k:?}");
    assert_eq!(
        k.image,
        cache
            .join(&k.release)
            .join(format!("vmlinuz-{}", k.release))
    );
    let modules = k.modules.clone().expect("modules.dep");
    assert!(
        modules.join("kernel/net/netfilter/ipvs").is_dir(),
        "no IPVS modules in {}",
        modules.display()
    );
    let before = tree(&cache.join(&k.release));
    let second = ci_kernels(&[], &["6.12"]);
    let text = common::text(&second);
    assert!(second.status.success(), "{text}");
    assert!(
        text.contains(&format!("ci/kernels: 6.12: {} is cached", k.release)),
        "{text}"
    );
    assert!(
        !text.contains("updating") && !text.contains("fetching"),
        "{text}"
    );
    assert_eq!(
        changes(&before, &tree(&cache.join(&k.release))),
        Vec::<String>::new()
    );
    assert_eq!(
        changes(&host, &host_trees()),
        Vec::<String>::new(),
        "{text}"
    );
}

/// A kernel that is not here fails `svclab vm` before any VM starts, naming
/// what is there and the command that fetches it.
#[test]
fn vm_refuses_a_missing_kernel_before_booting() {
    let cache = std::env::temp_dir().join(format!("svclab-vm-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    let out = common::svclab()
        .env("SVCLAB_KERNELS", &cache)
        .args([
            "vm",
            "--kernel",
            "unstable",
            "--timeout",
            "1",
            "--",
            "--version",
        ])
        .output()
        .unwrap();
    let text = common::text(&out);
    let _ = std::fs::remove_dir_all(&cache);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no kernel unstable for VM mode in /boot or "),
        "{text}"
    );
    assert!(
        text.contains("fetch it with `ci/kernels unstable`"),
        "{text}"
    );
    assert!(!text.contains("booting"), "{text}");
}

/// `svclab doctor` (text and JSON) lists the kernels of this host and the
/// cache, and the fetchable ones that are missing.
#[test]
fn doctor_lists_vm_kernels() {
    let cache = std::env::temp_dir().join(format!("svclab-doctor-kernels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let release = "6.12.95+deb12-amd64";
    let d = cache.join(release);
    std::fs::create_dir_all(d.join("lib/modules").join(release)).unwrap();
    std::fs::write(d.join(format!("vmlinuz-{release}")), "k").unwrap();
    std::fs::write(d.join("lib/modules").join(release).join("modules.dep"), "").unwrap();
    std::fs::write(
        d.join("svclab-kernel"),
        "suite=bookworm-backports\npackage=linux-image-6.12.95+deb12-amd64\nversion=6.12.95-1~bpo12+1\n",
    )
    .unwrap();
    let json = common::svclab()
        .env("SVCLAB_KERNELS", &cache)
        .args(["doctor", "-o", "json"])
        .output()
        .unwrap();
    let text = common::svclab()
        .env("SVCLAB_KERNELS", &cache)
        .arg("doctor")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&cache);
    assert!(json.status.success(), "{}", common::text(&json));
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let k = &j["vmKernels"];
    assert_eq!(k["cache"], cache.display().to_string());
    let cached = k["available"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["place"] == "cache")
        .unwrap_or_else(|| panic!("{k}"));
    assert_eq!(cached["release"], release);
    assert_eq!(cached["suite"], "bookworm-backports");
    assert_eq!(cached["version"], "6.12.95-1~bpo12+1");
    assert_eq!(
        cached["modules"],
        d.join("lib/modules").join(release).display().to_string()
    );
    let missing: Vec<&str> = k["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        missing.contains(&"unstable") && !missing.contains(&"6.12"),
        "{k}"
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("kernels for VM mode"), "{text}");
    assert!(text.contains(&format!("  ✔ {release} ")), "{text}");
    assert!(
        text.contains("  ✘ unstable") && text.contains("ci/kernels unstable"),
        "{text}"
    );
}
