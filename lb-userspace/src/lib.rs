//! The pieces of the meshlb daemon and CLI: the service file (`config`), selection tables
//! (`select`), the plan of kernel map contents (`reconcile`) and the loaded programs
//! (`dataplane`). The binaries `lbd` and `lbctl` are thin layers over these.
pub mod config;
pub mod dataplane;
pub mod reconcile;
pub mod select;
// Test support; also compiled for this crate's own unit tests.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
