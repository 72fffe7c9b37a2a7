//! Scratch files and directories a test makes, removed when dropped (also during a panic, and
//! at an interrupt), so a failing test leaves nothing in `/tmp` or under `/sys/fs/bpf`.

use std::path::{Path, PathBuf};

use crate::netns::unique_suffix;

/// A path no other test (of this process or another live one) uses; whatever is there when
/// it is dropped is removed, a file or a whole directory.
#[derive(Debug)]
pub struct ScratchPath(PathBuf);

impl ScratchPath {
    /// `{dir}/mlb-{label}-{pid}-{n}{ext}`; nothing is created.
    pub fn in_dir(dir: &Path, label: &str, ext: &str) -> Self {
        let path = dir.join(format!("mlb-{label}-{}{ext}", unique_suffix()));
        // An interrupted run (which drops nothing) removes it too.
        crate::interrupt::track_path(&path);
        Self(path)
    }

    /// A path in the system's temporary directory (see [`ScratchPath::in_dir`]).
    pub fn temp(label: &str, ext: &str) -> Self {
        Self::in_dir(&std::env::temp_dir(), label, ext)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as text, for command lines.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("scratch paths are UTF-8")
    }
}

impl std::ops::Deref for ScratchPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.0) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
        crate::interrupt::untrack_path(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_go_when_dropped() {
        let file = ScratchPath::temp("scratch-test", ".txt");
        std::fs::write(&*file, "x").unwrap();
        let dir = ScratchPath::temp("scratch-test", "");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let (file_path, dir_path) = (file.to_path_buf(), dir.to_path_buf());
        assert_ne!(file_path, dir_path);
        drop((file, dir));
        assert!(!file_path.exists() && !dir_path.exists());
    }
}
