//! The pieces of the meshlb daemon and CLI: the service file (`config`, `settings`), what the
//! API was told (`overlay`), selection tables (`select`), the plan of kernel map contents
//! (`reconcile`), the loaded programs (`dataplane`), the daemon's state (`daemon`), the admin
//! API (`api`) and Prometheus metrics (`metrics`). The binaries `lbd` and `lbctl` are thin layers over these.
pub mod api;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod overlay;
pub mod reconcile;
pub mod select;
pub mod settings;
// Test support; also compiled for this crate's own unit tests.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
