//! A stand-in for BIRD's control socket, for tests of what lbd tells BIRD (no BIRD needed):
//! it greets as BIRD 2 does, reads one command per connection, answers a fixed reply, and
//! reports the commands it got. Bounded: it accepts for [`ACCEPT_WINDOW`] at most, and a
//! test waits [`COMMAND_WAIT`] at most for each command.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// How long the fake accepts connections; then its thread ends (and closes the socket).
pub const ACCEPT_WINDOW: Duration = Duration::from_secs(30);
/// How long [`FakeBird::next_command`] waits for a command the test expects.
pub const COMMAND_WAIT: Duration = Duration::from_secs(5);
/// How often the fake looks for a new connection.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// The commands a fake BIRD got, in order.
pub struct FakeBird {
    commands: mpsc::Receiver<String>,
}

impl FakeBird {
    /// The next command it got, waiting [`COMMAND_WAIT`] at most.
    pub fn next_command(&self) -> Result<String> {
        match self.commands.recv_timeout(COMMAND_WAIT) {
            Ok(command) => Ok(command),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the fake BIRD got no command within {COMMAND_WAIT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the fake BIRD got no command and stopped listening")
            }
        }
    }

    /// A command it got already, without waiting (`None`: BIRD was not asked).
    pub fn command_so_far(&self) -> Option<String> {
        self.commands.try_recv().ok()
    }
}

/// Listens on `socket` for `connections` connections, answering each command with `reply`
/// (BIRD's reply lines, e.g. "0003 Reconfigured\n").
pub fn fake_bird(socket: &Path, reply: &'static str, connections: usize) -> FakeBird {
    fake_bird_for(socket, reply, connections, ACCEPT_WINDOW)
}

fn fake_bird_for(
    socket: &Path,
    reply: &'static str,
    connections: usize,
    window: Duration,
) -> FakeBird {
    let listener = UnixListener::bind(socket).expect("bind the fake BIRD socket");
    // Non-blocking accepts, so the thread ends when the window closes even if nobody came.
    listener
        .set_nonblocking(true)
        .expect("a non-blocking fake BIRD socket");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + window;
        let max_polls = window.as_millis() / ACCEPT_POLL.as_millis() + 2;
        let mut served = 0;
        for _ in 0..max_polls {
            if served == connections || Instant::now() >= deadline {
                return;
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    match answer(stream, reply) {
                        Some(command) => {
                            let _ = tx.send(command);
                        }
                        None => return,
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
                Err(_) => return,
            }
        }
    });
    FakeBird { commands: rx }
}

/// Greets, reads one command line and answers `reply`; the command (`None` on trouble).
fn answer(mut stream: UnixStream, reply: &str) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(COMMAND_WAIT)).ok()?;
    stream.set_write_timeout(Some(COMMAND_WAIT)).ok()?;
    stream.write_all(b"0001 BIRD 2.0.12 ready.\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().ok()?)
        .read_line(&mut line)
        .ok()?;
    stream.write_all(reply.as_bytes()).ok()?;
    Some(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::ScratchPath;

    #[test]
    fn a_command_is_greeted_answered_and_reported() {
        let socket = ScratchPath::temp("fake-bird", ".ctl");
        let bird = fake_bird(&socket, "0003 Reconfigured\n", 1);
        let mut stream = UnixStream::connect(&*socket).unwrap();
        stream.write_all(b"configure\n").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut text = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_to_string(&mut text).unwrap();
        assert_eq!(text, "0001 BIRD 2.0.12 ready.\n0003 Reconfigured\n");
        assert_eq!(bird.next_command().unwrap(), "configure");
        assert_eq!(bird.command_so_far(), None);
    }

    #[test]
    fn nobody_connecting_fails_the_wait_and_ends_the_fake() {
        let socket = ScratchPath::temp("fake-bird", ".ctl");
        let started = Instant::now();
        let bird = fake_bird_for(
            &socket,
            "0003 Reconfigured\n",
            1,
            Duration::from_millis(100),
        );
        // The window closes long before the wait would time out: the thread ended.
        let err = bird.next_command().unwrap_err();
        assert!(err.to_string().contains("stopped listening"), "{err:#}");
        assert!(started.elapsed() < COMMAND_WAIT, "{:?}", started.elapsed());
    }
}
