//! Stopping on request: [`StopSignals`] waits for SIGTERM (what systemd, `kill` and container
//! runtimes send) or SIGINT (Ctrl-C), so a node can close its links and keep what it verified
//! instead of dying mid-write.

use std::io;

use async_signal::{Signal, Signals};
use smol::stream::StreamExt;

/// SIGTERM and SIGINT, caught from when this is made: until then they end the process at once.
pub struct StopSignals(Signals);

impl StopSignals {
    /// Catches SIGTERM and SIGINT from now on.
    pub fn catch() -> io::Result<StopSignals> {
        Signals::new([Signal::Term, Signal::Int]).map(StopSignals)
    }

    /// Waits for the next one; its name ("SIGTERM" or "SIGINT").
    pub async fn next(&mut self) -> &'static str {
        loop {
            match self.0.next().await {
                Some(Ok(Signal::Term)) => return "SIGTERM",
                Some(Ok(Signal::Int)) => return "SIGINT",
                Some(_) => continue,
                None => return smol::future::pending().await,
            }
        }
    }
}
