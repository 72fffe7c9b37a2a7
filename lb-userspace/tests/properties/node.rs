//! The node: one namespace, the program loaded as lbd loads it.

use super::*;

/// The shared program-test node (client side, backend side, neighbours resolved), plus
/// routes the FIB refuses, so replies to clients behind them are dropped and counted.
pub(crate) fn node() -> Netns {
    ProgNode::new(
        "prop",
        &[
            "route add blackhole 198.18.9.0/24".to_owned(),
            "route add unreachable 198.18.8.0/24".to_owned(),
        ],
    )
    .expect("node namespace")
    .ns
}

#[derive(Clone, Copy)]
pub(crate) struct Interfaces {
    pub(crate) client: u32,
    pub(crate) backend: u32,
    pub(crate) lo: u32,
    pub(crate) backend_mac: [u8; 6],
}

impl Interfaces {
    pub(crate) fn name(&self, ifindex: u32) -> &'static str {
        match ifindex {
            i if i == self.client => "lbc (client side)",
            i if i == self.backend => "lbb (backend side)",
            i if i == self.lo => "lo",
            _ => "?",
        }
    }
}
