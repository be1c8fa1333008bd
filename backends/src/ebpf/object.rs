//! The compiled BPF object, embedded at build time by `build.rs` (absent
//! when the build machine had no clang).

use crate::Unavailable;

// Aligned: the ELF parser reads the headers in place.
#[cfg(svclab_ebpf_object)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svclab_lb.o"));

/// The ELF object with every program and map, or why there is none.
#[cfg(svclab_ebpf_object)]
pub fn bytes() -> Result<&'static [u8], Unavailable> {
    Ok(OBJECT)
}

#[cfg(not(svclab_ebpf_object))]
pub fn bytes() -> Result<&'static [u8], Unavailable> {
    Err(Unavailable::new(env!("SVCLAB_EBPF_MISSING")))
}
