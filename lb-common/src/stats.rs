//! Global per-CPU counters: one slot per path a packet can take. This enum is the only
//! source of the slot indices and of their metric label names.

macro_rules! stat_slots {
    ($($(#[$doc:meta])* $variant:ident = $label:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum StatSlot { $($(#[$doc])* $variant,)* }

        impl StatSlot {
            pub const ALL: &'static [StatSlot] = &[$(StatSlot::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The label value used in metrics and `lbctl stats`.
            pub const fn label(self) -> &'static str {
                match self { $(StatSlot::$variant => $label,)* }
            }
        }
    };
}

stat_slots! {
    /// Every packet the XDP program saw.
    Rx = "rx",
    /// Not IP, not TCP/UDP, or not addressed to a frontend or from a backend: passed untouched.
    PassNotFrontend = "pass_not_frontend",
    /// Headers shorter than they claim or otherwise unparseable: passed untouched.
    PassMalformed = "pass_malformed",
    /// IP fragments: passed untouched (no port to balance on).
    PassFragment = "pass_fragment",
    /// IPv4 packets with options: passed untouched.
    PassIpOptions = "pass_ip_options",
    /// Rewritten toward a backend (client to backend).
    NatForward = "nat_forward",
    /// Rewritten back to the frontend (backend to client).
    NatReply = "nat_reply",
    /// New flows started (a backend was chosen).
    NewFlow = "new_flow",
    /// Sent with XDP_REDIRECT to a device that takes XDP frames.
    TxXdpRedirect = "tx_xdp_redirect",
    /// Passed to the kernel with metadata; the TC program forwards it with bpf_redirect_neigh.
    TxViaTc = "tx_via_tc",
    /// The FIB says the destination is local: passed to the kernel's own stack.
    TxLocal = "tx_local",
    /// TC program: forwarded a packet the XDP program handed over.
    TcRedirectNeigh = "tc_redirect_neigh",
    /// TC program: bpf_redirect_neigh refused the packet.
    TcRedirectFailed = "tc_redirect_failed",
    /// Dropped: the service has no usable backend.
    DropNoBackend = "drop_no_backend",
    /// Dropped: no route to the backend or client.
    DropFibFailed = "drop_fib_failed",
    /// Dropped: the connection table refused an insert.
    DropConntrackFull = "drop_conntrack_full",
    /// Dropped: a mid-flow TCP packet for which no flow is tracked.
    DropNoFlow = "drop_no_flow",
    /// Dropped: bpf_xdp_adjust_meta failed, so the packet could not be handed to TC.
    DropMetaFailed = "drop_meta_failed",
}
