//! Running nft, conntrack and friends inside a lab namespace: the child
//! enters the namespace between fork and exec, so nothing runs in the
//! host's own namespace, and dies with us.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use crate::netns::{Group, NetNs};

use super::TraceError;

fn command_in(netns: &str, program: &str, args: &[&str]) -> Result<Command, TraceError> {
    let fd = NetNs::new(netns)
        .open()
        .map_err(|e| TraceError::tool(netns, program, args, e.to_string()))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    crate::netns::prepare_child(&mut cmd, Some(fd), Group::Inherit);
    Ok(cmd)
}

/// Runs `program args` in `netns`, feeding `stdin`; its stdout on success.
pub fn run_in(
    netns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, TraceError> {
    let mut cmd = command_in(netns, program, args)?;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| TraceError::tool(netns, program, args, format!("starting: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| TraceError::tool(netns, program, args, format!("writing stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| TraceError::tool(netns, program, args, format!("waiting: {e}")))?;
    if !out.status.success() {
        return Err(TraceError::tool(
            netns,
            program,
            args,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `program args` in `netns` with stdout piped, for the caller to
/// stop.
pub fn spawn_in(netns: &str, program: &str, args: &[&str]) -> Result<Child, TraceError> {
    let mut cmd = command_in(netns, program, args)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
        .map_err(|e| TraceError::tool(netns, program, args, format!("starting: {e}")))
}
