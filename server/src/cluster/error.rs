//! Why the cluster link could not be set up, and whether trying again
//! may help.

/// Why the cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {message}")]
pub struct ClusterError {
    message: String,
    /// A timeout: trying again may help.
    passing: bool,
}

impl ClusterError {
    /// An error that trying again does not mend.
    pub(crate) fn new(message: impl Into<String>) -> ClusterError {
        ClusterError {
            message: message.into(),
            passing: false,
        }
    }

    /// An error that may pass: NATS did not answer in time.
    pub(crate) fn passing(message: impl Into<String>) -> ClusterError {
        ClusterError {
            message: message.into(),
            passing: true,
        }
    }

    /// Whether trying again cannot help: NATS too old, without JetStream,
    /// with too few nodes for the replicas (not a timeout).
    pub(crate) fn is_lasting(&self) -> bool {
        !self.passing
    }
}
