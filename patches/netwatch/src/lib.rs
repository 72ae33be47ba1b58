//! Networking related utilities

pub mod interfaces;
pub mod ip;
mod ip_family;
pub mod netmon;
#[cfg(not(wasm_browser))]
// SAM (not for upstream): as a path dependency this crate's warnings are not capped as a
// registry crate's are; noq-udp deprecated `send` after netwatch 0.19.3 was published.
#[allow(deprecated)]
mod udp;

pub use self::ip_family::IpFamily;
#[cfg(not(wasm_browser))]
pub use self::udp::{UdpSender, UdpSocket};
