//! Clients for [`NameServer`](super::servers::NameServer)s, with their sockets created inside a
//! namespace. All calls block (use `tokio::task::spawn_blocking` from async code) and every
//! call is bounded by its timeout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::netns::Netns;
use super::servers::{MAX_LINE, canonical_addr};

/// What a client sends as one request.
pub const REQUEST: &[u8] = b"hello\n";

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The answering server's name (e.g. `backend-0`).
    pub backend: String,
    /// The client address the server saw.
    pub seen_ip: IpAddr,
    /// The client port the server saw.
    pub seen_port: u16,
    /// Where the answer came from: the TCP peer, or the UDP datagram's source (checked to be
    /// the target).
    pub from: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

impl Reply {
    /// Whether the server saw exactly this client socket (no source NAT in between).
    pub fn saw(&self, client: SocketAddr) -> bool {
        self.seen_ip == client.ip() && self.seen_port == client.port()
    }
}

/// The parsed words of an answer line `"{name} {ip} {port}"` (trailing `\r\n`/`\n` allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub backend: String,
    pub seen_ip: IpAddr,
    pub seen_port: u16,
}

/// Parses an answer line. The IP must be canonical: IPv4-mapped IPv6 is rejected, because a
/// [`NameServer`](super::servers::NameServer) never sends one.
pub fn parse_reply_line(line: &str) -> Result<ReplyLine> {
    let trimmed = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(line);
    let mut words = trimmed.split(' ');
    let (Some(backend), Some(ip), Some(port), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("answer {line:?} is not `NAME IP PORT`");
    };
    ensure!(!backend.is_empty(), "answer {line:?} has an empty name");
    let seen_ip: IpAddr = ip
        .parse()
        .with_context(|| format!("answer {line:?}: bad IP {ip:?}"))?;
    if let IpAddr::V6(v6) = seen_ip {
        ensure!(
            v6.to_ipv4_mapped().is_none(),
            "answer {line:?}: IPv4-mapped address"
        );
    }
    let seen_port: u16 = port
        .parse()
        .with_context(|| format!("answer {line:?}: bad port {port:?}"))?;
    Ok(ReplyLine {
        backend: backend.to_owned(),
        seen_ip,
        seen_port,
    })
}

/// Parses an answer line received from `from` on the socket bound to `local`.
pub fn parse_reply(line: &str, from: SocketAddr, local: SocketAddr) -> Result<Reply> {
    let ReplyLine {
        backend,
        seen_ip,
        seen_port,
    } = parse_reply_line(line)?;
    Ok(Reply {
        backend,
        seen_ip,
        seen_port,
        from,
        local,
    })
}

/// One TCP request: connect from `ns` to `target`, send `"hello\n"`, read the answer line,
/// close. `timeout` bounds connecting and, separately, the exchange.
pub fn tcp_request(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<Reply> {
    let mut session = TcpSession::connect(ns, target, timeout)?;
    session.request()
}

/// One UDP request: bind an ephemeral port in `ns`, send `"hello\n"` to `target`, wait up to
/// `timeout` for the answer and check it came from `target`.
pub fn udp_request(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<Reply> {
    let mut session = UdpSession::bind(ns, target, timeout)?;
    session.request()
}

/// Connects to `target` within `timeout`, from `local` if given (bound with `SO_REUSEADDR`);
/// a failure names the client port the attempt used (the flow to look up in a balancer's
/// tables: `lbctl explain tcp CLIENT TARGET`).
fn connect_naming_port(
    local: Option<SocketAddr>,
    target: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .context("tcp socket")?;
    if let Some(local) = local {
        socket.set_reuse_address(true)?;
        socket
            .bind(&local.into())
            .with_context(|| format!("binding {local}"))?;
    }
    match socket.connect_timeout(&target.into(), timeout) {
        Ok(()) => Ok(socket.into()),
        Err(e) => {
            let from = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map_or_else(|| "an unbound port".to_owned(), |a| a.to_string());
            Err(e).with_context(|| format!("tcp connect from {from} to {target}"))
        }
    }
}

/// A TCP connection made from a namespace, carrying any number of requests.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
    target: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
    /// Bytes received after the last answer line (normally none).
    pending: Vec<u8>,
}

impl TcpSession {
    /// Connects from `ns` to `target` within `timeout`; later requests each get `timeout` too.
    pub fn connect(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<TcpSession> {
        Self::connect_from(ns, None, target, timeout)
    }

    /// `connect`, from `local` if given (e.g. a fixed source port).
    pub fn connect_from(
        ns: &Netns,
        local: Option<SocketAddr>,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpSession> {
        ensure!(!timeout.is_zero(), "timeout must be positive");
        let stream = ns
            .run(|| connect_naming_port(local, target, timeout))?
            .with_context(|| format!("in {}", ns.name()))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(TcpSession {
            stream,
            target,
            local,
            timeout,
            pending: Vec::new(),
        })
    }

    /// Sends `"hello\n"` and reads the answer line.
    pub fn request(&mut self) -> Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream
            .write_all(REQUEST)
            .with_context(|| format!("tcp send {} -> {}", self.local, self.target))?;
        let line = self
            .read_line(deadline)
            .with_context(|| format!("tcp answer {} <- {}", self.local, self.target))?;
        parse_reply(&line, self.target, self.local)
    }

    /// The server address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The client socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Changes the timeout of later requests.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        ensure!(!timeout.is_zero(), "timeout must be positive");
        self.timeout = timeout;
        Ok(())
    }

    /// The underlying stream (e.g. to shut it down half-way in a test).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads up to and including `\n`, at most [`MAX_LINE`] bytes, before `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<String> {
        let mut chunk = [0u8; 512];
        // Each round either finds a line, fails, or adds at least one byte to `pending`, which
        // may not exceed MAX_LINE: the loop is bounded by that many rounds.
        for _ in 0..=MAX_LINE {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8(line).map_err(|e| anyhow!("answer is not UTF-8: {e}"));
            }
            ensure!(
                self.pending.len() <= MAX_LINE,
                "answer longer than {MAX_LINE} bytes"
            );
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "no answer within {:?}", self.timeout);
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!(
                    "connection closed{}",
                    if self.pending.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " after partial answer {:?}",
                            String::from_utf8_lossy(&self.pending)
                        )
                    }
                ),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => bail!("no answer within {:?}", self.timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        bail!("answer longer than {MAX_LINE} bytes")
    }
}

/// A UDP socket bound in a namespace, sending requests to one target from one port.
#[derive(Debug)]
pub struct UdpSession {
    socket: UdpSocket,
    target: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
}

impl UdpSession {
    /// Binds an ephemeral port in `ns`, on the source address the routing table picks for
    /// `target`.
    pub fn bind(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<UdpSession> {
        let wildcard = match target {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        Self::bind_to(ns, wildcard, target, timeout)
    }

    /// Binds `local` (e.g. a fixed source port) in `ns`. An unspecified IP is replaced by the
    /// source address the routing table picks for `target`.
    pub fn bind_to(
        ns: &Netns,
        local: SocketAddr,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<UdpSession> {
        ensure!(!timeout.is_zero(), "timeout must be positive");
        ensure!(
            local.is_ipv4() == target.is_ipv4(),
            "local {local} and target {target} are of different families"
        );
        let socket = ns
            .run(|| -> io::Result<UdpSocket> {
                let mut local = local;
                if local.ip().is_unspecified() {
                    // Connecting a UDP socket only asks the routing table for a source.
                    let probe = UdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
                    probe.connect(target)?;
                    local.set_ip(probe.local_addr()?.ip());
                }
                UdpSocket::bind(local)
            })?
            .with_context(|| format!("udp bind {local} for {target} in {}", ns.name()))?;
        let local = socket.local_addr()?;
        Ok(UdpSession {
            socket,
            target,
            local,
            timeout,
        })
    }

    /// Sends `"hello\n"` and waits for the answer, which must come from the target.
    pub fn request(&mut self) -> Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        self.socket.set_write_timeout(Some(self.timeout))?;
        self.socket
            .send_to(REQUEST, self.target)
            .with_context(|| format!("udp send {} -> {}", self.local, self.target))?;
        let mut buf = [0u8; 2048];
        // Bounded by the deadline; an interrupted receive is retried at most this many times.
        for _ in 0..16 {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "udp {} -> {}: no answer within {:?}",
                self.local,
                self.target,
                self.timeout
            );
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let from = canonical_addr(from);
                    ensure!(
                        from == canonical_addr(self.target),
                        "udp {} -> {}: answer came from {from} instead: {text:?}",
                        self.local,
                        self.target
                    );
                    return parse_reply(&text, from, self.local);
                }
                Err(e) if is_timeout(&e) => bail!(
                    "udp {} -> {}: no answer within {:?}",
                    self.local,
                    self.target,
                    self.timeout
                ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("udp {} <- {}", self.local, self.target));
                }
            }
        }
        bail!(
            "udp {} -> {}: receive kept being interrupted",
            self.local,
            self.target
        )
    }

    /// The server address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The client socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_answers() {
        let r = parse_reply_line("backend-0 198.18.1.2 40000\n").unwrap();
        assert_eq!(r.backend, "backend-0");
        assert_eq!(r.seen_ip, IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)));
        assert_eq!(r.seen_port, 40000);

        let r = parse_reply_line("b fd00:1::2 1\r\n").unwrap();
        assert_eq!(r.seen_ip, "fd00:1::2".parse::<IpAddr>().unwrap());
        assert_eq!(r.seen_port, 1);

        let r = parse_reply_line("b 198.18.1.2 65535").unwrap();
        assert_eq!(r.seen_port, 65535);
    }

    #[test]
    fn rejects_malformed_answers() {
        for bad in [
            "",
            "\n",
            "backend-0\n",
            "backend-0 198.18.1.2\n",
            "backend-0 198.18.1.2 1 extra\n",
            "backend-0 198.18.1.2 65536\n",
            "backend-0 198.18.1 1\n",
            "backend-0 ::ffff:198.18.1.2 1\n",
            "backend-0  198.18.1.2 1\n",
            " 198.18.1.2 1\n",
        ] {
            assert!(parse_reply_line(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parse_reply_keeps_addresses() {
        let from: SocketAddr = "198.18.2.10:8080".parse().unwrap();
        let local: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let r = parse_reply("backend-0 198.18.1.2 40000\n", from, local).unwrap();
        assert_eq!(r.from, from);
        assert_eq!(r.local, local);
        assert!(r.saw(local));
        assert!(!r.saw(from));
    }
}
