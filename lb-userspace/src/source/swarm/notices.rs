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
    #[error("it is longer than a stop notice may be ({MAX_DATAGRAM} bytes)")]
    TooLong,
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
        self.forget_lapsed(now);
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

    /// Forgets the names not heard for [`HOLD`] at `now`.
    pub fn forget_lapsed(&mut self, now: Instant) {
        self.until.retain(|_, until| *until > now);
    }

    /// When the next held name lapses.
    pub fn next_lapse(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }
}

/// How the stop notices go, for `lbctl status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NoticeStatus {
    /// Where this node listens for its peers' notices; `None` before the Engine gave this
    /// node's mesh address, or while it cannot listen (`error`).
    pub listening: Option<SocketAddr>,
    pub error: Option<String>,
    /// Datagrams sent, peers' datagrams taken, and datagrams refused here (not from a swarm
    /// node's lbd, or not a well-formed notice; where the tunnel runs, the kernel drops those
    /// of senders that are no swarm node first, as `drop_tunnel_not_peer`).
    pub sent: u64,
    pub heard: u64,
    pub refused: u64,
    /// Task names the peers' word holds now (this node may know some of them itself too).
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
    /// What this node knows itself now: told, and repeated, while not empty.
    word: BTreeSet<String>,
    /// What this node last told, and when.
    told: Option<(BTreeSet<String>, Instant)>,
    status: NoticeStatus,
    reminded: Option<Instant>,
}

/// What [`Notices::attend`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Attended {
    /// Nothing that changes the marks (a repeat told, a name already held, a datagram
    /// refused).
    Nothing,
    /// A peer named a task not held before, or a held name lapsed: the marks changed.
    MarksChanged,
}

impl Notices {
    /// After a good read of the Engine: listens on `snapshot`'s mesh address and, when
    /// `may_tell` (the read's view holds: not just after an outage), tells the peers the tasks
    /// `snapshot` marks stopping (this node's own knowledge: before any peer's word is
    /// marked) if that is new or due again. Without `may_tell` it tells nothing, and stops
    /// repeating what it told.
    pub async fn exchange(&mut self, snapshot: &Snapshot, may_tell: bool) {
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
        if !may_tell {
            self.hush();
            return;
        }
        self.word = snapshot.stopping_names();
        if self.word.is_empty() {
            self.told = None;
            return;
        }
        let due = self
            .told
            .as_ref()
            .is_none_or(|(told, at)| !self.word.is_subset(told) || at.elapsed() >= REPEAT);
        if due {
            self.tell().await;
        }
    }

    /// Stops telling (this node's Engine does not answer: what it knew grows stale), so the
    /// peers' marks from its word lapse.
    pub fn hush(&mut self) {
        self.word.clear();
        self.told = None;
    }

    /// `snapshot` with the tasks the peers' word holds now marked stopping.
    pub fn marked(&mut self, snapshot: &Snapshot) -> Snapshot {
        let now = Instant::now();
        let mut marked = snapshot.clone();
        self.heard.mark(&mut marked, now);
        self.status.held = self.heard.held(now);
        marked
    }

    /// Waits for peers' datagrams (taking every one already queued), for this node's word to
    /// be due again (then tells it), or for a held name to lapse. Datagrams that are not a
    /// peer's well-formed notice are counted and dropped. Cancel-safe but for a repeat cut
    /// short, which the next read makes good.
    pub async fn attend(&mut self) -> Attended {
        /// Datagrams taken at most per call, so reads are never held up for long.
        const BATCH: usize = 64;
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let repeat_at = self.told.as_ref().map(|(_, at)| *at + REPEAT);
        let lapse_at = self.heard.next_lapse();
        let woke = {
            let receive = async {
                match &self.socket {
                    Some(socket) => socket.recv_from(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            let at = |when: Option<Instant>| async move {
                match when {
                    Some(when) => tokio::time::sleep_until(when.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = receive => Woke::Received(got),
                () = at(repeat_at) => Woke::Repeat,
                () = at(lapse_at) => Woke::Lapse,
            }
        };
        match woke {
            Woke::Repeat => {
                self.tell().await;
                Attended::Nothing
            }
            Woke::Lapse => {
                let now = Instant::now();
                self.heard.forget_lapsed(now);
                self.status.held = self.heard.held(now);
                Attended::MarksChanged
            }
            Woke::Received(Err(e)) => {
                debug!("swarm: receiving a stop notice: {e}");
                Attended::Nothing
            }
            Woke::Received(Ok((len, from))) => {
                let mut changed = self.take(&buf[..len], from);
                for _ in 1..BATCH {
                    let Some(socket) = &self.socket else { break };
                    let Ok((len, from)) = socket.try_recv_from(&mut buf) else {
                        break;
                    };
                    changed |= self.take(&buf[..len], from);
                }
                if changed {
                    Attended::MarksChanged
                } else {
                    Attended::Nothing
                }
            }
        }
    }

    /// Takes a datagram from `from`: whether it named a task not held before.
    fn take(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        // Peers send from the notice socket, bound to the tunnel port.
        if !self.peers.contains(&from.ip()) || from.port() != tunnel::PORT {
            debug!(from = %from, "swarm: a datagram to the notice port not from a swarm node's lbd; dropped");
            self.status.refused += 1;
            return false;
        }
        let names = match decode(datagram) {
            Ok(_) if datagram.len() > MAX_DATAGRAM => Err(NoticeError::TooLong),
            decoded => decoded,
        };
        let names = match names {
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

    /// Tells the peers this node's word.
    async fn tell(&mut self) {
        if let Some(socket) = &self.socket {
            let mut sent = 0;
            for datagram in encode(self.word.iter().map(String::as_str)) {
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
        self.told = (!self.word.is_empty()).then(|| (self.word.clone(), Instant::now()));
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

/// What woke [`Notices::attend`].
enum Woke {
    Received(std::io::Result<(usize, SocketAddr)>),
    Repeat,
    Lapse,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::swarm::snapshot::with_web_tasks as snapshot;

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
            s.stopping_names(),
            BTreeSet::from(["web.2.b".into(), "web.3.c".into()])
        );
        // Repeated at t0 + REPEAT: held until then + HOLD, and no longer.
        let mut s = snapshot(&listed, &[]);
        assert_eq!(memory.mark(&mut s, t0 + REPEAT + HOLD - REPEAT / 10), 1);
        let mut s = snapshot(&listed, &[]);
        assert_eq!(memory.mark(&mut s, t0 + REPEAT + HOLD), 0);
        assert!(s.stopping_names().is_empty());
        assert_eq!(memory.held(t0 + REPEAT + HOLD), 0);
        // Heard again after it lapsed: new again.
        assert_eq!(memory.heard(&["web.2.b"], known, t0 + 10 * HOLD), 1);
    }

    fn with_mesh(mut snapshot: Snapshot, own: &str, peer: &str) -> Snapshot {
        snapshot.data_addr = Some(own.parse().unwrap());
        snapshot.peers = [own.parse().unwrap(), peer.parse().unwrap()].into();
        snapshot
    }

    /// A node tells its own knowledge only, and what it knows now: what it heard is marked
    /// apart (two nodes never keep each other's marks alive), a task no longer stopping is
    /// no longer told, and nothing is told while its view does not hold.
    #[tokio::test]
    async fn a_node_tells_what_it_knows_now_and_not_what_it_heard() {
        let mut notices = Notices::default();
        notices.heard.heard(&["web.2.b"], |_| true, Instant::now());
        let listed = ["web.1.a", "web.2.b", "web.3.c"];
        let s = snapshot(&listed, &["web.1.a", "web.3.c"]);
        notices.exchange(&s, true).await;
        assert_eq!(
            notices.word,
            BTreeSet::from(["web.1.a".into(), "web.3.c".into()])
        );
        assert_eq!(notices.marked(&s).stopping_names().len(), 3);
        assert_eq!(notices.status().held, 1);
        // No mesh address yet: not listening, nothing sent, nothing wrong.
        let st = notices.status().clone();
        assert_eq!((st.listening, st.sent, st.error), (None, 0, None));
        // web.1.a started again: the repeats name web.3.c only.
        notices
            .exchange(&snapshot(&listed, &["web.3.c"]), true)
            .await;
        assert_eq!(notices.word, BTreeSet::from(["web.3.c".into()]));
        // A view that does not hold (after an outage), or an Engine away: nothing told.
        notices
            .exchange(&snapshot(&listed, &["web.3.c"]), false)
            .await;
        assert!(notices.word.is_empty() && notices.told.is_none());
        notices
            .exchange(&snapshot(&listed, &["web.3.c"]), true)
            .await;
        notices.hush();
        assert!(notices.word.is_empty() && notices.told.is_none());
    }

    /// Two nodes on loopback addresses: one's word reaches the other, which marks the task;
    /// a datagram from another port of a peer's address is refused.
    #[tokio::test]
    async fn a_peers_word_crosses_the_socket_and_others_are_refused() {
        // Addresses of this process's own (two test processes never share the port).
        let third = std::process::id() % 250 + 1;
        let (a, b) = (format!("127.77.{third}.2"), format!("127.77.{third}.3"));
        let (a, b) = (a.as_str(), b.as_str());
        let listed = ["web.1.a", "web.2.b"];
        let mut teller = Notices::default();
        let mut hearer = Notices::default();
        hearer
            .exchange(&with_mesh(snapshot(&listed, &[]), b, a), true)
            .await;
        assert_eq!(
            hearer.status().listening,
            Some(SocketAddr::new(b.parse().unwrap(), tunnel::PORT)),
            "{:?}",
            hearer.status().error
        );
        teller
            .exchange(&with_mesh(snapshot(&listed, &["web.2.b"]), a, b), true)
            .await;
        assert_eq!(teller.status().sent, 1, "{:?}", teller.status());
        let attended = tokio::time::timeout(Duration::from_secs(5), hearer.attend())
            .await
            .expect("the notice arrives");
        assert_eq!(attended, Attended::MarksChanged);
        let marked = hearer.marked(&snapshot(&listed, &[]));
        assert_eq!(marked.stopping_names(), BTreeSet::from(["web.2.b".into()]));

        let stranger = std::net::UdpSocket::bind((a, 0)).unwrap();
        stranger
            .send_to(b"\x00ms\x01\x07web.1.a", (b, tunnel::PORT))
            .unwrap();
        let attended = tokio::time::timeout(Duration::from_secs(5), hearer.attend())
            .await
            .expect("the datagram arrives");
        assert_eq!(attended, Attended::Nothing);
        assert_eq!((hearer.status().heard, hearer.status().refused), (1, 1));
    }

    /// A held name lapsing wakes `attend` once (the marks change), not again.
    #[tokio::test]
    async fn a_lapsed_name_wakes_attend_once() {
        let mut notices = Notices::default();
        notices
            .heard
            .heard(&["web.2.b"], |_| true, Instant::now() - HOLD);
        let attended = tokio::time::timeout(Duration::from_secs(1), notices.attend()).await;
        assert_eq!(attended, Ok(Attended::MarksChanged));
        let again = tokio::time::timeout(Duration::from_millis(200), notices.attend()).await;
        assert!(again.is_err(), "woke again: {again:?}");
        assert_eq!(notices.status().held, 0);
    }
}
