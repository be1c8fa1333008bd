//! Named network namespaces, made the way `ip netns add` makes them (a bind
//! mount of the namespace under /run/netns), and a guard that moves the
//! current thread into one and always moves it back.
//!
//! Only namespace *files* are created in /run/netns; the host's own network
//! namespace is never entered for writing and never changed.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {name}: {op}: {source}")]
    Sys {
        name: String,
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("network namespace {name}: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("network namespace {0}: not created, svclab is shutting down")]
    Stopping(String),
}

fn sys<'a>(name: &'a str, op: &'static str) -> impl FnOnce(nix::Error) -> NetNsError + 'a {
    move |source| NetNsError::Sys {
        name: name.to_string(),
        op,
        source,
    }
}

fn io_err<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> NetNsError + 'a {
    move |source| NetNsError::Io {
        name: name.to_string(),
        op,
        source,
    }
}

/// A named network namespace (a file under /run/netns).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: impl Into<String>) -> Self {
        NetNs { name: name.into() }
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Opens the namespace, for `setns` or for creating links in it.
    pub fn open(&self) -> Result<OwnedFd, NetNsError> {
        File::open(self.path())
            .map(OwnedFd::from)
            .map_err(io_err(&self.name, "open"))
    }

    /// Creates the namespace. The calling thread is left where it was.
    pub fn create(&self) -> Result<(), NetNsError> {
        self.create_then(|| Ok(()))
    }

    /// Creates the namespace and runs `init` inside it (on this thread, while
    /// it is entered) before returning, e.g. to write its sysctls.
    pub fn create_then(
        &self,
        init: impl FnOnce() -> Result<(), NetNsError>,
    ) -> Result<(), NetNsError> {
        if crate::stop::stopping() {
            return Err(NetNsError::Stopping(self.name.clone()));
        }
        ensure_netns_dir()?;
        let path = self.path();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(self.name.clone()));
            }
            Err(e) => return Err(io_err(&self.name, "create mount point")(e)),
        }
        let result = (|| {
            let home = current()?;
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys(&self.name, "unshare"))?;
            let bound = mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(&self.name, "bind mount"));
            let ran = bound.and_then(|()| init());
            // Back home before anything else can run on this thread.
            setns(&home, CloneFlags::CLONE_NEWNET)
                .expect("returning a thread to its own network namespace cannot fail");
            ran
        })();
        if result.is_err() {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Deletes the namespace file; the kernel frees the namespace when the
    /// last process in it has exited.
    pub fn delete(&self) -> Result<(), NetNsError> {
        let path = self.path();
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(sys(&self.name, "unmount")(e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.name, "remove")(e)),
        }
    }

    /// Runs `f` on the current thread inside this namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetNsError> {
        let fd = self.open()?;
        let _guard = NetNsGuard::enter(fd.as_fd(), &self.name)?;
        Ok(f())
    }
}

/// The current thread's network namespace.
fn current() -> Result<OwnedFd, NetNsError> {
    File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(io_err("self", "open /proc/thread-self/ns/net"))
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespace
/// bind mounts propagate to other mount namespaces (`ip netns exec`).
fn ensure_netns_dir() -> Result<(), NetNsError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(io_err(NETNS_DIR, "mkdir"))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(NETNS_DIR, "bind mount onto itself"))?;
            shared().map_err(sys(NETNS_DIR, "make shared"))
        }
        Err(e) => Err(sys(NETNS_DIR, "make shared")(e)),
    }
}

/// The current thread is inside another network namespace while this
/// lives; dropping it returns the thread to where it was. Not `Send`: the
/// guard must drop on the thread it entered on.
pub struct NetNsGuard {
    home: OwnedFd,
    _not_send: PhantomData<*const ()>,
}

impl NetNsGuard {
    pub fn enter(target: BorrowedFd<'_>, name: &str) -> Result<Self, NetNsError> {
        let home = current()?;
        setns(target, CloneFlags::CLONE_NEWNET).map_err(sys(name, "setns"))?;
        Ok(NetNsGuard {
            home,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        setns(&self.home, CloneFlags::CLONE_NEWNET)
            .expect("returning a thread to its own network namespace cannot fail");
    }
}

/// Whether a child leads a process group of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Ours: it gets what our terminal sends.
    Inherit,
    /// Its own: a terminal's Ctrl-C reaches svclab, which then stops the
    /// child in order, not behind its back.
    Own,
}

/// Prepares `cmd` (std's; tokio's through `as_std_mut`) for a child that
/// enters the namespace `netns` (opened with [`NetNs::open`]), when given,
/// between fork and exec, so that nothing it does runs in the host's
/// namespace; leads its own process group with [`Group::Own`]; and gets
/// SIGTERM when the thread that spawned it ends (PR_SET_PDEATHSIG), so it
/// never outlives svclab. The namespace stays open while `cmd` lives.
pub fn prepare_child(cmd: &mut std::process::Command, netns: Option<OwnedFd>, group: Group) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls run between fork and exec; the
    // closure owns `netns`, so it is open until the command is spawned.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = &netns
                && libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if group == Group::Own && libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The inode of a namespace file, to recognise which processes are in it.
pub fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Lists namespaces under /run/netns whose names start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<NetNs> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<NetNs> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .map(NetNs::new)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes a sysctl of the namespace the calling thread is in (/proc/sys/net
/// is per network namespace).
pub fn write_sysctl(key: &str, value: &str) -> Result<(), NetNsError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(io_err(key, "write sysctl"))
}

/// Raw fd helper for APIs that want an i32.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_delete() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root to create network namespaces");
            return;
        }
        let ns = NetNs::new(format!("svclab-test-{}-netns", std::process::id()));
        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        ns.create_then(|| write_sysctl("net.ipv4.ip_forward", "1"))
            .unwrap();
        assert!(ns.exists());
        assert!(matches!(ns.create(), Err(NetNsError::Exists(_))));
        let inside = ns
            .run(|| {
                (
                    std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
                    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
                )
            })
            .unwrap();
        assert_ne!(inside.0, before);
        assert_eq!(inside.1.trim(), "1");
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            before
        );
        ns.delete().unwrap();
        assert!(!ns.exists());
        ns.delete().unwrap();
    }
}
