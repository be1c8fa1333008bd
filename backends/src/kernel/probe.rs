//! Capability probes ask the kernel inside a throwaway private network
//! namespace, so probing never touches the host's own rules or links.

use nix::sched::{CloneFlags, unshare};

use crate::Unavailable;

/// Runs `f` on a thread inside a new network namespace that dies with it.
pub fn in_throwaway_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, Unavailable> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| {
                Unavailable::new(format!(
                    "cannot create a private network namespace to probe the kernel ({errno}): \
                     run as root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                ))
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(Unavailable::new("the kernel probe thread panicked")))
    })
}
