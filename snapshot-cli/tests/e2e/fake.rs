//! A simulated qemu-ga (`qsnap_tests::sim::SimAgent`) on its own socket beside a real
//! QEMU, for guests the rig cannot boot (Windows) and agents that misbehave on demand.
//! It follows qemu-ga's rules — one request at a time, a blocked freeze blocks
//! everything (even a sync), `0xFF` resets its parser — so a test cannot pass by
//! relying on what a real agent would never do.

use qsnap_tests::sim::SimAgent;
use std::path::Path;
use std::time::Duration;

/// How a simulated agent misbehaves.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Fake {
    /// The fsfreeze hook takes 3 s: nothing is answered meanwhile.
    SlowHook,
    /// A Windows guest whose VSS thaws by itself at once: the thaw then fails with its
    /// 10-second error.
    WindowsAutoThaw,
    /// A guest that stays frozen whatever the thaw says (it starts frozen).
    StuckFrozen,
    /// The freeze fails after freezing some filesystems, and the guest stays frozen
    /// whatever the thaw says.
    FreezeFailsAndSticks,
}

/// Starts the simulated agent at `path`.
pub(crate) async fn fake_agent(path: &Path, fake: Fake) -> SimAgent {
    let agent = SimAgent::start(path).await.unwrap();
    match fake {
        Fake::SlowHook => agent.set_freeze_hook(Duration::from_secs(3)),
        Fake::WindowsAutoThaw => {
            agent.set_windows(true);
            agent.set_vss_limit(Duration::ZERO);
        }
        Fake::StuckFrozen => {
            let client = qga::Client::connect(path, qga::Config::default())
                .await
                .unwrap();
            client
                .execute(&qga::commands::GuestFsfreezeFreeze)
                .await
                .unwrap();
            agent.stick_frozen(true);
        }
        Fake::FreezeFailsAndSticks => {
            agent.fail_freeze_partially(Some(
                "failed to freeze /data2: Device or resource busy".into(),
            ));
            agent.stick_frozen(true);
        }
    }
    agent
}
