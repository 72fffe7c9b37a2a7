//! Announcing VIPs to the upstream router through BIRD 2, not a BGP speaker of our own.
//!
//! `lbd` writes the VIPs to announce (`DesiredState::announced_vips`) as a BIRD include file
//! that defines two static protocols, `meshlb_vips4` and `meshlb_vips6`, one route per VIP,
//! and asks BIRD to read its configuration again through its control socket. The operator's
//! `bird.conf` includes the file and exports those protocols' routes over BGP (see
//! `deploy/bird/`). The file is written only when the set changes, atomically (a temporary
//! file renamed over it), so BIRD never reads half of it.
//!
//! The file outlives `lbd`: a restart leaves the announcement as it was (BIRD keeps
//! announcing, and the next `lbd` rewrites the file only if its set differs); `lbd cleanup`,
//! which stops `lbd` for good, withdraws every VIP (`Announcer::withdraw_all`).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

pub mod record;

/// BIRD's default control socket (Debian's `bird2`).
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// How long BIRD may take to answer on its control socket.
const BIRD_TIMEOUT: Duration = Duration::from_secs(10);

/// The names of the static protocols the include file defines (IPv4, IPv6).
pub const PROTOCOL_V4: &str = "meshlb_vips4";
pub const PROTOCOL_V6: &str = "meshlb_vips6";

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("cannot write the BIRD include file {path}: {error}; check lbd.bgp.bird_include")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}", unreachable_message(socket, error))]
    Unreachable {
        socket: PathBuf,
        error: std::io::Error,
    },
    /// BIRD answers, but does not run the include file's protocols: `bird.conf` does not
    /// include it (any more), or BIRD is shutting down.
    #[error(
        "BIRD at {} does not run {PROTOCOL_V4} from {} ({why})",
        socket.display(),
        include.display()
    )]
    NotRunning {
        socket: PathBuf,
        include: PathBuf,
        /// What BIRD said, and the fix.
        why: String,
    },
    /// BIRD reads its whole configuration again: the error may be in the operator's part of
    /// it (a half-finished edit), which BIRD's message names by file and line.
    #[error("{}", refused_message(include, message))]
    Refused { include: PathBuf, message: String },
}

fn refused_message(include: &Path, message: &str) -> String {
    let include_text = include.display().to_string();
    // BIRD's reply codes (doc/reply_codes) that are no configuration error.
    let said = |code: &str| message.split(" | ").any(|line| line.starts_with(code));
    if said("0016") {
        return format!(
            "BIRD refused to read its configuration after {include_text} changed: {message}; \
             its socket is a restricted one (bird -R, or birdc -r's): point --birdc-socket \
             (lbd.bgp.birdc_socket) at BIRD's unrestricted control socket"
        );
    }
    if said("0006") {
        return format!(
            "BIRD did not read {include_text}: {message}; it is shutting down, and the VIPs \
             reach the router once it runs again"
        );
    }
    let hint = if message.contains(&include_text) {
        "check that bird.conf includes it as deploy/bird/ shows"
    } else {
        "BIRD read its whole configuration again, and the error is where its message says; \
         until it is fixed no VIP change reaches the router"
    };
    format!("BIRD refused its configuration after {include_text} changed: {message}; {hint}")
}

fn unreachable_message(socket: &Path, source: &std::io::Error) -> String {
    let socket = socket.display();
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        // Debian's BIRD runs as user bird and makes its socket bird:bird 0660; lbd runs as
        // root but without CAP_DAC_OVERRIDE (the systemd unit's bounding set).
        return format!(
            "BIRD's control socket {socket} refuses lbd ({source}): BIRD runs as its own user \
             and lets only its group use the socket; run lbd with that group too (the systemd \
             drop-in deploy/systemd/meshlb-bgp.conf: SupplementaryGroups=bird)"
        );
    }
    format!(
        "BIRD's control socket {socket} does not answer ({source}): is BIRD running (`bird -c \
         CONF -s {socket}`) and is lbd.bgp.birdc_socket its socket? The VIPs are written to the \
         include file and BIRD reads them when it starts"
    )
}

/// Where the VIPs go: the include file BIRD's configuration reads, and BIRD's control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BirdSettings {
    pub include: PathBuf,
    pub socket: PathBuf,
    /// Announced beside the VIPs while lbd serves, whatever its services' health (withdrawn
    /// only with them, by `lbd cleanup`): the router steers the backends' replies by the
    /// nodes that announce it (`deploy/bird/router.conf`). Resolving that route through a VIP
    /// instead would lose every node's replies once that one VIP's backends were all down.
    pub reply_anchor: Option<IpAddr>,
}

/// Keeps BIRD's static routes equal to the VIPs to announce.
#[derive(Debug)]
pub struct Announcer {
    settings: BirdSettings,
    /// The file changed but BIRD was not told (it was down, or refused): ask again.
    unconfirmed: bool,
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synced {
    /// The file already held this set: nothing written, BIRD not asked.
    Unchanged,
    /// The file was rewritten and BIRD reconfigured.
    Reconfigured,
}

impl Announcer {
    pub fn new(settings: BirdSettings) -> Self {
        Self {
            settings,
            // An earlier lbd may have written the file and stopped before BIRD was told (or
            // BIRD refused it): the first sync asks BIRD once whatever the file holds. A
            // `configure` that changes nothing leaves BIRD's protocols alone.
            unconfirmed: true,
        }
    }

    pub fn settings(&self) -> &BirdSettings {
        &self.settings
    }

    /// Whether BIRD took the include file as it is: the last sync told it, or found it
    /// unchanged since it did.
    pub fn confirmed(&self) -> bool {
        !self.unconfirmed
    }

    /// The VIPs the include file announces now (none if it cannot be read).
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        std::fs::read_to_string(&self.settings.include)
            .map(|text| announced_in(&text))
            .unwrap_or_default()
    }

    /// Makes BIRD announce exactly `vips`. The file on disk is the state (it survives lbd
    /// restarts), so an unchanged set neither writes nor reconfigures, unless BIRD has not
    /// been told since this announcer started or since a change it could not be told of:
    /// then BIRD is asked again.
    pub fn sync(&mut self, vips: &BTreeSet<IpAddr>) -> Result<Synced, AnnounceError> {
        let text = render(vips);
        let path = &self.settings.include;
        if !self.unconfirmed && std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(Synced::Unchanged);
        }
        write_atomically(path, &text).map_err(|error| AnnounceError::Write {
            path: path.clone(),
            error,
        })?;
        self.unconfirmed = true;
        self.reconfigure()?;
        self.unconfirmed = false;
        Ok(Synced::Reconfigured)
    }

    /// Withdraws every VIP (`lbd cleanup`).
    pub fn withdraw_all(&mut self) -> Result<Synced, AnnounceError> {
        self.sync(&BTreeSet::new())
    }

    /// Asks BIRD to read its configuration (and so the include file) again.
    pub fn reconfigure(&self) -> Result<(), AnnounceError> {
        let lines = self.ask("configure")?;
        // Reply codes (BIRD's doc/reply_codes): 0003 reconfigured, 0004 in progress, 0005
        // queued behind one in progress (BIRD reads the file after it), 0018 confirmed, 0019
        // nothing to do; 8xxx and 9xxx are errors.
        let ok = lines.iter().any(|l| {
            ["0003", "0004", "0005", "0018", "0019"]
                .iter()
                .any(|c| l.starts_with(c))
        });
        if ok {
            return Ok(());
        }
        Err(AnnounceError::Refused {
            include: self.settings.include.clone(),
            message: lines.join(" | "),
        })
    }

    /// Asks BIRD whether it runs the include file's protocols (`show protocols`), so a BIRD
    /// that stopped, or whose configuration no longer includes the file, is noticed though
    /// the VIPs do not change; and how its BGP sessions are, which carry the VIPs to the
    /// routers.
    pub fn check(&self) -> Result<Vec<BgpSession>, AnnounceError> {
        let lines = self.ask("show protocols")?;
        let rows = protocol_rows(&lines);
        let ours = rows.iter().find(|r| r.name == PROTOCOL_V4);
        if ours.is_some_and(|r| r.state == "up") {
            return Ok(rows
                .into_iter()
                .filter(|r| r.proto == "BGP")
                .map(|r| BgpSession {
                    protocol: r.name.to_owned(),
                    state: r.state.to_owned(),
                    info: r.info,
                })
                .collect());
        }
        let include_it = "check that bird.conf includes that file as deploy/bird/ shows";
        let why = match ours {
            Some(row) => format!(
                "its state is {}: `birdc enable {PROTOCOL_V4}` if it was disabled, else BIRD's \
                 log says why",
                row.state
            ),
            None if rows.is_empty() => format!("{}: {include_it}", lines.join(" | ")),
            None => format!("no such protocol: {include_it}"),
        };
        Err(AnnounceError::NotRunning {
            socket: self.settings.socket.clone(),
            include: self.settings.include.clone(),
            why,
        })
    }

    /// BIRD's reply to `command` on its control socket.
    fn ask(&self, command: &str) -> Result<Vec<String>, AnnounceError> {
        let socket = &self.settings.socket;
        bird_command(socket, command).map_err(|error| AnnounceError::Unreachable {
            socket: socket.clone(),
            error,
        })
    }
}

/// A BGP protocol of BIRD's (a session to a router), as `show protocols` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BgpSession {
    /// Its name in BIRD's configuration.
    pub protocol: String,
    /// BIRD's state of the protocol: `up` once the session is established, `start` while it
    /// is being set up, `down` when disabled.
    pub state: String,
    /// BIRD's words for the session (`Established`, `Active`, `Idle`, ...), and why the last
    /// one ended.
    pub info: String,
}

/// How a BGP session is, for the status, the metrics and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCondition {
    Established,
    /// Disabled by hand (`birdc disable`, or `disabled` in BIRD's configuration): nobody
    /// expects it up.
    Disabled,
    /// Being set up, failing, or shut down by BIRD after an error (`down` with BIRD's
    /// words why).
    NotEstablished,
}

impl BgpSession {
    pub fn condition(&self) -> SessionCondition {
        match self.state.as_str() {
            "up" => SessionCondition::Established,
            // A session BIRD shut down itself (`disable after error`, a route limit) is down
            // too, but says why.
            "down" if self.info.is_empty() => SessionCondition::Disabled,
            _ => SessionCondition::NotEstablished,
        }
    }

    pub fn established(&self) -> bool {
        self.condition() == SessionCondition::Established
    }

    /// `start: Active Socket: Connection refused`, or `start` when BIRD says no more.
    pub fn state_text(&self) -> String {
        if self.info.is_empty() {
            self.state.clone()
        } else {
            format!("{}: {}", self.state, self.info)
        }
    }
}

/// One row of `show protocols`.
#[derive(Debug, PartialEq, Eq)]
struct ProtocolRow<'a> {
    name: &'a str,
    proto: &'a str,
    state: &'a str,
    info: String,
}

/// The rows of BIRD's reply to `show protocols`: code 1002, the first prefixed
/// `1002-`, the rest by a space. Columns: name, protocol, table, state, since, info (the rest:
/// `Active        Received: Administrative shutdown`). Split at whitespace, not at the
/// header's offsets: a long name shifts its row. Since is a time, or a date and a time
/// (`timeformat protocol iso long`): the words after the state that start with a digit.
fn protocol_rows(lines: &[String]) -> Vec<ProtocolRow<'_>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in lines {
        let row = if let Some(row) = line.strip_prefix("1002-") {
            in_table = true;
            row
        } else if let Some(row) = line.strip_prefix(' ').filter(|_| in_table) {
            row
        } else {
            in_table = false;
            continue;
        };
        let mut fields = row.split_whitespace();
        let (Some(name), Some(proto), Some(_table), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let info: Vec<&str> = fields
            .skip_while(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        rows.push(ProtocolRow {
            name,
            proto,
            state,
            info: info.join(" "),
        });
    }
    rows
}

/// The VIPs an include file `render` wrote announces.
pub fn announced_in(text: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("route "))
        .filter_map(|route| route.split('/').next()?.parse().ok())
        .collect()
}

/// The include file for `vips`: two static protocols (so `bird.conf` can export each family's
/// routes by protocol name), one unreachable route per VIP (the route is only announced; the
/// kernel protocol must not import it back).
pub fn render(vips: &BTreeSet<IpAddr>) -> String {
    let mut text = String::from(
        "# Written by lbd (meshlb): the VIPs this node announces. Do not edit; see deploy/bird/.\n",
    );
    for (name, channel, v6) in [(PROTOCOL_V4, "ipv4", false), (PROTOCOL_V6, "ipv6", true)] {
        let _ = writeln!(text, "protocol static {name} {{\n  {channel};");
        for vip in vips.iter().filter(|v| v.is_ipv6() == v6) {
            let len = if v6 { 128 } else { 32 };
            let _ = writeln!(text, "  route {vip}/{len} unreachable;");
        }
        text.push_str("}\n");
    }
    text
}

/// The include file's mode: BIRD reads it as its own user (Debian's runs as `bird`).
const INCLUDE_MODE: u32 = 0o644;

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".lbd-tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    // Whatever lbd's umask: the file is only VIPs, and BIRD must read it.
    file.set_permissions(std::fs::Permissions::from_mode(INCLUDE_MODE))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Sends one command on BIRD's control socket and answers the reply's lines (up to the line
/// whose code is followed by a space, which ends a reply).
fn bird_command(socket: &Path, command: &str) -> std::io::Result<Vec<String>> {
    bird_command_within(socket, command, BIRD_TIMEOUT)
}

/// `bird_command`, each step (the connect included) bounded by `timeout`.
fn bird_command_within(
    socket: &Path,
    command: &str,
    timeout: Duration,
) -> std::io::Result<Vec<String>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    // A BIRD that stopped accepting (stuck, or stopped with SIGSTOP) leaves connections in
    // its socket's backlog; once that is full a blocking connect waits for the send timeout,
    // which is set first so the connect is bounded too.
    let raw = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    raw.set_write_timeout(Some(timeout))?;
    raw.set_read_timeout(Some(timeout))?;
    raw.connect(&SockAddr::unix(socket)?).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("BIRD accepted no connection within {timeout:?} (its socket's queue is full: is BIRD stuck?)"),
            )
        } else {
            e
        }
    })?;
    let stream = UnixStream::from(std::os::fd::OwnedFd::from(raw));
    let mut reader = BufReader::new(stream.try_clone()?);
    // The greeting: "0001 BIRD 2.0.12 ready."
    read_reply(&mut reader)?;
    (&stream).write_all(format!("{command}\n").as_bytes())?;
    read_reply(&mut reader)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    // Bounded: a reply to `configure` is a few lines, one to `show protocols` a line per
    // protocol (dynamic BGP makes one per peer).
    for _ in 0..100_000 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "BIRD closed the control socket mid-reply",
            ));
        }
        // The space after the code ends a reply, even when nothing follows it ("0000 " ends
        // `show protocols`): looked for before trailing spaces go.
        let raw = line.trim_end_matches(['\n', '\r']);
        let last = raw.len() >= 5
            && raw.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && raw.as_bytes()[4] == b' ';
        lines.push(raw.trim_end().to_owned());
        if last {
            return Ok(lines);
        }
    }
    Err(std::io::Error::other("BIRD's reply did not end"))
}

#[cfg(test)]
pub(crate) mod tests;
