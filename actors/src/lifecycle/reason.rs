use std::fmt;

/// Why a session ended. Every `SessionEndEvent` carries exactly one.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The owner (or an operator) closed it.
    Closed,
    /// Every handle to it was dropped: the client went away.
    Disconnected,
    /// No activity for longer than its idle timeout.
    IdleTimeout,
    /// Its absolute time to live ran out.
    TtlExpired,
    /// Ended to make room (GPU memory pressure or the session limit).
    Evicted,
    /// The runtime shut down.
    Shutdown,
    /// Its actor died without ending it (a panic inside a handler).
    Crashed,
    /// A lease on it stopped heartbeating and the session was forced to end.
    LeaseLost,
    /// The cluster node that owned it stopped heartbeating and was fenced off:
    /// another node declared the session ended (see the `redis` feature of `sessionbus`).
    NodeLost,
    /// The GPU device holding its memory was lost (driver reset, device
    /// removed); its buffers are gone with the device.
    DeviceLost,
}

impl EndReason {
    /// Every reason, in declaration order (for reports that list them all).
    pub const ALL: [EndReason; 10] = [
        EndReason::Closed,
        EndReason::Disconnected,
        EndReason::IdleTimeout,
        EndReason::TtlExpired,
        EndReason::Evicted,
        EndReason::Shutdown,
        EndReason::Crashed,
        EndReason::LeaseLost,
        EndReason::NodeLost,
        EndReason::DeviceLost,
    ];

    /// The stable snake_case name used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Disconnected => "disconnected",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::TtlExpired => "ttl_expired",
            EndReason::Evicted => "evicted",
            EndReason::Shutdown => "shutdown",
            EndReason::Crashed => "crashed",
            EndReason::LeaseLost => "lease_lost",
            EndReason::NodeLost => "node_lost",
            EndReason::DeviceLost => "device_lost",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
