//! The words every component shares about an instance: its [`Status`] and the [`Action`]s a
//! caller may take on it. The processor writes them in state records and API views, the
//! projector indexes them, the CLI and the console read them: each is defined here once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Its word on the wire, in URLs and in state records.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }

            /// Every word, for help texts and error messages.
            pub fn words() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    format!("no {} {s:?}: one of {}", stringify!($name).to_lowercase(), Self::words().join(", "))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// Where an instance stands, as state records, the API, the CLI and the console say it.
    Status {
        /// An orchestration that runs (or waits).
        Running = "running",
        /// An orchestration not started yet that has events raised on it (they wait for its start).
        Pending = "pending",
        /// An orchestration an operator suspended: events are held until it resumes.
        Suspended = "suspended",
        /// An orchestration that returned its output.
        Completed = "completed",
        /// An orchestration that failed.
        Failed = "failed",
        /// An orchestration an operator terminated.
        Terminated = "terminated",
        /// An entity with state.
        Active = "active",
        /// An entity whose state was deleted.
        Deleted = "deleted",
        /// An instance that was purged (only in state records: its tombstone).
        Purged = "purged",
    }
}

impl Status {
    /// The statuses an instance can be listed or counted by (a purged one is gone).
    pub const LISTED: [Status; 8] = [
        Status::Running,
        Status::Pending,
        Status::Suspended,
        Status::Completed,
        Status::Failed,
        Status::Terminated,
        Status::Active,
        Status::Deleted,
    ];

    /// Whether an orchestration in this status has finished: it runs no more code until an
    /// operator restarts or rewinds it.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Terminated)
    }

    /// The actions a caller may take on an instance in this status now (what the API's
    /// instance view lists and the console offers; the engine decides again when it applies).
    pub fn actions(self) -> &'static [Action] {
        use Action::*;
        match self {
            Status::Running => &[Raise, Suspend, Terminate],
            Status::Suspended => &[Raise, Resume, Terminate],
            Status::Pending => &[Raise, Purge],
            Status::Failed => &[Rewind, Restart, Purge],
            Status::Completed | Status::Terminated => &[Restart, Purge],
            Status::Active | Status::Deleted => &[Signal, Purge],
            Status::Purged => &[],
        }
    }
}

words! {
    /// What a caller may do to an instance. The operator actions ([`Action::is_operator`]) are
    /// `POST /v1/instances/{id}/{action}` and `POST /v1/batch/{action}`; `raise` and `signal`
    /// have their own paths (they name an event or an operation).
    Action {
        /// Raise an event on an orchestration (`/v1/instances/{id}/events/{event}`).
        Raise = "raise",
        /// Signal an entity (`/v1/entities/{name}/{key}/{operation}`).
        Signal = "signal",
        /// Hold a running orchestration's events until it resumes.
        Suspend = "suspend",
        /// Resume a suspended orchestration.
        Resume = "resume",
        /// End a running or suspended orchestration.
        Terminate = "terminate",
        /// Delete an instance's record (and its index entries).
        Purge = "purge",
        /// Run a failed orchestration again from where it failed.
        Rewind = "rewind",
        /// Start a finished orchestration again with its input.
        Restart = "restart",
    }
}

impl Action {
    /// The operator actions: one path each under an instance, and batchable.
    pub const OPERATOR: [Action; 6] =
        [Action::Terminate, Action::Suspend, Action::Resume, Action::Purge, Action::Restart, Action::Rewind];

    /// Whether it is an operator action (see [`Action::OPERATOR`]).
    pub fn is_operator(self) -> bool {
        Self::OPERATOR.contains(&self)
    }

    /// Whether its body takes a `reason` (a restart starts over and says none).
    pub fn takes_reason(self) -> bool {
        self.is_operator() && self != Action::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_say_the_choices() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
            assert_eq!(serde_json::from_value::<Action>(a.as_str().into()).unwrap(), *a);
        }
        let e = "halt".parse::<Action>().unwrap_err();
        assert!(e.contains("no action \"halt\"") && e.contains("terminate"), "{e}");
    }

    #[test]
    fn finished_orchestrations_offer_restart_and_live_ones_do_not() {
        for s in Status::LISTED {
            assert_eq!(s.actions().contains(&Action::Restart), s.is_finished(), "{s}");
            assert!(s.actions().contains(&Action::Purge) || matches!(s, Status::Running | Status::Suspended), "{s}");
        }
        assert!(Action::OPERATOR.iter().all(|a| a.is_operator()));
        assert!(!Action::Raise.is_operator() && !Action::Restart.takes_reason() && Action::Purge.takes_reason());
    }
}
