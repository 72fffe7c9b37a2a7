//! Stop notices: every node's lbd tells the others which tasks it knows are being stopped.
//!
//! Only a manager's Engine says which tasks the swarm is stopping, and a node sees only its
//! own tasks' stop signals: alone, a worker would send a task on another node new flows for
//! its whole stop grace period. So every lbd tells every peer what it knows itself (a
//! manager: every stopping task, from `/tasks`; any node: its own tasks sent their stop
//! signal) in UDP datagrams to the tunnel port, which nodes already let through between
//! them, and takes the tasks its peers name for stopping until [`HOLD`] after it last heard
//! them. A node repeats its word every [`REPEAT`] while it has any, so a lost datagram costs
//! a second and a mark no longer repeated (a task started again) lapses. Only a node's own
//! knowledge is told, never what it heard, so no mark outlives the nodes that know it.
//!
//! A datagram is [`MAGIC`] and then task names, each a length byte and the name's bytes.
//! `MAGIC`'s first nibble (0) is no IP version: the kernel's tunnel receiver passes the
//! datagram on to this socket instead of unwrapping it. Only the swarm's nodes are heard, as
//! for the tunnel, and only names of tasks the Engine lists.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::maps::tunnel;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::snapshot::Snapshot;

/// The first bytes of a stop notice: a zero (no IP version), `ms` (meshlb stop) and the
/// format's version.
pub const MAGIC: [u8; 4] = [0x00, b'm', b's', 1];
/// How long a peer's word marks a task after it was last heard.
pub const HOLD: Duration = Duration::from_millis(3500);
/// How often a node repeats its word while it has any.
pub const REPEAT: Duration = Duration::from_secs(1);
/// The largest datagram sent: below any underlay's MTU, so never fragmented.
const MAX_DATAGRAM: usize = 1200;
/// How often a lasting failure to listen is logged again.
const REMIND: Duration = Duration::from_secs(30);

/// What a datagram to the tunnel port that is no well-formed stop notice was.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    #[error("it does not start with the stop notice's bytes {MAGIC:?} (another version?)")]
    NotNotice,
    #[error("a task name runs past the datagram's end")]
    Truncated,
    #[error("a task name is empty or not UTF-8")]
    BadName,
}

/// `names` in datagrams of at most [`MAX_DATAGRAM`] bytes. A name longer than 255 bytes
/// cannot be told and is left out (swarm task names are far shorter: a service's name has
/// at most 63).
pub fn encode<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    let mut current = MAGIC.to_vec();
    for name in names {
        let Ok(len) = u8::try_from(name.len()) else {
            warn!(
                task = name,
                "swarm: a task name too long for a stop notice; not told"
            );
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if current.len() + 1 + name.len() > MAX_DATAGRAM {
            datagrams.push(std::mem::replace(&mut current, MAGIC.to_vec()));
        }
        current.push(len);
        current.extend_from_slice(name.as_bytes());
    }
    if current.len() > MAGIC.len() {
        datagrams.push(current);
    }
    datagrams
}

/// The task names in `datagram`, or why it is no stop notice.
pub fn decode(datagram: &[u8]) -> Result<Vec<&str>, NoticeError> {
    let mut rest = datagram
        .strip_prefix(MAGIC.as_slice())
        .ok_or(NoticeError::NotNotice)?;
    let mut names = Vec::new();
    while let Some((&len, after)) = rest.split_first() {
        let len = usize::from(len);
        if after.len() < len {
            return Err(NoticeError::Truncated);
        }
        let (name, after) = after.split_at(len);
        match std::str::from_utf8(name) {
            Ok(name) if !name.is_empty() => names.push(name),
            _ => return Err(NoticeError::BadName),
        }
        rest = after;
    }
    Ok(names)
}

/// The tasks peers named as stopping, each until [`HOLD`] after it was last named.
#[derive(Debug, Default)]
pub struct HeardMemory {
    until: BTreeMap<String, Instant>,
}

impl HeardMemory {
    /// Notes `names` heard at `now`, those `known` only; how many were not held already.
    pub fn heard(&mut self, names: &[&str], known: impl Fn(&str) -> bool, now: Instant) -> usize {
        let mut new = 0;
        for name in names.iter().filter(|n| known(n)) {
            let held = self
                .until
                .insert((*name).to_owned(), now + HOLD)
                .is_some_and(|until| until > now);
            new += usize::from(!held);
        }
        new
    }

    /// Forgets the names not heard for [`HOLD`], then marks `snapshot`'s tasks named by the
    /// others stopping; how many it marked that were not already.
    pub fn mark(&mut self, snapshot: &mut Snapshot, now: Instant) -> usize {
        self.until.retain(|_, until| *until > now);
        let mut marked = 0;
        for (name, task) in snapshot.services.values_mut().flat_map(|s| &mut s.tasks) {
            if !task.stopping && self.until.contains_key(name) {
                task.stopping = true;
                marked += 1;
            }
        }
        marked
    }

    /// How many names are held at `now`.
    pub fn held(&self, now: Instant) -> usize {
        self.until.values().filter(|until| **until > now).count()
    }
}

/// The tasks `snapshot` marks stopping, by name.
pub fn stopping_names(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .services
        .values()
        .flat_map(|s| &s.tasks)
        .filter(|(_, t)| t.stopping)
        .map(|(name, _)| name.clone())
        .collect()
}

/// How the stop notices go, for `lbctl status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NoticeStatus {
    /// Where this node listens for its peers' notices; `None` before the Engine gave this
    /// node's mesh address, or while it cannot listen (`error`).
    pub listening: Option<SocketAddr>,
    pub error: Option<String>,
    /// Datagrams sent, peers' datagrams taken, and datagrams refused (not from a peer, or
    /// not a well-formed notice).
    pub sent: u64,
    pub heard: u64,
    pub refused: u64,
    /// Tasks the peers' word marks stopping now.
    pub held: usize,
}

/// The notices' socket and what was told and heard.
#[derive(Default)]
pub struct Notices {
    socket: Option<UdpSocket>,
    /// The address the socket was last (tried to be) bound to.
    bound: Option<IpAddr>,
    /// The nodes heard from and told: the swarm's nodes but this one.
    peers: BTreeSet<IpAddr>,
    /// The tasks the Engine lists: only these are taken from a peer's word.
    tasks: BTreeSet<String>,
    heard: HeardMemory,
    /// What this node last told, and when.
    told: Option<(BTreeSet<String>, Instant)>,
    status: NoticeStatus,
    reminded: Option<Instant>,
}

impl Notices {
    /// After a read of the Engine: listens on `snapshot`'s mesh address, tells the peers the
    /// tasks `snapshot` marks stopping (this node's own knowledge, before any peer's word) if
    /// that is new or due again, then marks in `snapshot` the tasks the peers named.
    pub async fn exchange(&mut self, snapshot: &mut Snapshot) {
        let own = snapshot.mesh_addr();
        self.listen_on(own);
        self.peers = snapshot
            .peers
            .iter()
            .copied()
            .filter(|p| Some(*p) != own)
            .collect();
        self.tasks = snapshot
            .services
            .values()
            .flat_map(|s| s.tasks.keys().cloned())
            .collect();
        let stopping = stopping_names(snapshot);
        let due = match &self.told {
            None => !stopping.is_empty(),
            Some((told, at)) => !stopping.is_subset(told) || at.elapsed() >= REPEAT,
        };
        if stopping.is_empty() {
            self.told = None;
        } else if due {
            self.tell(stopping).await;
        }
        let now = Instant::now();
        self.heard.mark(snapshot, now);
        self.status.held = self.heard.held(now);
    }

    /// Waits for a peer's datagram, or for this node's word to be due again (then tells it);
    /// whether a peer named a task not held before. Datagrams that are not a peer's
    /// well-formed notice are counted and dropped. Cancel-safe but for a repeat cut short,
    /// which the next read makes good.
    pub async fn attend(&mut self) -> bool {
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let repeat_at = self.told.as_ref().map(|(_, at)| *at + REPEAT);
        let received = {
            let receive = async {
                match &self.socket {
                    Some(socket) => socket.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            let repeat = async {
                match repeat_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = receive => Some(got),
                () = repeat => None,
            }
        };
        match received {
            None => {
                if let Some((told, _)) = self.told.take() {
                    self.tell(told).await;
                }
                false
            }
            Some(Err(e)) => {
                debug!("swarm: receiving a stop notice: {e}");
                false
            }
            Some(Ok((len, from))) => self.take(&buf[..len], from),
        }
    }

    /// Takes a datagram from `from`: whether it named a task not held before.
    fn take(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        if !self.peers.contains(&from.ip()) {
            debug!(from = %from, "swarm: a datagram to the notice port from a node not in the swarm; dropped");
            self.status.refused += 1;
            return false;
        }
        let names = match decode(datagram) {
            Ok(names) => names,
            Err(e) => {
                debug!(from = %from, "swarm: a peer's datagram is no stop notice: {e}; dropped");
                self.status.refused += 1;
                return false;
            }
        };
        let now = Instant::now();
        let tasks = &self.tasks;
        let new = self.heard.heard(&names, |n| tasks.contains(n), now);
        if new > 0 {
            info!(from = %from, new, "swarm: a peer says tasks are being stopped; they take no new flows here");
        }
        self.status.heard += 1;
        self.status.held = self.heard.held(now);
        new > 0
    }

    /// Marks in `snapshot` the tasks the peers named; how many it marked that were not.
    pub fn mark(&mut self, snapshot: &mut Snapshot) -> usize {
        self.heard.mark(snapshot, Instant::now())
    }

    async fn tell(&mut self, stopping: BTreeSet<String>) {
        if let Some(socket) = &self.socket {
            let mut sent = 0;
            for datagram in encode(stopping.iter().map(String::as_str)) {
                for peer in &self.peers {
                    match socket
                        .send_to(&datagram, SocketAddr::new(*peer, tunnel::PORT))
                        .await
                    {
                        Ok(_) => sent += 1,
                        Err(e) => debug!(peer = %peer, "swarm: sending a stop notice: {e}"),
                    }
                }
            }
            self.status.sent += sent;
        }
        self.told = Some((stopping, Instant::now()));
    }

    /// Binds the socket to `addr` and the tunnel port when `addr` is new, or when it could
    /// not before (tried again at every read).
    fn listen_on(&mut self, addr: Option<IpAddr>) {
        if addr == self.bound && (self.socket.is_some() || addr.is_none()) {
            return;
        }
        self.bound = addr;
        self.socket = None;
        let Some(addr) = addr else {
            self.status.listening = None;
            return;
        };
        let at = SocketAddr::new(addr, tunnel::PORT);
        let bound = std::net::UdpSocket::bind(at).and_then(|socket| {
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        });
        match bound {
            Ok(socket) => {
                info!(at = %at, "swarm: listening for the peers' stop notices");
                self.socket = Some(socket);
                self.reminded = None;
                self.status.listening = Some(at);
                self.status.error = None;
            }
            Err(e) => {
                let error = format!(
                    "cannot listen for stop notices on {at} (udp): {e}; this node tells and \
                     hears no stop notices until it can (is another program bound to that port?)"
                );
                if self.reminded.is_none_or(|at| at.elapsed() >= REMIND) {
                    warn!("swarm: {error}");
                    self.reminded = Some(Instant::now());
                }
                self.status.listening = None;
                self.status.error = Some(error);
            }
        }
    }

    /// How the notices go.
    pub fn status(&self) -> &NoticeStatus {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::{SwarmService, Task};

    fn snapshot(listed: &[&str], stopping: &[&str]) -> Snapshot {
        let tasks = listed
            .iter()
            .map(|name| {
                let task = Task {
                    stopping: stopping.contains(name),
                    ..Default::default()
                };
                (name.to_string(), task)
            })
            .collect();
        Snapshot {
            services: [(
                "web".to_owned(),
                SwarmService {
                    tasks,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn notices_carry_every_name_in_datagrams_that_fit() {
        let names: Vec<String> = (0..100)
            .map(|i| format!("service-{i:03}.{}.{}", i % 7, "x".repeat(25)))
            .collect();
        let datagrams = encode(names.iter().map(String::as_str));
        assert!(datagrams.len() > 1, "100 names of 40 bytes take several");
        let mut decoded = Vec::new();
        for d in &datagrams {
            assert!(d.len() <= MAX_DATAGRAM, "{}", d.len());
            assert_eq!(d[..4], MAGIC);
            // Never taken for an IP packet by the tunnel's receiver.
            assert!(d[0] >> 4 != 4 && d[0] >> 4 != 6);
            decoded.extend(decode(d).unwrap().into_iter().map(str::to_owned));
        }
        assert_eq!(decoded, names);
        assert!(encode([]).is_empty());
        // Exact bytes: the format other versions read.
        assert_eq!(
            encode(["web.1.a", "db.2.bc"]),
            [b"\x00ms\x01\x07web.1.a\x07db.2.bc".to_vec()]
        );
        let long = "n".repeat(256);
        assert_eq!(
            encode([long.as_str(), "web.1.a"]),
            [b"\x00ms\x01\x07web.1.a".to_vec()]
        );
    }

    #[test]
    fn datagrams_that_are_no_notice_are_refused() {
        for (datagram, error) in [
            (&b"\x45\x00\x00\x1c"[..], NoticeError::NotNotice),
            (b"\x00ms\x02\x01a", NoticeError::NotNotice),
            (b"", NoticeError::NotNotice),
            (b"\x00ms\x01\x05web", NoticeError::Truncated),
            (b"\x00ms\x01\x00", NoticeError::BadName),
            (b"\x00ms\x01\x02\xff\xfe", NoticeError::BadName),
        ] {
            assert_eq!(decode(datagram), Err(error), "{datagram:?}");
        }
        assert_eq!(decode(b"\x00ms\x01"), Ok(vec![]));
    }

    /// A peer's word marks the listed tasks it names until `HOLD` after it was last heard;
    /// names of tasks the Engine does not list are not taken.
    #[test]
    fn a_peers_word_marks_tasks_until_it_is_no_longer_repeated() {
        let mut memory = HeardMemory::default();
        let t0 = Instant::now();
        let listed = ["web.1.a", "web.2.b", "web.3.c"];
        let known = |n: &str| listed.contains(&n);
        assert_eq!(memory.heard(&["web.2.b", "other.1.z"], known, t0), 1);
        assert_eq!(memory.heard(&["web.2.b"], known, t0 + REPEAT), 0);
        let mut s = snapshot(&listed, &["web.3.c"]);
        assert_eq!(memory.mark(&mut s, t0 + REPEAT), 1);
        assert_eq!(
            stopping_names(&s),
            BTreeSet::from(["web.2.b".into(), "web.3.c".into()])
        );
        // Repeated at t0 + REPEAT: held until then + HOLD, and no longer.
        let mut s = snapshot(&listed, &[]);
        assert_eq!(memory.mark(&mut s, t0 + REPEAT + HOLD - REPEAT / 10), 1);
        let mut s = snapshot(&listed, &[]);
        assert_eq!(memory.mark(&mut s, t0 + REPEAT + HOLD), 0);
        assert!(stopping_names(&s).is_empty());
        assert_eq!(memory.held(t0 + REPEAT + HOLD), 0);
        // Heard again after it lapsed: new again.
        assert_eq!(memory.heard(&["web.2.b"], known, t0 + 10 * HOLD), 1);
    }

    /// A node tells its own knowledge only: what it heard is marked after it told, so two
    /// nodes never keep each other's marks alive.
    #[tokio::test]
    async fn a_node_tells_what_it_knows_and_not_what_it_heard() {
        let mut notices = Notices::default();
        let t0 = Instant::now();
        notices.heard.heard(&["web.2.b"], |_| true, t0);
        let mut s = snapshot(&["web.1.a", "web.2.b", "web.3.c"], &["web.3.c"]);
        notices.exchange(&mut s).await;
        let told = notices.told.as_ref().map(|(t, _)| t.clone());
        assert_eq!(told, Some(BTreeSet::from(["web.3.c".to_owned()])));
        assert_eq!(
            stopping_names(&s),
            BTreeSet::from(["web.2.b".into(), "web.3.c".into()])
        );
        // No mesh address yet: not listening, nothing sent, nothing wrong.
        let st = notices.status().clone();
        assert_eq!(
            (st.listening, st.sent, st.error, st.held),
            (None, 0, None, 1)
        );
        // Nothing stopping any more: nothing to repeat.
        let mut s = snapshot(&["web.1.a"], &[]);
        notices.exchange(&mut s).await;
        assert!(notices.told.is_none());
    }
}
