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
}
