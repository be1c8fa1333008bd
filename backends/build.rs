//! Compiles the eBPF programs in bpf/ with clang, when clang is there.
//!
//! The workspace must build on machines without clang: then no object is
//! made, a warning says so, and the ebpf backend reports itself unavailable
//! with the reason (passed on in `SVCLAB_EBPF_MISSING`). With an object,
//! the `svclab_ebpf_object` cfg is set and `OUT_DIR/svclab_lb.o` holds it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &[
    "lb.c", "abi.h", "config.h", "flows.h", "maps.h", "packet.h", "reject.h", "select.h",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(svclab_ebpf_object)");
    println!("cargo::rerun-if-env-changed=SVCLAB_CLANG");
    for s in SOURCES {
        println!("cargo::rerun-if-changed=bpf/{s}");
    }
    let clang = env::var("SVCLAB_CLANG").unwrap_or_else(|_| "clang".to_string());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("svclab_lb.o");
    match compile(&clang, &out) {
        Ok(()) => println!("cargo::rustc-cfg=svclab_ebpf_object"),
        Err(reason) => {
            println!("cargo::warning=the ebpf backend is disabled: {reason}");
            println!("cargo::rustc-env=SVCLAB_EBPF_MISSING={reason}");
        }
    }
}

fn compile(clang: &str, out: &Path) -> Result<(), String> {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // linux/types.h includes asm/types.h, which Debian keeps per target.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{dir}"));
    }
    cmd.arg("-c").arg("bpf/lb.c").arg("-o").arg(out);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                "svclab was built without clang, so the eBPF programs were not compiled: \
                 install clang and rebuild"
                    .to_string(),
            );
        }
        Err(e) => {
            return Err(format!(
                "running `{clang}` failed ({e}): install clang and rebuild"
            ));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or("no error text")
        .trim();
    Err(format!(
        "`{clang} -target bpf` could not compile backends/bpf/lb.c ({first}): install \
         libbpf-dev and the Linux uapi headers (linux-libc-dev) and rebuild"
    ))
}

fn multiarch_include() -> Option<String> {
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").ok()?.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        _ => return None,
    };
    let dir = format!("/usr/include/{arch}");
    Path::new(&dir).is_dir().then_some(dir)
}
