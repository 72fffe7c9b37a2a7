//! Errors told on one line with their causes: a client's or library's own text ("client error
//! (Connect)", aya's "`bpf_link_create` failed") often does not say what went wrong ("No such
//! file or directory", the errno), which its causes do.

/// `error` and each of its causes the text does not already hold, joined by ": ".
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    // Bounded: error chains are short, and a cycle must not hang the log.
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_is_told_with_its_causes_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io_text = io.to_string();
        let text = with_causes(&Outer(io));
        assert_eq!(text, format!("client error (Connect): {io_text}"));
        // A cause the text already holds is not repeated.
        let io = std::io::Error::other("refused");
        assert_eq!(with_causes(&io), "refused");
    }

    /// Whether `error`'s text holds the text of a cause it also gives as `source()`: then
    /// `{:#}` (anyhow, as lbd prints) tells that cause twice.
    fn repeats_a_cause(error: &dyn std::error::Error) -> bool {
        let text = error.to_string();
        let mut cause = error.source();
        for _ in 0..8 {
            let Some(c) = cause else { return false };
            if text.contains(&c.to_string()) {
                return true;
            }
            cause = c.source();
        }
        false
    }

    /// The errors whose text tells their cause (mid-sentence, or followed by advice) do not
    /// also give it as their source.
    #[test]
    fn no_error_tells_its_cause_twice() {
        use std::path::PathBuf;

        use crate::{
            announce::{AnnounceError, record::RecordError},
            cleanup::CleanupError,
            control::event_loop::RunError,
            source::swarm::{follow::ReadError, snapshot::SnapshotError},
        };
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let path = || PathBuf::from("/x");
        let unreachable = || AnnounceError::Unreachable {
            socket: path(),
            error: io(),
        };
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(RunError::Io {
                what: "metrics on 127.0.0.1:1".into(),
                error: io(),
            }),
            Box::new(AnnounceError::Write {
                path: path(),
                error: io(),
            }),
            Box::new(unreachable()),
            Box::new(RecordError::Io {
                path: path(),
                action: "read",
                error: io(),
            }),
            Box::new(RecordError::Unreadable {
                path: path(),
                error: serde_json::from_str::<u8>("x").unwrap_err(),
            }),
            Box::new(CleanupError::Record(RecordError::Io {
                path: path(),
                action: "read",
                error: io(),
            })),
            Box::new(CleanupError::Withdraw {
                include: path(),
                recorded_in: None,
                error: unreachable(),
            }),
            Box::new(ReadError::Shape(SnapshotError {
                what: "a node".into(),
                message: "no ID".into(),
            })),
        ];
        for error in errors {
            assert!(!repeats_a_cause(&*error), "told twice: {error:?}");
        }
    }
}
