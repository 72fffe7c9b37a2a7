//! lbctl's side of the admin API: one HTTP/1.1 request per call, over the Unix socket or
//! over TCP with a bearer token.

use std::path::PathBuf;

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;

use super::ErrorBody;

/// Where the API is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port` and the token to send.
    Tcp {
        address: String,
        token: String,
    },
}

/// The TCP API's `HOST:PORT` from what a user gives `--api-url`: `HOST:PORT`, or an
/// `http://HOST:PORT` URL (a trailing `/` allowed). Anything else is refused, saying what is
/// accepted: the API is plain HTTP on one address, with no TLS and no path prefix.
pub fn tcp_api_address(text: &str) -> Result<String, String> {
    let accepted = "write HOST:PORT or http://HOST:PORT, e.g. 10.0.0.5:9465";
    let rest = match text.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{text:?}: the admin API speaks plain HTTP, not {scheme}:// (put a TLS proxy in \
                 front of it if you need one); {accepted}"
            ));
        }
        None => text,
    };
    let address = rest.strip_suffix('/').unwrap_or(rest);
    if address.contains('/') || address.contains('?') {
        return Err(format!(
            "{text:?}: the admin API has no path prefix; {accepted}"
        ));
    }
    let port = address
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port != 0);
    if port.is_none() {
        return Err(format!("{text:?}: no HOST:PORT; {accepted}"));
    }
    Ok(address.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lbd at {endpoint}: {error} ({hint})")]
    Connect {
        endpoint: String,
        error: String,
        hint: &'static str,
    },
    #[error("talking to lbd: {0}")]
    Http(String),
    /// lbd answered with an error; the message is its own.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error(
        "lbd's answer is not what this lbctl understands ({0}); are lbd and lbctl the same version?"
    )]
    Decode(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp { address, .. } => write!(f, "http://{address}"),
        }
    }
}

impl Endpoint {
    /// What to look at when connecting failed with `kind`.
    fn connect_hint(&self, kind: std::io::ErrorKind) -> &'static str {
        use std::io::ErrorKind;
        match (self, kind) {
            (Self::Unix(_), ErrorKind::PermissionDenied) => {
                "the socket is root's alone (mode 0600): run lbctl as root, or use lbd's TCP API \
                 with --api-url and --api-token-file"
            }
            (Self::Unix(_), ErrorKind::ConnectionRefused) => {
                "nothing listens on that socket: is lbd running? (a socket left by an lbd that \
                 stopped refuses connections)"
            }
            (Self::Unix(_), _) => "is lbd running? is --api right?",
            (Self::Tcp { .. }, _) => "is lbd running with --api-listen on that address?",
        }
    }

    /// Sends one request and returns the body of a 2xx answer.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let connect = |error: std::io::Error| ClientError::Connect {
            endpoint: self.to_string(),
            hint: self.connect_hint(error.kind()),
            error: error.to_string(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, "lbd");
        if let Some(body) = &body {
            if body.len() > super::MAX_BODY_BYTES {
                return Err(ClientError::Api {
                    status: 413,
                    message: super::body_too_large(Some(body.len())),
                });
            }
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let (response, _conn) = match self {
            Self::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                roundtrip(stream, request, body).await?
            }
            Self::Tcp { address, token } => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(connect)?;
                let request =
                    request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                roundtrip(stream, request, body).await?
            }
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        if status == hyper::StatusCode::UNAUTHORIZED && matches!(self, Self::Tcp { .. }) {
            return Err(ClientError::Api {
                status: status.as_u16(),
                message: "lbd refused the token from --api-token-file: it is not the one in \
                          the file lbd's own --api-token-file names"
                    .into(),
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// A request whose answer is JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path_and_query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

type Answer = (hyper::Response<hyper::body::Incoming>, ());

async fn roundtrip<S>(
    stream: S,
    request: hyper::http::request::Builder,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| ClientError::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(connection);
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(http)?;
    // The body is read by the caller while the connection task keeps running.
    drop(driver);
    Ok((response, ()))
}

#[cfg(test)]
mod tests {
    use super::tcp_api_address;

    #[test]
    fn api_urls_and_addresses() {
        for (given, address) in [
            ("10.0.0.5:9465", "10.0.0.5:9465"),
            ("http://10.0.0.5:9465", "10.0.0.5:9465"),
            ("http://10.0.0.5:9465/", "10.0.0.5:9465"),
            ("lb1.example:9465", "lb1.example:9465"),
            ("[fd00::5]:9465", "[fd00::5]:9465"),
        ] {
            assert_eq!(tcp_api_address(given).as_deref(), Ok(address), "{given}");
        }
        for (given, says) in [
            ("https://10.0.0.5:9465", "plain HTTP"),
            ("http://10.0.0.5:9465/v1", "no path prefix"),
            ("10.0.0.5", "no HOST:PORT"),
            ("10.0.0.5:http", "no HOST:PORT"),
            (":9465", "no HOST:PORT"),
        ] {
            let e = tcp_api_address(given).unwrap_err();
            assert!(e.contains(says) && e.contains("HOST:PORT"), "{given}: {e}");
        }
    }
}
