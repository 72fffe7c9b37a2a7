//! Everything the meshlb kernel program and its userspace share: map keys and values, limits,
//! counter slots and the flow hash. Each fact is written once, here.
#![no_std]

pub mod addr;
pub mod conntrack_filter;
pub mod endpoint_filter;
pub mod hash;
pub mod limits;
pub mod maps;
pub mod stats;
pub mod traffic;

#[cfg(feature = "user")]
mod pod;

pub use addr::Addr;
