//! One health check: a TCP connection, or an HTTP/1.0 `GET` whose status line is compared
//! with the expected one. Only the status line is read, so a large or slow body costs
//! nothing; the connection is closed as soon as the answer is known.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::source::file::{Probe, format_interval};

/// Longest status line read: a real one is under 100 bytes.
const MAX_STATUS_LINE: usize = 512;

/// Runs `probe` against `addr` within `timeout`: how long it took, or why it failed.
pub async fn check(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, run(addr, probe)).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {}", format_interval(timeout))),
    }
}

async fn run(addr: SocketAddr, probe: &Probe) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let Probe::Http { path, expect } = probe else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: meshlb-health-check\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let line = status_line(&mut stream).await?;
    match parse_status(&line) {
        Some(status) if status == *expect => Ok(()),
        Some(status) => Err(format!("GET {path} answered {status}, expected {expect}")),
        None => Err(format!(
            "GET {path}: not an HTTP status line: {}",
            crate::source::file::quoted_short(&line)
        )),
    }
}

/// Reads up to the first line end (or `MAX_STATUS_LINE` bytes). A close before the line end
/// fails the check: a backend that dies while writing `HTTP/1.1 200` has not answered 200.
async fn status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 128];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            if buf.is_empty() {
                return Err("the connection closed without an answer".into());
            }
            return Err(format!(
                "the connection closed inside the status line: {}",
                crate::source::file::quoted_short(&String::from_utf8_lossy(&buf))
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).trim_end().to_owned())
}

/// The status of `HTTP/1.x NNN reason`.
pub fn parse_status(line: &str) -> Option<u16> {
    let mut words = line.split_ascii_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status = words.next()?;
    (status.len() == 3)
        .then(|| status.parse().ok())
        .flatten()
        .filter(|s| (100..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503"), Some(503));
        for line in [
            "",
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc",
            "HTTP/1.1 099 x",
        ] {
            assert_eq!(parse_status(line), None, "{line:?}");
        }
    }

    /// A loopback server answering each connection with `answer` (nothing for `None`, and
    /// the connection held open), for `connections` connections.
    fn server(answer: Option<&'static str>, connections: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        });
        addr
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn checks_pass_and_fail_for_what_the_backend_does() {
        let http = |expect| Probe::Http {
            path: "/healthz".into(),
            expect,
        };
        let second = Duration::from_secs(1);
        let ok = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 2);
        assert!(run(check(ok, &Probe::Tcp, second)).is_ok());
        assert!(run(check(ok, &http(200), second)).is_ok());
        let e = run(check(
            server(Some("HTTP/1.0 500 Oops\r\n\r\n"), 1),
            &http(200),
            second,
        ))
        .unwrap_err();
        assert_eq!(e, "GET /healthz answered 500, expected 200");
        let e = run(check(server(Some("HTTP/1.1 200"), 1), &http(200), second)).unwrap_err();
        assert_eq!(
            e,
            "the connection closed inside the status line: \"HTTP/1.1 200\""
        );
        let e = run(check(server(Some("hello\n"), 1), &http(200), second)).unwrap_err();
        assert!(e.contains("not an HTTP status line: \"hello\""), "{e}");
        let e = run(check(
            server(None, 1),
            &http(200),
            Duration::from_millis(100),
        ))
        .unwrap_err();
        assert_eq!(e, "no answer within 100ms");
        // Nothing listens on a port just freed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = run(check(closed, &Probe::Tcp, second)).unwrap_err();
        assert!(e.starts_with("connecting: "), "{e}");
    }
}
