//! The meshlb daemon and CLI as a library. Layers, each using only those before it:
//!
//! 1. [`source`]: what to serve, as given: the service file and its `lbd:` settings, and what
//!    the admin API was told. Pure.
//! 2. [`plan`]: the exact kernel map contents for those services on this node (selection
//!    tables, kernel ids, frontends). Pure.
//! 3. [`dataplane`]: the loaded kernel programs; writes the difference between two plans.
//! 4. [`daemon`] ties them together (every change goes through one commit), [`api`] serves
//!    it and [`metrics`] reports it. The binaries `lbd` and `lbctl` are thin layers over these.
pub mod api;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod plan;
pub mod source;
