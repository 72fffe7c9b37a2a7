//! Bulk transfers: a client sends pseudo-random bytes to an echo server (an [`EchoServer`],
//! or the swarm lab image's on [`crate::swarm::ECHO_PORT`]) while reading them back, and
//! checks every byte, so a path that loses large packets (an MTU black hole) shows as a
//! transfer that stalls.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Netns, rng::SplitMix64};

/// An echo connection silent this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(60);

/// A TCP echo server in a namespace (IPv4 and IPv6, any address): every byte back until the
/// client shuts its side down, then it shuts down its own. Stops when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, port: u16) -> Result<EchoServer> {
        let listener = ns
            .run(|| TcpListener::bind(("::", port)))?
            .with_context(|| format!("echo server on port {port} in {}", ns.name()))?;
        // Polled, so that dropping the server ends the thread.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || echo_until_shutdown(stream));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(EchoServer {
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Echoes until the peer shuts its side down (or is silent for `ECHO_IDLE`).
fn echo_until_shutdown(mut stream: TcpStream) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(ECHO_IDLE)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65536];
    // Each round reads at least one byte or ends; the idle timeout bounds a silent peer.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// A finished echo transfer.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes each way.
    pub bytes: usize,
    /// From connecting until the last byte came back.
    pub elapsed: Duration,
    /// The largest TCP segment the client's socket was allowed to send (`TCP_MAXSEG`
    /// after the handshake): the MSS the path's SYNs settled on.
    pub client_mss: u32,
}

/// Sends `bytes` pseudo-random bytes (seeded by `seed`) from `ns` to the echo server at
/// `target` while reading them back, all within `limit`; checks that exactly the same bytes
/// came back. A stalled transfer fails with how far each direction got.
pub fn echo_transfer(
    ns: &Netns,
    target: SocketAddr,
    bytes: usize,
    seed: u64,
    limit: Duration,
) -> Result<Transfer> {
    let mut rng = SplitMix64(seed);
    let data: Vec<u8> = (0..bytes.div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .take(bytes)
        .collect();
    let start = Instant::now();
    let deadline = start + limit;
    let stream = ns
        .run(|| TcpStream::connect_timeout(&target, limit))?
        .with_context(|| format!("connecting from {} to {target}", ns.name()))?;
    let client_mss = tcp_maxseg(&stream)?;
    let writer = stream.try_clone()?;
    let received = std::thread::scope(|scope| -> Result<Vec<u8>> {
        let sender = scope.spawn(|| send_all(writer, &data, deadline));
        let received = receive_until_eof(&stream, bytes, deadline);
        let sent = sender.join().expect("sender thread");
        match (sent, received) {
            (Ok(()), Ok(received)) => Ok(received),
            (sent, received) => {
                let _ = stream.shutdown(Shutdown::Both);
                bail!(
                    "{bytes} bytes to {target} and back within {limit:?} (client MSS {client_mss}): \
                     send: {}; receive: {}",
                    sent.map_or_else(|e| format!("{e:#}"), |()| "all sent".to_owned()),
                    received.map_or_else(|e| format!("{e:#}"), |r| format!("{} back", r.len()))
                )
            }
        }
    })?;
    let elapsed = start.elapsed();
    if received != data {
        let at = received
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(received.len().min(data.len()));
        bail!(
            "{target} echoed {} bytes of {bytes}, first difference at byte {at}",
            received.len()
        );
    }
    Ok(Transfer {
        bytes,
        elapsed,
        client_mss,
    })
}

/// Writes all of `data`, then shuts the sending side down.
fn send_all(mut stream: TcpStream, data: &[u8], deadline: Instant) -> Result<()> {
    let mut sent = 0;
    // Each round writes at least one byte or fails: bounded by the data's length.
    while sent < data.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{sent} bytes sent when the time was up");
        }
        stream.set_write_timeout(Some(left))?;
        let end = (sent + 65536).min(data.len());
        match stream.write(&data[sent..end]) {
            Ok(0) => bail!("{sent} bytes sent, then the connection took no more"),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("{sent} bytes sent")),
        }
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Reads until the peer closes (at most `want` bytes and one more, to see an excess).
fn receive_until_eof(mut stream: &TcpStream, want: usize, deadline: Instant) -> Result<Vec<u8>> {
    let mut received = Vec::with_capacity(want);
    let mut buf = vec![0u8; 65536];
    // Each round reads at least one byte, ends, or fails: bounded by `want` + 1 rounds.
    for _ in 0..=want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{} bytes back when the time was up", received.len());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if received.len() > want {
                    bail!("more than the {want} bytes sent came back");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{} bytes back when the time was up", received.len())
            }
            Err(e) => return Err(e).with_context(|| format!("{} bytes back", received.len())),
        }
    }
    bail!("more than the {want} bytes sent came back")
}

/// Asks the swarm image's UDP echo at `target` (on [`crate::swarm::ECHO_PORT`]) from `ns` for
/// `count` datagrams of `size` bytes, which it sends by one `UDP_SEGMENT` send: one aggregate
/// on its node. How many of them arrived intact within `limit` (the k-th is `size` bytes of
/// value k); a datagram of another size or content, or one twice, is an error.
pub fn segmented_echo(
    ns: &Netns,
    target: SocketAddr,
    size: u16,
    count: u8,
    limit: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + limit;
    let socket = ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))?
        .with_context(|| format!("a UDP socket in {}", ns.name()))?;
    socket.connect(target)?;
    socket.send(format!("{size} {count}").as_bytes())?;
    let mut seen = vec![false; usize::from(count)];
    let mut buf = vec![0u8; usize::from(size) + 1];
    // Each round receives a datagram (a new one, or the call fails), is interrupted (a few
    // times at most), or ends at the deadline.
    for _ in 0..usize::from(count) + 16 {
        if seen.iter().all(|&s| s) {
            break;
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            break;
        };
        socket.set_read_timeout(Some(left))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(e).with_context(|| format!("receiving from {target}")),
        };
        let datagram = &buf[..n];
        let k = datagram.first().copied().unwrap_or(u8::MAX);
        if n != usize::from(size) || datagram.iter().any(|&b| b != k) || k >= count {
            bail!(
                "from {target}: a datagram of {n} bytes starting {:?}, not {size} bytes of one \
                 index below {count}",
                &datagram[..n.min(16)]
            );
        }
        if std::mem::replace(&mut seen[usize::from(k)], true) {
            bail!("from {target}: datagram {k} twice");
        }
    }
    Ok(seen.iter().filter(|&&s| s).count())
}

/// The socket's `TCP_MAXSEG`.
fn tcp_maxseg(stream: &TcpStream) -> Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket with a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt TCP_MAXSEG");
    }
    Ok(value as u32)
}
