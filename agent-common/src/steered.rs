//! `STEERED`: destinations whose connections are redirected to the node proxy.
//!
//! Key: the destination [`Endpoint`](crate::Endpoint) (ClusterIP or endpoint pod address, port).
//! Only services that currently have at least one fork are present, so every other `connect()`
//! pays one failed hash lookup.

pub const MAP_NAME: &str = "STEERED_V1";
pub const DEFAULT_MAX_ENTRIES: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteeredService {
    /// The agent's id for the service; 0 is "unnamed" (a `--steer` flag with no service).
    pub service_id: u32,
}

const _: () = assert!(core::mem::size_of::<SteeredService>() == 4);

#[cfg(feature = "user")]
// SAFETY: repr(C), one u32.
unsafe impl aya::Pod for SteeredService {}
