//! Test support: run a closure in a brand-new network namespace, so tests
//! that program the kernel never touch the host's own namespace and can run
//! in parallel. The namespace dies with the thread (and any tool it ran).

use nix::sched::{CloneFlags, unshare};

/// Why kernel tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (CAP_NET_ADMIN) to create a network namespace".into());
    }
    None
}

/// Runs `f` on a fresh thread inside a new, empty network namespace with
/// `lo` up. Tools spawned from `f` inherit that namespace.
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            crate::kernel::cmd::run("ip", &["link", "set", "lo", "up"], None).expect("lo up");
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}

/// Skips the calling test (returns early) with a reason when kernel tests
/// cannot run on this machine.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = $crate::testns::unavailable() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}
