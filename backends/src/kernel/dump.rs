//! Each sync's exact tool input, written as `<seq>-<mode>.<ext>` into the
//! options' dump directory, so a benchmark can time the bare tool on the
//! same input (the floor).

use std::path::Path;

use crate::BackendError;
use crate::protocol::SyncMode;

/// Writes `text` as `dir/<seq>-<mode>.<ext>`, creating `dir`.
pub fn write(
    dir: &Path,
    seq: u64,
    mode: impl std::fmt::Display,
    ext: &str,
    text: &str,
) -> Result<(), BackendError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BackendError::io(format!("creating dump directory {}", dir.display()), e))?;
    let path = dir.join(format!("{seq}-{mode}.{ext}"));
    std::fs::write(&path, text)
        .map_err(|e| BackendError::io(format!("writing {}", path.display()), e))
}

/// The mode a sync's dump is named for.
pub fn mode(full: bool) -> SyncMode {
    if full {
        SyncMode::Full
    } else {
        SyncMode::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_by_sequence_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("dumps");
        write(&sub, 7, mode(false), "iptables", "*nat\nCOMMIT\n").unwrap();
        write(&sub, 8, "setup", "nft", "").unwrap();
        assert_eq!(
            std::fs::read_to_string(sub.join("7-partial.iptables")).unwrap(),
            "*nat\nCOMMIT\n"
        );
        assert!(sub.join("8-setup.nft").is_file());
    }
}
