//! `aya::Pod` for every map type, in one place (userspace only).

use crate::{
    Addr,
    maps::{
        Backend, EndpointKey, Flow, FlowKey, ReplyFrontend, Service, SockCounters, SockPeer,
        SockReverse, SockReverseKey, TrafficCounters,
    },
    traffic::{FloorConfig, GenConfig, SinkSlot},
};

// SAFETY: all are #[repr(C)], Copy, and have no implicit padding (sizes asserted in maps.rs).
unsafe impl aya::Pod for Addr {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for Service {}
unsafe impl aya::Pod for ReplyFrontend {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for Flow {}
unsafe impl aya::Pod for TrafficCounters {}
unsafe impl aya::Pod for GenConfig {}
unsafe impl aya::Pod for SinkSlot {}
unsafe impl aya::Pod for FloorConfig {}
unsafe impl aya::Pod for SockReverseKey {}
unsafe impl aya::Pod for SockReverse {}
unsafe impl aya::Pod for SockPeer {}
unsafe impl aya::Pod for SockCounters {}
