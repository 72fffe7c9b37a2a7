//! Short external commands with a time bound: a program that hangs (an `lbd` API that never
//! answers, a stuck `dockerd` behind the docker CLI) fails the test instead of hanging it.

use std::{
    ffi::CStr,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Longest pause between two looks at a running command.
const MAX_POLL: Duration = Duration::from_millis(20);

/// Runs `cmd` to completion, fed `stdin` (or nothing), in a process group of its own; when it
/// runs longer than `timeout`, kills the group and fails with what it printed so far. Its
/// output, whatever its exit status.
pub fn output_within(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let description = describe(&cmd);
    // Anonymous files, not pipes: nothing to drain while waiting, nothing left on disk.
    let (stdout, stderr) = (memfd(c"mlb-stdout")?, memfd(c"mlb-stderr")?);
    let input = match stdin {
        Some(bytes) => {
            let mut file = memfd(c"mlb-stdin")?;
            file.write_all(bytes).context("writing a command's input")?;
            file.seek(SeekFrom::Start(0))?;
            Stdio::from(file)
        }
        None => Stdio::null(),
    };
    cmd.stdin(input)
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {description}"))?;
    let group = child.id() as i32;
    super::interrupt::track_group(group);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    // Bounded in count too: every pause is at least a millisecond.
    let max_polls = timeout.as_millis() + 2;
    let mut status = None;
    for _ in 0..max_polls {
        status = child.try_wait().context("waitpid")?;
        if status.is_some() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL);
    }
    let timed_out = status.is_none();
    if timed_out {
        // SAFETY: kill(2) on the group of our own child, which is not reaped yet (so the
        // group id cannot have been reused).
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    let status = match status {
        Some(status) => status,
        None => child.wait().context("waitpid")?,
    };
    super::interrupt::untrack_group(group);
    let (stdout, stderr) = (read_all(stdout)?, read_all(stderr)?);
    if timed_out {
        bail!(
            "{description} did not finish within {timeout:?} (killed); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The command line, for messages: `` `program arg…` ``.
pub(crate) fn describe(cmd: &Command) -> String {
    let words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    format!("`{}`", words.join(" "))
}

fn memfd(name: &CStr) -> Result<File> {
    // SAFETY: memfd_create with a valid C string; the descriptor it returns is ours alone.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn read_all(mut file: File) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)
        .context("reading a command's output")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_come_back_whatever_the_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = output_within(cmd, Some(b"in\n"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"in\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_command_that_hangs_is_killed_and_fails_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; sleep 30"]);
        let started = Instant::now();
        let err = output_within(cmd, None, Duration::from_millis(300)).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("did not finish within 300ms") && text.contains("started"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "not bounded");
    }
}
