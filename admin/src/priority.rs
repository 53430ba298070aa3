//! Scheduling priority of the admin thread. A switch or rollback is a few
//! hundred microseconds of work, but on a box whose CPUs are saturated by
//! the proxy's own traffic each wake-up of the admin thread (request
//! arrives, the journal's `fdatasync` returns) waits its turn behind the busy
//! workers; that queueing, not the work, made the flip tail.
//!
//! A better nice value alone does not remove it on current kernels: EEVDF
//! lets the running task finish its slice before a woken one runs, and with
//! a 250 Hz tick that is milliseconds per wake-up whatever the weights. So
//! the admin thread asks for `SCHED_FIFO` priority 1 (the lowest real-time
//! priority), which runs it as soon as it wakes, with `SCHED_RESET_ON_FORK`
//! so that check commands, retire hooks and any thread it starts run at
//! normal priority. It is idle almost always; the kernel's real-time
//! throttling (95% of each second by default) bounds it even if it were not.
//! Without `CAP_SYS_NICE` it falls back to the nice value, and without that
//! to normal priority, with one warning.

use std::cell::Cell;

thread_local! {
    static SET: Cell<bool> = const { Cell::new(false) };
}

/// How the admin thread asks to be scheduled (`[admin] realtime`, `[admin] nice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminPriority {
    /// Try `SCHED_FIFO` priority 1 first.
    pub realtime: bool,
    /// Nice value otherwise (0: leave it alone).
    pub nice: i32,
}

impl Default for AdminPriority {
    fn default() -> Self {
        Self { realtime: true, nice: -10 }
    }
}

/// What [`prioritise_current_thread`] obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// `SCHED_FIFO` priority 1, reset on fork.
    Realtime,
    /// The requested nice value.
    Nice(i32),
    /// Nothing was asked for, or nothing could be set.
    Unchanged,
}

/// Applies `want` to the calling thread the first time it is called on that
/// thread; later calls return `None` and change nothing.
pub fn prioritise_current_thread(want: AdminPriority) -> Option<Obtained> {
    if SET.replace(true) {
        return None;
    }
    let mut refused = Vec::new();
    if want.realtime {
        match set_fifo_reset_on_fork() {
            Ok(()) => {
                log::info!("admin thread runs SCHED_FIFO priority 1 (children reset to normal)");
                return Some(Obtained::Realtime);
            }
            Err(e) => refused.push(format!("SCHED_FIFO ({e})")),
        }
    }
    if want.nice != 0 {
        let tid = rustix::thread::gettid();
        match rustix::process::setpriority_process(Some(tid), want.nice) {
            Ok(()) => {
                if !refused.is_empty() {
                    log::warn!("admin thread: {} refused; runs at nice {} instead", refused.join(", "), want.nice);
                } else {
                    log::info!("admin thread runs at nice {}", want.nice);
                }
                return Some(Obtained::Nice(want.nice));
            }
            Err(e) => refused.push(format!("nice {} ({e})", want.nice)),
        }
    }
    if !refused.is_empty() {
        log::warn!(
            "admin thread: {} refused; flips stay correct but may be slower under heavy load \
             (grant CAP_SYS_NICE, or set [admin] realtime = false and nice = 0 to silence this)",
            refused.join(", ")
        );
    }
    Some(Obtained::Unchanged)
}

/// `sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, {priority 1})`
/// for the calling thread (neither rustix nor nix wraps it).
#[allow(unsafe_code)]
fn set_fifo_reset_on_fork() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid, initialised
    // sched_param that outlives the call, which only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field `n` (1-based, as in proc(5)) of /proc/`pid`/task/`tid`/stat.
    fn stat_field(path: &str, n: usize) -> i64 {
        let stat = std::fs::read_to_string(path).unwrap();
        // fields after the parenthesised command name, which may contain spaces
        stat.rsplit_once(')').unwrap().1.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
    }

    fn policy_of(path: &str) -> i64 {
        stat_field(path, 41)
    }

    #[test]
    fn realtime_when_permitted_children_run_normally_else_nice() {
        std::thread::spawn(|| {
            let me = format!("/proc/self/task/{}/stat", rustix::thread::gettid().as_raw_nonzero());
            let main = format!("/proc/self/task/{}/stat", rustix::process::getpid().as_raw_nonzero());
            let main_before = (policy_of(&main), stat_field(&main, 19));
            // nice 19: the one value any process may always take, whatever nice it runs at
            let got = prioritise_current_thread(AdminPriority { realtime: true, nice: 19 }).unwrap();
            match got {
                Obtained::Realtime => {
                    assert_eq!(policy_of(&me), libc::SCHED_FIFO as i64);
                    // a child started from this thread is back to SCHED_OTHER
                    let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
                    let policy = policy_of(&format!("/proc/{}/stat", child.id()));
                    child.kill().unwrap();
                    child.wait().unwrap();
                    assert_eq!(policy, libc::SCHED_OTHER as i64);
                }
                // unprivileged: a worse nice value is always allowed
                other => {
                    assert_eq!(other, Obtained::Nice(19));
                    assert_eq!(stat_field(&me, 19), 19);
                }
            }
            // the process's other threads are untouched
            assert_eq!((policy_of(&main), stat_field(&main, 19)), main_before);
            // once per thread: later calls do nothing
            assert_eq!(prioritise_current_thread(AdminPriority { realtime: false, nice: 7 }), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn nothing_asked_nothing_changed() {
        std::thread::spawn(|| {
            let me = format!("/proc/self/task/{}/stat", rustix::thread::gettid().as_raw_nonzero());
            let before = (policy_of(&me), stat_field(&me, 19));
            assert_eq!(prioritise_current_thread(AdminPriority { realtime: false, nice: 0 }), Some(Obtained::Unchanged));
            assert_eq!((policy_of(&me), stat_field(&me, 19)), before);
        })
        .join()
        .unwrap();
    }
}
