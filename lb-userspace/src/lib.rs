//! The meshlb daemon and CLI as a library. Layers, each using only those before it:
//!
//! 1. [`source`]: what to serve, as given: the service file and its `lbd:` settings, what the
//!    admin API was told, and the swarm. Pure.
//! 2. [`plan`]: the exact kernel map contents for those services on this node (selection
//!    tables, kernel ids, frontends). Pure.
//! 3. [`dataplane`]: the loaded kernel programs; writes the difference between two plans.
//!    [`announce`]: the plan's VIPs, announced to the router through BIRD.
//! 4. [`api`]: the admin API's wire types, and its client.
//! 5. [`daemon`] ties 1-3 together (every change goes through one commit); [`metrics`]
//!    renders its counters.
//! 6. [`control`]: lbd's event loop, the admin API server and the metrics endpoint;
//!    [`cleanup`]: meshlb off a node (`lbd cleanup`).
//!
//! The binaries `lbd` and `lbctl` are thin layers over these.
pub mod announce;
pub mod api;
pub mod cleanup;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod error_text;
pub mod metrics;
pub mod plan;
pub mod source;
