//! Scheduling priority of the admin thread. A switch or rollback is a few
//! hundred microseconds of work, but on a box whose CPUs are saturated by
//! the proxy's own traffic each wake-up of the admin thread (request
//! arrives, fsync returns) waits its turn behind the busy workers; that
//! queueing, not the work, made the flip tail. The admin thread is idle
//! almost always, so giving it a better nice value costs the data path
//! nothing measurable and makes flips prompt under load.

use std::cell::Cell;

thread_local! {
    static SET: Cell<bool> = const { Cell::new(false) };
}

/// Sets the calling thread's nice value to `nice` the first time it is
/// called on that thread (0: leave it alone). Raising priority needs
/// `CAP_SYS_NICE` (or `RLIMIT_NICE`); without it canopy logs a warning once
/// and runs at normal priority.
pub fn prioritise_current_thread(nice: i32) {
    if nice == 0 || SET.replace(true) {
        return;
    }
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), nice) {
        Ok(()) => log::info!("admin thread runs at nice {nice}"),
        Err(e) => log::warn!(
            "could not set the admin thread to nice {nice} ({e}); flips stay correct but may be slower \
             under heavy load (grant CAP_SYS_NICE, raise RLIMIT_NICE, or set [admin] nice = 0 to silence this)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_this_thread_only_and_only_once() {
        std::thread::spawn(|| {
            let me = Some(rustix::thread::gettid());
            let main = Some(rustix::process::getpid()); // the main thread's id
            let before = rustix::process::getpriority_process(me).unwrap();
            let main_before = rustix::process::getpriority_process(main).unwrap();
            // a worse priority is always allowed, so this works unprivileged too
            let target = (before + 3).min(19);
            prioritise_current_thread(target);
            assert_eq!(rustix::process::getpriority_process(me).unwrap(), target);
            // the process's other threads are untouched
            assert_eq!(rustix::process::getpriority_process(main).unwrap(), main_before);
            // once per thread: later calls do nothing
            prioritise_current_thread(before);
            assert_eq!(rustix::process::getpriority_process(me).unwrap(), target);
        })
        .join()
        .unwrap();
    }
}
