//! Kernels for VM mode (`svclab vm --kernel SPEC`): those installed under
//! /boot (modules in /lib/modules), and stock Debian kernels that `ci/kernels`
//! fetched into svclab's own cache, one folder per release:
//! `<cache>/<release>/vmlinuz-<release>`, `lib/modules/<release>/` and
//! `svclab-kernel` (the suite, package and version it came from).
//!
//! A spec is a path to a kernel image, a release (`6.12.95+deb12-amd64`), its
//! package name (`linux-image-6.12.95+deb12-amd64`), a version prefix (`6.1`,
//! `6.12`: the newest release of it) or `unstable` (the newest kernel fetched
//! from Debian's unstable suite).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Overrides the cache folder.
pub const CACHE_ENV: &str = "SVCLAB_KERNELS";
pub const DEFAULT_CACHE: &str = "/var/cache/svclab/kernels";
/// The kernels `ci/kernels` fetches by name, and the Debian suite of each.
pub const FETCHABLE: &[(&str, &str)] = &[
    ("6.1", "bookworm"),
    ("6.12", "bookworm-backports"),
    ("unstable", "sid"),
];
/// The file in a cached kernel's folder that says where it came from.
pub const ORIGIN_FILE: &str = "svclab-kernel";

/// The cache folder `ci/kernels` fills.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Where a kernel was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Place {
    /// Installed: /boot, modules under /lib/modules.
    Boot,
    /// Fetched by `ci/kernels` into svclab's cache.
    Cache,
    /// Given as a path.
    Path,
}

/// One kernel VM mode can boot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kernel {
    pub release: String,
    pub image: PathBuf,
    /// Its `lib/modules/<release>` folder, when that holds a `modules.dep`
    /// (without it the guest cannot modprobe ip_vs, nf_tables, ...).
    pub modules: Option<PathBuf>,
    pub place: Place,
    /// The Debian suite, package and package version it was fetched from
    /// (cached kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Kernel {
    /// The folder the guest must be shown (read-only) to reach the modules:
    /// a kernel's own root with `lib/modules` when that is not the host's
    /// `/`. The VM mounts a fresh /var/cache, so the cache is not otherwise
    /// visible there.
    pub fn guest_dir(&self) -> Option<PathBuf> {
        let modules = self.modules.as_ref()?;
        // <root>/lib/modules/<release>
        let root = modules.parent()?.parent()?.parent()?;
        (root != Path::new("/")).then(|| root.to_path_buf())
    }

    /// One line for `svclab doctor` and error messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.release, self.image.display());
        if let (Some(suite), Some(version)) = (&self.suite, &self.version) {
            s.push_str(&format!(", Debian {suite} {version}"));
        }
        s.push(')');
        s
    }
}

/// Where kernels are looked for.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Installed kernel images (`vmlinuz-<release>`).
    pub boot: PathBuf,
    /// Their modules (`<release>/modules.dep`).
    pub modules: PathBuf,
    /// `ci/kernels`'s cache.
    pub cache: PathBuf,
}

impl Sources {
    /// This host's: /boot, /lib/modules and [`cache_dir`].
    pub fn host() -> Sources {
        Sources {
            boot: "/boot".into(),
            modules: "/lib/modules".into(),
            cache: cache_dir(),
        }
    }

    /// Every kernel found, installed ones first, each group oldest first.
    pub fn available(&self) -> Vec<Kernel> {
        let mut boot: Vec<Kernel> = read_dir_sorted(&self.boot)
            .into_iter()
            .filter_map(|p| {
                let release = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix("vmlinuz-")?
                    .to_string();
                if !p.is_file() || release.is_empty() {
                    return None;
                }
                Some(Kernel {
                    modules: modules_dir(&self.modules.join(&release)),
                    release,
                    image: p,
                    place: Place::Boot,
                    suite: None,
                    package: None,
                    version: None,
                })
            })
            .collect();
        boot.sort_by(|a, b| release_cmp(&a.release, &b.release));
        let mut cache: Vec<Kernel> = read_dir_sorted(&self.cache)
            .into_iter()
            .filter_map(|dir| {
                let release = dir.file_name()?.to_str()?.to_string();
                // ci/kernels unpacks into .fetch-* and renames when done.
                if release.starts_with('.') {
                    return None;
                }
                let image = dir.join(format!("vmlinuz-{release}"));
                if !image.is_file() {
                    return None;
                }
                let origin = std::fs::read_to_string(dir.join(ORIGIN_FILE)).unwrap_or_default();
                let field = |k: &str| {
                    origin.lines().find_map(|l| {
                        l.strip_prefix(k)
                            .and_then(|v| v.strip_prefix('='))
                            .map(str::to_string)
                    })
                };
                Some(Kernel {
                    modules: modules_dir(&dir.join("lib/modules").join(&release)),
                    suite: field("suite"),
                    package: field("package"),
                    version: field("version"),
                    release,
                    image,
                    place: Place::Cache,
                })
            })
            .collect();
        cache.sort_by(|a, b| release_cmp(&a.release, &b.release));
        boot.extend(cache);
        boot
    }

    /// The kernel `spec` names (see the module's documentation).
    pub fn resolve(&self, spec: &str) -> Result<Kernel> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("an empty kernel spec");
        }
        if spec.contains('/') {
            return from_path(Path::new(spec));
        }
        let all = self.available();
        let newest = |it: Vec<&Kernel>| {
            it.into_iter()
                .max_by(|a, b| {
                    release_cmp(&a.release, &b.release)
                        // The same release installed and cached: the installed one.
                        .then_with(|| (b.place == Place::Boot).cmp(&(a.place == Place::Boot)))
                })
                .cloned()
        };
        let found = if matches!(spec, "unstable" | "sid") {
            newest(
                all.iter()
                    .filter(|k| k.suite.as_deref() == Some("sid"))
                    .collect(),
            )
        } else {
            let want = spec.strip_prefix("linux-image-").unwrap_or(spec);
            let want = want.strip_suffix("-unsigned").unwrap_or(want);
            newest(all.iter().filter(|k| k.release == want).collect()).or_else(|| {
                newest(
                    all.iter()
                        .filter(|k| {
                            k.release
                                .strip_prefix(want)
                                .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
                        })
                        .collect(),
                )
            })
        };
        if let Some(k) = found {
            return Ok(k);
        }
        let have = if all.is_empty() {
            "none".to_string()
        } else {
            all.iter()
                .map(Kernel::describe)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let fetch = if fetchable(spec) {
            format!("; fetch it with `ci/kernels {spec}` (or `ci/setup --kernels {spec}`)")
        } else {
            "; `ci/kernels` fetches 6.1, 6.12, unstable or an exact Debian release \
             (e.g. 6.12.95+deb12-amd64)"
                .to_string()
        };
        bail!(
            "no kernel {spec} for VM mode in {} or {}; available: {have}{fetch}",
            self.boot.display(),
            self.cache.display()
        )
    }

    /// The kernels `ci/kernels` fetches by name that are not here.
    pub fn missing(&self) -> Vec<(&'static str, &'static str)> {
        FETCHABLE
            .iter()
            .filter(|(name, _)| self.resolve(name).is_err())
            .copied()
            .collect()
    }
}

/// Whether `ci/kernels` knows how to fetch `spec`.
fn fetchable(spec: &str) -> bool {
    if FETCHABLE.iter().any(|(n, _)| *n == spec) || spec == "sid" {
        return true;
    }
    // An exact release: digits.digits, then more, with a flavour.
    let r = spec.strip_prefix("linux-image-").unwrap_or(spec);
    let mut parts = r.splitn(3, '.');
    let digits = |s: Option<&str>| {
        s.is_some_and(|s| {
            let head: String = s.chars().take_while(char::is_ascii_digit).collect();
            !head.is_empty()
        })
    };
    digits(parts.next()) && digits(parts.next()) && r.contains('-')
}

/// A kernel given by its image's path; its modules are found as virtme-ng
/// finds them: `lib/modules/<release>` in the nearest folder above it.
fn from_path(image: &Path) -> Result<Kernel> {
    if !image.is_file() {
        bail!("kernel {} does not exist", image.display());
    }
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let release = name.strip_prefix("vmlinuz-").unwrap_or(&name).to_string();
    let modules = image
        .ancestors()
        .skip(1)
        .map(|d| d.join("lib/modules").join(&release))
        .find(|d| d.is_dir())
        .and_then(|d| modules_dir(&d));
    Ok(Kernel {
        release,
        image: image.to_path_buf(),
        modules,
        place: Place::Path,
        suite: None,
        package: None,
        version: None,
    })
}

fn modules_dir(dir: &Path) -> Option<PathBuf> {
    dir.join("modules.dep").is_file().then(|| dir.to_path_buf())
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Orders kernel releases as versions: runs of digits compare as numbers
/// (6.1.0-57 < 6.12.9 < 6.12.95).
pub fn release_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(rb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

/// The kernels VM mode has, and those `ci/kernels` would fetch (`svclab
/// doctor`; `-o json` prints it as is).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// `ci/kernels`'s cache.
    pub cache: PathBuf,
    pub available: Vec<Kernel>,
    pub missing: Vec<Missing>,
}

/// A kernel `ci/kernels` fetches by name that is not here.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Missing {
    pub name: String,
    /// Its Debian suite.
    pub suite: String,
    /// The command that fetches it.
    pub fetch: String,
}

impl Sources {
    pub fn inventory(&self) -> Inventory {
        Inventory {
            cache: self.cache.clone(),
            available: self.available(),
            missing: self
                .missing()
                .into_iter()
                .map(|(name, suite)| Missing {
                    name: name.into(),
                    suite: suite.into(),
                    fetch: format!("ci/kernels {name}"),
                })
                .collect(),
        }
    }
}

/// `svclab doctor`'s section: each kernel (where, whether its modules are
/// there), then each fetchable one that is missing, with the command.
pub fn doctor_lines(inv: &Inventory) -> Vec<String> {
    let mut lines = vec![format!(
        "kernels for VM mode (svclab vm --kernel; fetched into {}):",
        inv.cache.display()
    )];
    for k in &inv.available {
        let (ok, modules) = match &k.modules {
            Some(m) => (true, format!("modules in {}", m.display())),
            None => (
                false,
                "no modules.dep: the guest cannot load modules (ip_vs, nf_tables); \
                 fetch it again with ci/kernels"
                    .to_string(),
            ),
        };
        let from = match (&k.suite, &k.version) {
            (Some(suite), Some(v)) => format!(" · Debian {suite} {v}"),
            _ => String::new(),
        };
        lines.push(format!(
            "  {} {:<22} {} · {modules}{from}",
            if ok { "✔" } else { "✘" },
            k.release,
            k.image.display()
        ));
    }
    for m in &inv.missing {
        lines.push(format!(
            "  ✘ {:<22} missing (Debian {}): {} (or ci/setup --kernels {})",
            m.name, m.suite, m.fetch, m.name
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /boot, /lib/modules and cache in a temp dir.
    struct Fixture {
        root: PathBuf,
        sources: Sources,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let root =
                std::env::temp_dir().join(format!("svclab-kernels-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let sources = Sources {
                boot: root.join("boot"),
                modules: root.join("lib/modules"),
                cache: root.join("cache"),
            };
            std::fs::create_dir_all(&sources.boot).unwrap();
            std::fs::create_dir_all(&sources.cache).unwrap();
            Fixture { root, sources }
        }
        fn installed(&self, release: &str, modules: bool) {
            std::fs::write(self.sources.boot.join(format!("vmlinuz-{release}")), "k").unwrap();
            let m = self.sources.modules.join(release);
            std::fs::create_dir_all(&m).unwrap();
            if modules {
                std::fs::write(m.join("modules.dep"), "").unwrap();
            }
        }
        fn cached(&self, release: &str, suite: &str, modules: bool) {
            let d = self.sources.cache.join(release);
            let m = d.join("lib/modules").join(release);
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(d.join(format!("vmlinuz-{release}")), "k").unwrap();
            if modules {
                std::fs::write(m.join("modules.dep"), "").unwrap();
            }
            std::fs::write(
                d.join(ORIGIN_FILE),
                format!(
                    "release={release}\nsuite={suite}\npackage=linux-image-{release}\nversion=1-1\n"
                ),
            )
            .unwrap();
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn release(s: &Sources, spec: &str) -> String {
        s.resolve(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e:#}"))
            .release
    }

    #[test]
    fn versions_order_numerically() {
        assert_eq!(
            release_cmp("6.1.0-57-amd64", "6.12.9+deb12-amd64"),
            Ordering::Less
        );
        assert_eq!(
            release_cmp("6.12.9+deb12-amd64", "6.12.95+deb12-amd64"),
            Ordering::Less
        );
        assert_eq!(
            release_cmp("6.1.0-9-amd64", "6.1.0-57-amd64"),
            Ordering::Less
        );
        assert_eq!(
            release_cmp("7.2.13+deb14-amd64", "6.12.95+deb12-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            release_cmp("6.1.0-57-amd64", "6.1.0-57-amd64"),
            Ordering::Equal
        );
    }

    #[test]
    fn specs_resolve_against_boot_and_cache() {
        let f = Fixture::new("resolve");
        f.installed("6.1.0-57-amd64", true);
        f.cached("6.1.0-50-amd64", "bookworm", true);
        f.cached("6.12.9+deb12-amd64", "bookworm-backports", true);
        f.cached("6.12.95+deb12-amd64", "bookworm-backports", true);
        f.cached("7.2.13+deb14-amd64", "sid", true);
        // A half-unpacked fetch is not a kernel.
        std::fs::create_dir_all(f.sources.cache.join(".fetch-7.3.0+deb14-amd64.x")).unwrap();
        let s = &f.sources;
        // Version prefixes: the newest of that version, never 6.12 for 6.1.
        assert_eq!(release(s, "6.1"), "6.1.0-57-amd64");
        assert_eq!(release(s, "6.12"), "6.12.95+deb12-amd64");
        assert_eq!(release(s, "6.12.9"), "6.12.9+deb12-amd64");
        assert_eq!(release(s, "7"), "7.2.13+deb14-amd64");
        // Exact releases and package names.
        assert_eq!(release(s, "6.12.9+deb12-amd64"), "6.12.9+deb12-amd64");
        assert_eq!(release(s, "linux-image-6.1.0-50-amd64"), "6.1.0-50-amd64");
        assert_eq!(
            release(s, "linux-image-6.12.95+deb12-amd64-unsigned"),
            "6.12.95+deb12-amd64"
        );
        // unstable: only a kernel fetched from sid.
        assert_eq!(release(s, "unstable"), "7.2.13+deb14-amd64");
        assert_eq!(release(s, "sid"), "7.2.13+deb14-amd64");

        let k = s.resolve("6.1").unwrap();
        assert_eq!(k.place, Place::Boot);
        assert_eq!(k.image, s.boot.join("vmlinuz-6.1.0-57-amd64"));
        assert_eq!(k.modules, Some(s.modules.join("6.1.0-57-amd64")));
        let k = s.resolve("6.12").unwrap();
        assert_eq!(k.place, Place::Cache);
        assert_eq!(k.suite.as_deref(), Some("bookworm-backports"));
        assert_eq!(k.version.as_deref(), Some("1-1"));
        assert_eq!(
            k.image,
            s.cache
                .join("6.12.95+deb12-amd64/vmlinuz-6.12.95+deb12-amd64")
        );
        assert_eq!(
            k.modules,
            Some(
                s.cache
                    .join("6.12.95+deb12-amd64/lib/modules/6.12.95+deb12-amd64")
            )
        );
        // The guest is shown the cached kernel's folder; an installed one
        // needs nothing (its modules are in the guest's own /lib/modules).
        assert_eq!(k.guest_dir(), Some(s.cache.join("6.12.95+deb12-amd64")));
        let boot = Kernel {
            modules: Some("/lib/modules/6.1.0-57-amd64".into()),
            ..s.resolve("6.1").unwrap()
        };
        assert_eq!(boot.guest_dir(), None);
    }

    #[test]
    fn a_path_is_taken_as_is_with_its_modules_found_above_it() {
        let f = Fixture::new("path");
        f.cached("6.12.95+deb12-amd64", "bookworm-backports", true);
        let image = f
            .sources
            .cache
            .join("6.12.95+deb12-amd64/vmlinuz-6.12.95+deb12-amd64");
        let k = f.sources.resolve(&image.display().to_string()).unwrap();
        assert_eq!(k.place, Place::Path);
        assert_eq!(k.release, "6.12.95+deb12-amd64");
        assert_eq!(k.image, image);
        assert_eq!(
            k.guest_dir(),
            Some(f.sources.cache.join("6.12.95+deb12-amd64"))
        );
        let e = f
            .sources
            .resolve(&f.root.join("nope/vmlinuz-1.2.3").display().to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn missing_kernels_say_what_is_there_and_how_to_fetch() {
        let f = Fixture::new("missing");
        f.installed("6.1.0-57-amd64", true);
        let s = &f.sources;
        let e = s.resolve("6.12").unwrap_err().to_string();
        assert!(e.starts_with("no kernel 6.12 for VM mode in "), "{e}");
        assert!(e.contains("available: 6.1.0-57-amd64 ("), "{e}");
        assert!(e.contains("fetch it with `ci/kernels 6.12`"), "{e}");
        let e = s.resolve("unstable").unwrap_err().to_string();
        assert!(e.contains("`ci/kernels unstable`"), "{e}");
        // An installed kernel never counts as unstable's.
        f.installed("7.2.13+deb14-amd64", true);
        assert!(s.resolve("unstable").is_err());
        let e = s.resolve("6.12.57+deb12-amd64").unwrap_err().to_string();
        assert!(e.contains("`ci/kernels 6.12.57+deb12-amd64`"), "{e}");
        let e = s.resolve("5.10").unwrap_err().to_string();
        assert!(e.contains("ci/kernels` fetches 6.1, 6.12, unstable"), "{e}");
        assert_eq!(
            s.missing(),
            vec![("6.12", "bookworm-backports"), ("unstable", "sid")]
        );
        let empty = Fixture::new("empty");
        let e = empty.sources.resolve("6.1").unwrap_err().to_string();
        assert!(e.contains("available: none;"), "{e}");
    }

    #[test]
    fn doctor_lists_kernels_their_modules_and_the_missing_ones() {
        let f = Fixture::new("doctor");
        f.installed("6.1.0-57-amd64", true);
        f.cached("6.12.95+deb12-amd64", "bookworm-backports", false);
        let lines = doctor_lines(&f.sources.inventory());
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("kernels for VM mode"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("  ✔ 6.1.0-57-amd64 ")
                && lines[1].contains("modules in ")
                && lines[1].ends_with("lib/modules/6.1.0-57-amd64"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("  ✘ 6.12.95+deb12-amd64 ")
                && lines[2].contains("no modules.dep")
                && lines[2].ends_with("Debian bookworm-backports 1-1"),
            "{}",
            lines[2]
        );
        // 6.12 is there (its modules are not: said above), unstable is not.
        assert!(
            lines[3].starts_with("  ✘ unstable ")
                && lines[3].contains("missing (Debian sid): ci/kernels unstable"),
            "{}",
            lines[3]
        );
    }
}
