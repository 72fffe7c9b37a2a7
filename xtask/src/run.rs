//! Running external commands: print them first, and turn a failure into one clear line.

use std::{
    env,
    ffi::OsStr,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Result, anyhow};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
        .to_path_buf()
}

/// A release binary built by `cargo xtask build`: `<target dir>/release/<name>`, absolute.
pub fn release_bin(name: &str) -> PathBuf {
    target_dir(
        &workspace_root(),
        env::var_os("CARGO_TARGET_DIR").as_deref(),
    )
    .join("release")
    .join(name)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root, where xtask
/// runs cargo) or `<root>/target`.
pub fn target_dir(root: &Path, cargo_target_dir: Option<&OsStr>) -> PathBuf {
    match cargo_target_dir.filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// A `Command` for `cargo`, run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Prints `cmd` as a shell line (`+ ENV=val program args...`), runs it with inherited stdio and
/// fails with `"{what} failed ({status}); {hint}"` unless it exits 0.
pub fn run(cmd: &mut Command, what: &str, hint: &str) -> Result<()> {
    println!("+ {}", display(cmd));
    let status = cmd.status().map_err(|err| {
        anyhow!(
            "{what} failed: could not start {}: {err}; {hint}",
            cmd.get_program().to_string_lossy()
        )
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("{what} failed ({}); {hint}", describe(status)))
    }
}

/// "exit 100" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The shell line for `cmd`, with the variables it sets in front. A `PATH` that extends the
/// current one is shown as `PATH=...:$PATH`.
pub fn display(cmd: &Command) -> String {
    let current_path = env::var("PATH").ok();
    let envs: Vec<(String, String)> = cmd
        .get_envs()
        .filter_map(|(key, value)| {
            Some((
                key.to_string_lossy().into_owned(),
                value?.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    let words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .map(|word| word.into_owned())
        .collect();
    render(&envs, &words, current_path.as_deref())
}

/// Pure part of [`display`].
pub fn render(envs: &[(String, String)], words: &[String], current_path: Option<&str>) -> String {
    let envs = envs.iter().map(|(key, value)| {
        let value = match current_path {
            Some(path) if key == "PATH" && !path.is_empty() => match value.strip_suffix(path) {
                Some(prefix) if prefix.ends_with(':') => format!("{}$PATH", quote(prefix)),
                _ => quote(value),
            },
            _ => quote(value),
        };
        format!("{key}={value}")
    });
    envs.chain(words.iter().map(|word| quote(word)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `PATH` with `dir` in front, or `None` when `dir` is already on it.
pub fn prepend_path(dir: &Path, path: Option<&OsStr>) -> Option<std::ffi::OsString> {
    let current: Vec<PathBuf> = path
        .map(|p| env::split_paths(p).collect())
        .unwrap_or_default();
    if current.iter().any(|p| p == dir) {
        return None;
    }
    env::join_paths(std::iter::once(dir.to_path_buf()).chain(current)).ok()
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `$HOME/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("--release"), "--release");
        assert_eq!(quote("target/release/lbd"), "target/release/lbd");
        assert_eq!(quote("${Status}"), "'${Status}'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn renders_env_and_words() {
        let envs = vec![("MESHLB_E2E".to_owned(), "1".to_owned())];
        let words = strings(&["cargo", "test", "--workspace"]);
        assert_eq!(
            render(&envs, &words, None),
            "MESHLB_E2E=1 cargo test --workspace"
        );
    }

    #[test]
    fn renders_extended_path() {
        let envs = vec![(
            "PATH".to_owned(),
            "/usr/lib/llvm-22/bin:/usr/bin:/bin".to_owned(),
        )];
        let words = strings(&["cargo", "install", "bpf-linker"]);
        assert_eq!(
            render(&envs, &words, Some("/usr/bin:/bin")),
            "PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker"
        );
        // A PATH that does not extend the current one is shown as is.
        assert_eq!(
            render(&envs, &words, Some("/sbin")),
            "PATH=/usr/lib/llvm-22/bin:/usr/bin:/bin cargo install bpf-linker"
        );
    }

    #[test]
    fn prepends_path_once() {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            prepend_path(dir, Some(OsStr::new("/usr/bin:/bin"))),
            Some("/root/.cargo/bin:/usr/bin:/bin".into())
        );
        assert_eq!(
            prepend_path(dir, Some(OsStr::new("/usr/bin:/root/.cargo/bin"))),
            None
        );
        assert_eq!(prepend_path(dir, None), Some("/root/.cargo/bin".into()));
    }

    #[test]
    fn target_dirs() {
        let root = Path::new("/w");
        assert_eq!(target_dir(root, None), Path::new("/w/target"));
        assert_eq!(
            target_dir(root, Some(OsStr::new(""))),
            Path::new("/w/target")
        );
        assert_eq!(
            target_dir(root, Some(OsStr::new("out"))),
            Path::new("/w/out")
        );
        assert_eq!(
            target_dir(root, Some(OsStr::new("/tmp/t"))),
            Path::new("/tmp/t")
        );
    }

    #[test]
    fn describes_status() {
        assert_eq!(describe(ExitStatus::from_raw(100 << 8)), "exit 100");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
