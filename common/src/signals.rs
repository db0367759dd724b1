//! Process signals: SIGTERM/SIGINT as one "shut down" future, SIGHUP as a stream of reload
//! requests. Handlers are installed when these functions return (not at the first poll), so a
//! signal sent right after start-up is never lost to the default action.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installs SIGTERM and SIGINT handlers now; the returned future resolves on either. If they
/// cannot be installed it falls back to Ctrl-C (logged).
pub fn termination() -> impl Future<Output = ()> + Send + 'static {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot install SIGTERM/SIGINT handlers; using Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// SIGHUPs, one item per signal (several quick ones may arrive as one).
#[derive(Debug)]
pub struct Hangups(Signal);

impl Hangups {
    /// The next SIGHUP; `None` once no more can arrive.
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

/// Installs a SIGHUP handler now.
pub fn hangups() -> std::io::Result<Hangups> {
    signal(SignalKind::hangup()).map(Hangups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{raise, Signal as Sig};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// One test for both signals: a raised SIGTERM reaches every listener in the process, so
    /// parallel tests would see each other's.
    #[tokio::test]
    async fn sigterm_and_sigint_end_the_termination_future_even_before_its_first_poll() {
        let quiet = tokio::time::timeout(Duration::from_millis(50), termination()).await;
        assert!(quiet.is_err(), "resolved without a signal");
        for sig in [Sig::SIGTERM, Sig::SIGINT] {
            let done = termination();
            // Sent before the future is polled: the handler is already in place.
            raise(sig).expect("raise");
            tokio::time::timeout(WAIT, done)
                .await
                .unwrap_or_else(|_| panic!("{sig} did not end the termination future"));
        }
    }

    #[tokio::test]
    async fn each_sighup_is_one_item() {
        let mut hups = hangups().expect("SIGHUP handler");
        for _ in 0..2 {
            raise(Sig::SIGHUP).expect("raise");
            let got = tokio::time::timeout(WAIT, hups.recv()).await;
            assert_eq!(got.expect("a SIGHUP arrives"), Some(()));
        }
    }
}
