//! A stand-in for BIRD's control socket, for tests of what lbd tells BIRD (no BIRD needed):
//! it greets as BIRD 2 does, reads one command per connection, answers a fixed reply, and
//! reports the commands it got.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::Path,
    sync::mpsc,
};

/// Listens on `socket` for `connections` connections, answering each command with `reply`
/// (BIRD's reply lines, e.g. "0003 Reconfigured\n"); the commands, in order.
pub fn fake_bird(socket: &Path, reply: &'static str, connections: usize) -> mpsc::Receiver<String> {
    let listener = UnixListener::bind(socket).expect("bind the fake BIRD socket");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { return };
            if stream.write_all(b"0001 BIRD 2.0.12 ready.\n").is_err() {
                return;
            }
            let mut line = String::new();
            let Ok(reader) = stream.try_clone() else {
                return;
            };
            if BufReader::new(reader).read_line(&mut line).is_err() {
                return;
            }
            let _ = tx.send(line.trim_end().to_owned());
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    rx
}
