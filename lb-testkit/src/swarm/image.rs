//! The lab's image, made without a registry: a busybox-static root with httpd (whose CGI
//! `/cgi-bin/who` answers "<hostname> <client address>") and the name server of
//! `who_server.rs` (TCP and UDP), turned into a tar for `docker import`.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use super::{ECHO_PORT, HTTP_PORT, WHO_PORT};

/// The name server's source, compiled when a lab starts.
const WHO_SERVER_SOURCE: &str = include_str!("who_server.rs");

/// `docker import -c` change: what a task runs (the name server and echo server in the
/// background, httpd as the container's main process).
pub(super) fn command_change() -> String {
    format!(
        r#"CMD ["/bin/sh","-c","/bin/who-server {WHO_PORT} {ECHO_PORT} & exec /bin/httpd -f -p {HTTP_PORT} -h /www"]"#
    )
}

/// The image's root as a tar file: busybox, the CGI and the name server.
pub(super) fn image_tar() -> Result<TempPath> {
    let root = TempPath::dir("mlbsw-image")?;
    let r = root.path();
    for dir in ["bin", "www/cgi-bin", "tmp", "etc"] {
        std::fs::create_dir_all(r.join(dir))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no busybox (cargo xtask setup installs busybox-static)")?;
    std::fs::copy(busybox, r.join("bin/busybox"))?;
    for applet in [
        "sh", "httpd", "hostname", "echo", "cat", "nc", "sleep", "ip", "timeout", "printf",
    ] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet))?;
    }
    let cgi = r.join("www/cgi-bin/who");
    std::fs::write(
        &cgi,
        "#!/bin/sh\necho \"Content-Type: text/plain\"\necho\necho \"$(hostname) $REMOTE_ADDR\"\n",
    )?;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755))?;
    compile_who_server(&r.join("bin/who-server"))?;
    tar_of(r)
}

/// `root` as a tar file, for `docker import`.
pub(super) fn tar_of(root: &Path) -> Result<TempPath> {
    let tar = TempPath::file("mlbsw-image", ".tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tar.path())
        .arg(".")
        .status()
        .context("running tar")?;
    ensure!(status.success(), "tar of the image root failed: {status}");
    Ok(tar)
}

/// Copies `binary` into `root` at `dir` (e.g. `usr/local/bin`), with the shared libraries it
/// loads (as `ldd` lists them) at their own paths: an image root for a dynamically linked
/// program, without a distribution's.
pub fn copy_with_libraries(binary: &Path, root: &Path, dir: &str) -> Result<()> {
    let name = binary.file_name().context("a binary's name")?;
    std::fs::create_dir_all(root.join(dir))?;
    std::fs::copy(binary, root.join(dir).join(name))
        .with_context(|| format!("copying {}", binary.display()))?;
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(
        ldd.status.success(),
        "ldd {}: {}",
        binary.display(),
        ldd.status
    );
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().context("a library's directory")?)?;
        std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
    }
    Ok(())
}

/// Builds the name server as a static executable (the image has no C library) at `out`.
fn compile_who_server(out: &Path) -> Result<()> {
    let src = TempPath::file("mlbsw-who-server", ".rs");
    std::fs::write(src.path(), WHO_SERVER_SOURCE)?;
    // Cargo sets RUSTC for build scripts only; tests find rustc on PATH (rustup's proxy).
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=1",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "-o",
        ])
        .arg(out)
        .arg(src.path())
        .output()
        .with_context(|| format!("running {rustc:?} for the lab's name server"))?;
    ensure!(
        output.status.success(),
        "compiling the lab's name server failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A temporary file or directory, removed on drop (the kit has no tempfile dependency).
pub(super) struct TempPath(PathBuf);

impl TempPath {
    fn unique(prefix: &str, suffix: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "{prefix}-{}{suffix}",
            crate::netns::unique_suffix()
        ))
    }

    pub(super) fn dir(prefix: &str) -> std::io::Result<TempPath> {
        let path = Self::unique(prefix, "");
        std::fs::create_dir_all(&path)?;
        Ok(TempPath(path))
    }

    /// A path for a file not created yet.
    pub(super) fn file(prefix: &str, suffix: &str) -> TempPath {
        TempPath(Self::unique(prefix, suffix))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
