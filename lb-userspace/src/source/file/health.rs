//! A service's `health:` section: how its backends are checked, and what a service whose
//! backends are all down does.
//!
//! ```yaml
//! health:
//!   http: { path: /healthz, expect: 200 }   # or tcp: {}
//!   port: 9000          # default: the backend's own port (or the first mapping's)
//!   interval: 2s        # 100ms-1h
//!   timeout: 1s         # at most the interval
//!   rise: 2             # successes in a row that bring a down backend up
//!   fall: 3             # failures in a row that take an up backend down
//!   when_all_down: drop # or keep: send to all of them anyway
//! ```

use std::{fmt, time::Duration};

use serde::Deserialize;

use super::{
    value::{Ctx, Scalar},
    *,
};

/// Shortest interval between two checks of one backend.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval between two checks of one backend.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3_600);
/// Shortest check timeout.
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
/// Most consecutive results `rise` or `fall` may ask for.
pub const MAX_HEALTH_STREAK: u32 = 100;
/// Longest HTTP check path.
pub const MAX_HEALTH_PATH_LEN: usize = 1_024;

/// How a service's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    pub probe: Probe,
    /// The port checked; `None`: the backend's own port, or the first mapping's backend port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    pub when_all_down: WhenAllDown,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            probe: Probe::Tcp,
            port: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            when_all_down: WhenAllDown::Drop,
        }
    }
}

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection is accepted within the timeout.
    Tcp,
    /// `GET path` over HTTP/1.0 answers with status `expect` within the timeout.
    Http { path: String, expect: u16 },
}

/// A service whose backends are all down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhenAllDown {
    /// It has no backend: its packets are dropped and counted (and its VIP withdrawn).
    #[default]
    Drop,
    /// Every backend serves as if up: a check that is wrong everywhere (a moved health
    /// endpoint) must not take the whole service away.
    Keep,
}

keywords!(WhenAllDown, "when_all_down value", { Drop => "drop", Keep => "keep" });

impl HealthSpec {
    /// The address `backend` is checked at, for a service whose first mapping is `first`.
    pub fn target(&self, backend: &BackendSpec, first: &PortMapping) -> std::net::SocketAddr {
        let port = self
            .port
            .or(backend.port)
            .unwrap_or_else(|| backend.target_port(first));
        std::net::SocketAddr::new(backend.address, port)
    }

    /// In the file's format, every default written out.
    pub fn to_value(&self) -> serde_json::Value {
        let probe = match &self.probe {
            Probe::Tcp => ("tcp", serde_json::json!({})),
            Probe::Http { path, expect } => (
                "http",
                serde_json::json!({ "path": path, "expect": expect }),
            ),
        };
        let mut value = serde_json::json!({
            probe.0: probe.1,
            "interval": format_interval(self.interval),
            "timeout": format_interval(self.timeout),
            "rise": self.rise,
            "fall": self.fall,
            "when_all_down": self.when_all_down.as_str(),
        });
        if let Some(port) = self.port {
            value["port"] = port.into();
        }
        value
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Http { path, expect } => write!(f, "http GET {path} expecting {expect}"),
        }
    }
}

/// `500ms`, `2s`, `1m` or `1h`; whole milliseconds when under a second.
pub fn format_interval(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as serde reads it, and its checks

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    tcp: Option<RawTcpProbe>,
    http: Option<RawHttpProbe>,
    port: Option<Scalar>,
    interval: Option<Scalar>,
    timeout: Option<Scalar>,
    rise: Option<Scalar>,
    fall: Option<Scalar>,
    when_all_down: Option<Scalar>,
}

/// `tcp: {}`: nothing to set yet, but a mapping so it reads like `http:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpProbe {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpProbe {
    path: Option<Scalar>,
    expect: Option<Scalar>,
}

pub(super) fn health_from_raw(raw: RawHealth, cx: &Ctx<'_>) -> Result<HealthSpec, ConfigError> {
    let defaults = HealthSpec::default();
    let probe = match (raw.tcp, raw.http) {
        (Some(_), Some(_)) => {
            return Err(cx.invalid(
                "health",
                "both tcp and http are given; a service has one kind of check, so keep one",
            ));
        }
        (None, None) => {
            return Err(cx.invalid(
                "health",
                "no kind of check; write `tcp: {}` (a connection is accepted) or `http: { path: \
                 /healthz, expect: 200 }`",
            ));
        }
        (Some(RawTcpProbe {}), None) => Probe::Tcp,
        (None, Some(http)) => http_probe(http, cx)?,
    };
    let port = raw
        .port
        .map(|Scalar(p)| {
            cx.number("health.port", &p, 1..=65_535, "ports are 1-65535")
                .map(|p| p as u16)
        })
        .transpose()?;
    let interval = match raw.interval {
        None => defaults.interval,
        Some(Scalar(text)) => parse_interval(&text, MIN_HEALTH_INTERVAL, MAX_HEALTH_INTERVAL)
            .map_err(|m| cx.invalid("health.interval", m))?,
    };
    let timeout = match raw.timeout {
        None => defaults.timeout.min(interval),
        Some(Scalar(text)) => parse_interval(&text, MIN_HEALTH_TIMEOUT, MAX_HEALTH_INTERVAL)
            .map_err(|m| cx.invalid("health.timeout", m))?,
    };
    if timeout > interval {
        return Err(cx.invalid(
            "health.timeout",
            format!(
                "{} is longer than the interval ({}); a check must end before the next one \
                 starts, so shorten the timeout or lengthen the interval",
                format_interval(timeout),
                format_interval(interval)
            ),
        ));
    }
    let streak = |field: &str, raw: Option<Scalar>, default: u32| match raw {
        None => Ok(default),
        Some(Scalar(text)) => cx
            .number(
                field,
                &text,
                1..=u64::from(MAX_HEALTH_STREAK),
                &format!("give a count of consecutive checks, 1-{MAX_HEALTH_STREAK}"),
            )
            .map(|n| n as u32),
    };
    Ok(HealthSpec {
        probe,
        port,
        interval,
        timeout,
        rise: streak("health.rise", raw.rise, defaults.rise)?,
        fall: streak("health.fall", raw.fall, defaults.fall)?,
        when_all_down: cx.keyword("health.when_all_down", raw.when_all_down)?,
    })
}

fn http_probe(raw: RawHttpProbe, cx: &Ctx<'_>) -> Result<Probe, ConfigError> {
    let path = match raw.path {
        None => "/".to_owned(),
        Some(Scalar(path)) => {
            let printable = path.bytes().all(|b| b.is_ascii_graphic());
            if !path.starts_with('/') || !printable || path.len() > MAX_HEALTH_PATH_LEN {
                return Err(cx.invalid(
                    "health.http.path",
                    format!(
                        "{} is not a request path; write one that starts with / and has no \
                         spaces or control characters (at most {MAX_HEALTH_PATH_LEN} bytes), \
                         e.g. /healthz",
                        quoted_short(&path)
                    ),
                ));
            }
            path
        }
    };
    let expect = match raw.expect {
        None => 200,
        Some(Scalar(text)) => cx.number(
            "health.http.expect",
            &text,
            100..=599,
            "give the HTTP status a healthy backend answers, 100-599",
        )? as u16,
    };
    Ok(Probe::Http { path, expect })
}

/// `500ms`, `2s`, `1m`, `1h` or plain seconds, within `min..=max`.
fn parse_interval(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    let range = || {
        format!(
            "{text:?} is out of range; write {} to {}",
            format_interval(min),
            format_interval(max)
        )
    };
    match parse_number(digits, 0..=u64::from(u32::MAX)) {
        Ok(n) if unit_ms != 0 => {
            let d = Duration::from_millis(n.saturating_mul(unit_ms));
            if (min..=max).contains(&d) {
                Ok(d)
            } else {
                Err(range())
            }
        }
        Err(NumberError::OutOfRange) => Err(range()),
        _ => Err(format!(
            "{text:?} is not a duration; write e.g. 500ms, 2s or 1m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(health: &str) -> Result<ServiceFile, ConfigError> {
        let text = format!(
            "services:\n  web:\n    ports: [\"80:8080\"]\n    backends: [\"198.18.2.10\", \"198.18.2.11:9000\"]\n    health: {health}\n"
        );
        ServiceFile::parse(&text, Path::new("services.yaml"))
    }

    fn health(text: &str) -> HealthSpec {
        let file = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        file.services["web"].health.clone().expect("health")
    }

    /// The message for `text`, checked to name the service and `field`.
    fn refused(text: &str, field: &str) -> String {
        let e = parse(text).expect_err(text);
        assert_eq!(e.service(), Some("web"), "{e}");
        assert_eq!(e.field(), Some(field), "{e}");
        e.to_string()
    }

    #[test]
    fn checks_are_read_with_their_defaults() {
        assert_eq!(health("{ tcp: {} }"), HealthSpec::default());
        let h = health(
            "{ http: { path: /healthz, expect: 204 }, port: 9100, interval: 500ms, timeout: 200ms, \
             rise: 1, fall: 5, when_all_down: keep }",
        );
        assert_eq!(
            h,
            HealthSpec {
                probe: Probe::Http {
                    path: "/healthz".into(),
                    expect: 204
                },
                port: Some(9100),
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                rise: 1,
                fall: 5,
                when_all_down: WhenAllDown::Keep,
            }
        );
        // http defaults: GET / expecting 200; a short interval shortens the default timeout.
        let h = health("{ http: {}, interval: 300ms }");
        assert_eq!(
            h.probe,
            Probe::Http {
                path: "/".into(),
                expect: 200
            }
        );
        assert_eq!(h.timeout, Duration::from_millis(300));
        assert_eq!(
            parse("{ tcp: {} }").unwrap().services["web"].health,
            Some(HealthSpec::default())
        );
    }

    #[test]
    fn a_backend_is_checked_at_the_check_port_else_its_own_else_the_mappings() {
        let file = parse("{ tcp: {} }").unwrap();
        let spec = &file.services["web"];
        let h = spec.health.as_ref().unwrap();
        let targets: Vec<String> = spec
            .backends
            .iter()
            .map(|b| h.target(b, &spec.ports[0]).to_string())
            .collect();
        assert_eq!(targets, ["198.18.2.10:8080", "198.18.2.11:9000"]);
        let h = health("{ tcp: {}, port: 7000 }");
        assert_eq!(
            h.target(&spec.backends[1], &spec.ports[0]).to_string(),
            "198.18.2.11:7000"
        );
    }

    #[test]
    fn bad_checks_are_refused_with_the_field_and_the_fix() {
        for (text, field, says) in [
            ("{}", "health", "write `tcp: {}`"),
            ("{ tcp: {}, http: {} }", "health", "keep one"),
            (
                "{ tcp: {}, interval: 50ms }",
                "health.interval",
                "100ms to 3600s",
            ),
            (
                "{ tcp: {}, interval: soon }",
                "health.interval",
                "500ms, 2s",
            ),
            (
                "{ tcp: {}, timeout: 3s, interval: 1s }",
                "health.timeout",
                "longer than the interval (1s)",
            ),
            ("{ tcp: {}, rise: 0 }", "health.rise", "1-100"),
            ("{ tcp: {}, fall: 101 }", "health.fall", "1-100"),
            ("{ tcp: {}, port: 0 }", "health.port", "1-65535"),
            (
                "{ tcp: {}, when_all_down: hold }",
                "health.when_all_down",
                "drop, keep",
            ),
            (
                "{ http: { path: healthz } }",
                "health.http.path",
                "starts with /",
            ),
            (
                "{ http: { path: \"/a b\" } }",
                "health.http.path",
                "no spaces",
            ),
            ("{ http: { expect: 42 } }", "health.http.expect", "100-599"),
        ] {
            let message = refused(text, field);
            assert!(message.contains(says), "{text}: {message}");
        }
        let e = parse("{ tcp: {}, every: 2s }").expect_err("unknown field");
        assert!(e.to_string().contains("interval"), "{e}");
    }

    #[test]
    fn a_check_is_written_back_as_read() {
        for text in [
            "{ tcp: {} }",
            "{ http: { path: /ready, expect: 204 }, port: 9100, interval: 750ms, timeout: 250ms, rise: 3, fall: 1, when_all_down: keep }",
        ] {
            let file = parse(text).unwrap();
            let value = serde_json::json!({ "services": file.services_value() });
            let again = ServiceFile::parse(&value.to_string(), Path::new("api")).unwrap();
            assert_eq!(
                again.services["web"].health, file.services["web"].health,
                "{text}"
            );
        }
    }
}
