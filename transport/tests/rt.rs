//! `transport::rt` in a process of its own: `block_on` switches every `spawn` of the process
//! to its thread while it runs, which would move other tests' tasks too.

use transport::rt::{block_on, spawn};

#[test]
fn tasks_spawned_under_block_on_run_on_its_thread_and_elsewhere_after() {
    let here = std::thread::current().id();
    let (on, nested) = block_on(async {
        let on = spawn(async { std::thread::current().id() }).await;
        let nested = spawn(async { spawn(async { std::thread::current().id() }).await });
        (on, nested.await)
    });
    assert_eq!(on, here);
    assert_eq!(nested, here);
    // Without block_on a task runs on smol's own thread, and still runs.
    let there = smol::block_on(spawn(async { std::thread::current().id() }));
    assert_ne!(there, here);
    // A block_on that panics leaves spawn as it found it.
    let panicked = std::panic::catch_unwind(|| block_on(async { panic!("on purpose") }));
    assert!(panicked.is_err());
    let there = smol::block_on(spawn(async { std::thread::current().id() }));
    assert_ne!(
        there, here,
        "spawn still goes to smol's thread after a panic"
    );
}
