//! Errors of the service file and its `lbd:` section: each names the file, the service, the
//! field and what to write instead.

use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a service file was refused. The `Display` text is meant for operators as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io error is part of the message, not a `source`: error chains would print it twice.
    #[error("{}: cannot read the service file: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not YAML, or not shaped like a service file (unknown field, wrong kind of value). The
    /// message is the YAML reader's (serde_norway): field path, what was expected, line and column.
    #[error("{}: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    /// A value that parses but is not allowed.
    #[error("{}: {}field {field}: {message}", .path.display(), service_prefix(.service.as_deref()))]
    Invalid {
        path: PathBuf,
        service: Option<String>,
        field: String,
        message: String,
    },
}

fn service_prefix(service: Option<&str>) -> String {
    service.map_or_else(String::new, |s| format!("service {s:?}, "))
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Syntax { path, .. } | Self::Invalid { path, .. } => {
                path
            }
        }
    }

    /// The service the error is about, when it is about one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Invalid { service, .. } => service.as_deref(),
            _ => None,
        }
    }

    /// The field path (`ports[1]`, `backends[0].weight`), when the error is about a value.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A short-form value (`80:8080/tcp`, `10.0.0.1:8080`, `maglev`) that does not parse. Shared
/// by the service file and the CLI; the message quotes the value and says what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseValueError(pub(crate) String);
