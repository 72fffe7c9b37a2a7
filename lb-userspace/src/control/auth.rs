//! The TCP API's bearer token: read from its file (again at SIGHUP), and asked of every
//! request.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::{self, Next},
    response::IntoResponse as _,
};
use tracing::{info, warn};

use super::{
    server::{ApiError, record, router},
    shared::Shared,
};

/// The token the TCP API asks for, and the file it comes from: a SIGHUP reads the file again,
/// so a token is rotated without a restart.
#[derive(Clone, Debug)]
pub struct Token {
    path: PathBuf,
    current: Arc<RwLock<Arc<str>>>,
}

impl Token {
    /// Reads the token file; an error names the file and what is wrong with it.
    pub fn read(path: &Path) -> Result<Token, String> {
        Ok(Token {
            path: path.to_owned(),
            current: Arc::new(RwLock::new(read_token(path)?)),
        })
    }

    /// The token requests must carry now.
    fn current(&self) -> Arc<str> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the file again. A token that cannot be read (or is not a token) changes nothing:
    /// the API keeps the one it had, and the log says why.
    pub fn reread(&self) {
        match read_token(&self.path) {
            Ok(token) if token != self.current() => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = token;
                info!(file = %self.path.display(), "the TCP API's token changed: requests need the new one");
            }
            Ok(_) => {}
            Err(e) => warn!("{e}; the TCP API keeps the token it had"),
        }
    }
}

/// The routes behind a bearer token, for the TCP listener.
pub fn router_with_token(shared: Arc<Shared>, token: Token) -> Router {
    let counted = shared.clone();
    Router::new()
        .merge(router(shared))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.current();
            let counted = counted.clone();
            async move {
                if authorized(&req, &token) {
                    return next.run(req).await;
                }
                record(&counted, StatusCode::UNAUTHORIZED);
                let mut response = ApiError(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token (send `Authorization: Bearer <token>`)".into(),
                )
                .into_response();
                let headers = response.headers_mut();
                headers.insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
                // A caller without the token keeps none of the API's few connections.
                headers.insert(header::CONNECTION, "close".parse().expect("valid"));
                response
            }
        }))
}

fn authorized(req: &Request, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110): `bearer` is `Bearer`.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim_start())
    else {
        return false;
    };
    // Constant time in the token's content: no early exit on the first wrong byte.
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a bearer token file: one line, at least 16 characters.
fn read_token(path: &Path) -> Result<Arc<str>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the API token: {e}", path.display()))?;
    let token = text.trim();
    if !crate::api::is_token(token) {
        return Err(format!(
            "{}: the API token must be {}",
            path.display(),
            crate::api::TOKEN_RULE
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            warn!(
                "{}: the API token file is writable by anyone: anyone on this host can change the token the TCP API takes; chmod 600 it",
                path.display()
            );
        } else if mode & 0o077 != 0 {
            warn!(
                "{}: the API token file is readable by group or others; chmod 600 it",
                path.display()
            );
        }
    }
    Ok(Arc::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let token = "0123456789abcdef";
        let with = |value: &str| {
            let req = Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap();
            authorized(&req, token)
        };
        assert!(with("Bearer 0123456789abcdef"));
        assert!(with("bearer 0123456789abcdef"));
        assert!(!with("Bearer 0123456789abcdeF"));
        assert!(!with("Basic 0123456789abcdef"));
        assert!(!with("Bearer"));
    }

    #[test]
    fn a_reread_takes_a_new_token_and_keeps_the_old_one_when_the_file_is_bad() {
        let path = lb_testkit::ScratchPath::temp("token-unit", "");
        std::fs::write(&*path, "first-token-0123456789\n").unwrap();
        let token = Token::read(&path).unwrap();
        assert_eq!(&*token.current(), "first-token-0123456789");
        std::fs::write(&*path, "second-token-0123456789\n").unwrap();
        token.reread();
        assert_eq!(&*token.current(), "second-token-0123456789");
        std::fs::write(&*path, "short\n").unwrap();
        token.reread();
        assert_eq!(&*token.current(), "second-token-0123456789");
        std::fs::remove_file(&*path).unwrap();
        token.reread();
        assert_eq!(&*token.current(), "second-token-0123456789");
    }
}
