//! Where a node's tasks run: one thread that runs them and waits on the sockets itself.
//!
//! `smol::spawn` puts tasks on a global executor with a thread of its own, while the thread in
//! `smol::block_on` (or async-io's reactor thread) waits on the sockets. So every socket that
//! became ready wakes one thread to wake another: two context switches per readable socket.
//! A leaf in a swarm of a hundred gets hundreds of such events a second, and a hundred leaves
//! on two cores spent more time switching than moving bytes (bench case 6).
//!
//! [`block_on`] runs a node's main future on the calling thread together with every task
//! [`spawn`]ed while it runs; when all are waiting, the same thread waits on the sockets. This
//! is the single-threaded event loop that aria2c and most BitTorrent clients run. Blocking
//! work still goes to `smol::unblock`.
//!
//! Before (and without) [`block_on`], as in tests, [`spawn`] is `smol::spawn`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use smol::{Executor, Task};

/// The executor [`block_on`] runs.
static EXECUTOR: Executor<'static> = Executor::new();

/// Whether [`block_on`] runs [`EXECUTOR`].
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Spawns `future` on the node's thread when [`block_on`] runs one, else on smol's global
/// executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    if RUNNING.load(Ordering::Acquire) {
        EXECUTOR.spawn(future)
    } else {
        smol::spawn(future)
    }
}

/// Runs `future` to its end on this thread, with every task [`spawn`]ed meanwhile. For a
/// binary's `main`; not to be called from a task.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    RUNNING.store(true, Ordering::Release);
    let out = smol::block_on(EXECUTOR.run(future));
    RUNNING.store(false, Ordering::Release);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spawned_under_block_on_run_on_its_thread() {
        let here = std::thread::current().id();
        let (on, after) = block_on(async {
            let on = spawn(async { std::thread::current().id() }).await;
            let nested = spawn(async { spawn(async { std::thread::current().id() }).await });
            (on, nested.await)
        });
        assert_eq!(on, here);
        assert_eq!(after, here);
        // Without block_on a task runs elsewhere, and still runs.
        let there = smol::block_on(spawn(async { std::thread::current().id() }));
        assert_ne!(there, here);
    }
}
