//! The quiesce policy, applied in one place: what each setback means under
//! `required`, `preferred` and `off`.

use crate::request::Quiesce;

/// What went wrong with quiescing, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setback {
    /// Before anything changed: no agent, or it cannot freeze.
    AgentUnavailable,
    /// The freeze failed, and the guest is confirmed thawed; nothing switched.
    FreezeFailed,
    /// The disks switched, but not verifiably while frozen (late, or the thaw could
    /// not be verified); `interrupted` when the run was interrupted meanwhile.
    SwitchNotVerified {
        /// The run was interrupted (Ctrl-C, SIGTERM, SIGHUP).
        interrupted: bool,
    },
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Stop: nothing may change (or what changed is undone).
    Fail,
    /// Go on crash-consistent (take it, or keep it), and say so.
    CrashConsistent,
    /// Merge the switch back: the VM must end as it was.
    Undo,
}

/// The policy. `off` never reaches the first two (it does not freeze).
pub(crate) fn decide(policy: Quiesce, setback: Setback) -> Action {
    match (policy, setback) {
        (_, Setback::SwitchNotVerified { interrupted: true }) => Action::Undo,
        (Quiesce::Required, Setback::SwitchNotVerified { .. }) => Action::Undo,
        (_, Setback::SwitchNotVerified { .. }) => Action::CrashConsistent,
        (Quiesce::Required, _) => Action::Fail,
        (Quiesce::Preferred | Quiesce::Off, _) => Action::CrashConsistent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_fails_or_undoes_preferred_goes_on_crash_consistent_interrupt_undoes() {
        use Action::*;
        use Setback::*;
        let late = SwitchNotVerified { interrupted: false };
        let interrupted = SwitchNotVerified { interrupted: true };
        let table = [
            (Quiesce::Required, AgentUnavailable, Fail),
            (Quiesce::Required, FreezeFailed, Fail),
            (Quiesce::Required, late, Undo),
            (Quiesce::Required, interrupted, Undo),
            (Quiesce::Preferred, AgentUnavailable, CrashConsistent),
            (Quiesce::Preferred, FreezeFailed, CrashConsistent),
            (Quiesce::Preferred, late, CrashConsistent),
            (Quiesce::Preferred, interrupted, Undo),
            (Quiesce::Off, late, CrashConsistent),
            (Quiesce::Off, interrupted, Undo),
        ];
        for (policy, setback, action) in table {
            assert_eq!(decide(policy, setback), action, "{policy:?} {setback:?}");
        }
    }
}
