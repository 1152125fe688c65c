//! Errors with kinds: what a driver does about a failure depends on its kind, not its text.
//!
//! Commit conflicts are not errors: a lost compare-and-set is a
//! [`CommitOutcome::Conflict`](crate::store::CommitOutcome), and the partition core reruns the
//! instance.

use std::fmt;

/// What to do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store or the broker did not answer (or refused for now): back off, retry the group,
    /// do not store its offsets.
    Transient,
    /// Input or stored data that can never be applied: dead-letter it with the reason and go on.
    Corrupt,
    /// This worker cannot go on (its partition was taken away, its configuration is wrong): stop
    /// it; the partition's next owner redoes what was not acknowledged.
    Fatal,
    /// The store lost writes under this owner (rolled back, failed over to a replica that
    /// lagged): process nothing more of the partition until an operator accepts the loss.
    Lost {
        /// The applied mark the store holds now (`None`: none).
        found: Option<i64>,
    },
}

/// A failure, with its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What to do about it.
    pub kind: ErrorKind,
    /// What happened (and, where it helps, what to check).
    pub message: String,
}

impl Error {
    /// A [`ErrorKind::Transient`] error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Transient, message: message.into() }
    }

    /// A [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Corrupt, message: message.into() }
    }

    /// A [`ErrorKind::Lost`] error: the store holds `found` as its applied mark.
    pub fn lost(found: Option<i64>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Lost { found }, message: message.into() }
    }

    /// A [`ErrorKind::Fatal`] error.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Fatal, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        match e.kind {
            crate::store::StoreErrorKind::Misconfigured => Self::fatal(e.to_string()),
            crate::store::StoreErrorKind::Unavailable | crate::store::StoreErrorKind::Malformed => {
                Self::transient(e.to_string())
            }
        }
    }
}
