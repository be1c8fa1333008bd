//! The floor under every backend: the kernel tools and interfaces they
//! share. Nothing here knows a backend.
//!
//! - [`cmd`]: running a tool with errors that name the command.
//! - [`conntrack`]: stale UDP conntrack cleanup over ctnetlink.
//! - [`iptables`]: iptables save/restore/jumps, either flavor.
//! - [`netlink`] and [`links`]: netlink request/reply, and links and
//!   addresses over rtnetlink.
//! - [`dump`]: writing a sync's exact tool input for the floor benchmark.
//! - [`probe`]: a throwaway network namespace for capability probes.

pub mod cmd;
pub mod conntrack;
pub mod dump;
pub mod iptables;
pub mod links;
pub mod netlink;
pub mod probe;
