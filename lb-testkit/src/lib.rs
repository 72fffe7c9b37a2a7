//! Test kit for the end-to-end tests, the demo and the benchmarks: network
//! namespaces joined by veths and a bridge, servers that say who they are and whom they saw,
//! and clients that make requests from inside a namespace. Everything needs root.
//!
//! ```text
//!  client ns (mlb-client-…)          node ns (mlb-node-…): lbd runs here
//! ┌──────────────────────┐         ┌───────────────────────────────────────────┐
//! │ eth0                 │  veth   │ mlb-cli                                   │
//! │ 198.18.1.2/24        ├─────────┤ 198.18.1.1/24                             │
//! │ fd00:1::2/64         │         │ fd00:1::1/64                              │
//! │ default via .1.1 /   │         │                                           │
//! │   fd00:1::1          │         │ mlb-br0 (bridge) 198.18.2.1/24            │
//! └──────────────────────┘         │                  fd00:2::1/64             │
//!                                  │   ports: mlb-b0   mlb-b1   …   mlb-bN     │
//!                                  │ ip_forward=1, ipv6 forwarding=1,          │
//!                                  │ rp_filter=0                               │
//!                                  └─────┬────────┬──────────────┬─────────────┘
//!                                   veth │   veth │              │ veth
//!                              ┌─────────┴──┐ ┌───┴────────┐ ┌───┴────────┐
//!  backend i ns (mlb-b{i}-…)   │ eth0       │ │ eth0       │ │ eth0       │
//!  name "backend-{i}"          │ .2.10/24   │ │ .2.11/24   │ │ .2.(10+N)  │
//!  default via 198.18.2.1 /    │ fd00:2::a  │ │ fd00:2::b  │ │ fd00:2::…  │
//!    fd00:2::1                 └────────────┘ └────────────┘ └────────────┘
//! ```
//!
//! Address plan (only 198.18.0.0/15 and fd00::/8, never anything else):
//!
//! | what                         | IPv4             | IPv6              |
//! |------------------------------|------------------|-------------------|
//! | client (`eth0`)              | 198.18.1.2/24    | fd00:1::2/64      |
//! | node towards client (`mlb-cli`) | 198.18.1.1/24 | fd00:1::1/64      |
//! | node bridge (`mlb-br0`)      | 198.18.2.1/24    | fd00:2::1/64      |
//! | backend i (`eth0`)           | 198.18.2.(10+i)/24 | fd00:2::(10+i)/64 (hex: fd00:2::a for i = 0) |
//!
//! Every namespace is named `mlb-{role}-{pid}-{n}`, unique per process and across live
//! processes. Interfaces live only inside the namespaces, so their names can repeat across
//! topologies. IPv6 duplicate address detection is off in all of them.
//!
//! Lifetimes: a [`Topology`] (or [`Netns`]) deletes its namespaces when dropped, also during a
//! panic; a [`NameServer`] stops and closes its sockets when dropped; a [`ChildGuard`] kills
//! its process. Declare servers and processes after the topology so they are dropped first.
//!
//! ```no_run
//! use std::time::Duration;
//! use lb_testkit::{NameServer, Topology, tcp_request};
//!
//! # fn main() -> anyhow::Result<()> {
//! let topo = Topology::new(2)?;
//! let b0 = &topo.backends[0];
//! let _server = NameServer::start(&b0.ns, &b0.name, &[8080], &[8080])?;
//! let reply = tcp_request(&topo.client, b0.socket_addr4(8080), Duration::from_secs(2))?;
//! assert_eq!(reply.backend, "backend-0");
//! assert_eq!(reply.seen_ip, topo.client_addr(false));
//! # Ok(())
//! # }
//! ```

pub mod bird;
pub mod bulk;
pub mod capabilities;
pub mod cgroup;
pub mod client;
pub mod command;
pub mod frame_socket;
pub mod gate;
pub mod interrupt;
pub mod lbd;
pub mod netns;
pub mod packet;
pub mod progtest;
pub mod raw_bpf;
pub mod rng;
pub mod routing;
pub mod scratch;
pub mod servers;
pub mod sock_seen;
pub mod swarm;
pub mod topology;

pub use bird::{FakeBird, fake_bird};
pub use bulk::{EchoServer, Transfer, echo_transfer, segmented_echo};
pub use cgroup::TestCgroup;
pub use client::{
    REQUEST, Reply, ReplyLine, TcpSession, UdpSession, parse_reply, parse_reply_line, tcp_request,
    udp_request,
};
pub use gate::e2e_enabled;
pub use lbd::{FilledMap, Lbd, metrics};
pub use netns::{ChildGuard, EnterMode, NAME_PREFIX, Netns};
pub use scratch::ScratchPath;
pub use servers::{NameServer, Proto, Request, canonical_addr, canonical_ip};
pub use topology::{BackendHost, Topology};
