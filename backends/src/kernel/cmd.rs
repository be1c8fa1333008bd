//! Running the dataplane's own tools (iptables-restore, nft, conntrack)
//! with errors that name the command.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::BackendError;

/// Output of a tool that exited with success.
#[derive(Debug)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args..`, feeding `stdin` if given, and fails with the
/// command line, exit status and stderr when it does not exit 0.
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<ToolOutput, BackendError> {
    run_accepting(program, args, stdin, &[0])
}

/// Like [`run`], but any exit code in `ok_codes` counts as success.
pub fn run_accepting(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    ok_codes: &[i32],
) -> Result<ToolOutput, BackendError> {
    let command = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackendError::io(format!("starting `{command}`"), e))?;
    let output = std::thread::scope(|scope| {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Written from a second thread so a tool that fills its stdout
            // before reading all of stdin cannot deadlock us.
            scope.spawn(move || {
                let _ = pipe.write_all(input);
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| BackendError::io(format!("waiting for `{command}`"), e))?;
    let code = output.status.code();
    if code.is_some_and(|c| ok_codes.contains(&c)) {
        Ok(ToolOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    } else {
        Err(BackendError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `program` is on PATH (or in /usr/sbin, /sbin).
pub fn have(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .any(|dir| std::path::Path::new(dir).join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"], None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn stdin_is_fed_and_large_output_does_not_deadlock() {
        let input = "x".repeat(4 << 20);
        let out = run("cat", &[], Some(input.as_bytes())).unwrap();
        assert_eq!(out.stdout.len(), input.len());
    }

    #[test]
    fn accepted_codes() {
        assert!(run_accepting("sh", &["-c", "exit 1"], None, &[0, 1]).is_ok());
        assert!(!have("surely-not-a-real-tool-svclab"));
        assert!(have("sh"));
    }
}
