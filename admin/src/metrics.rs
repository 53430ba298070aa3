//! Control-plane metrics (switches, rollbacks, validation checks) and
//! process metrics, rendered with the data-plane counters on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use canopy_proxy::{Histogram, ReleaseName};

use crate::report::Report;

const RESULTS: [&str; 3] = ["ok", "refused", "failed"];

/// `(release, service, check, result)` labels of `canopy_validation_checks_total`.
type CheckKey = (String, String, String, &'static str);

/// Counters the controller updates (never on the request path).
pub struct ControlMetrics {
    switches: [AtomicU64; 3],
    rollbacks: [AtomicU64; 3],
    flip_duration: Histogram,
    last_flip_ms: AtomicU64,
    checks: Mutex<BTreeMap<CheckKey, u64>>,
}

fn idx(result: &str) -> usize {
    RESULTS.iter().position(|r| *r == result).unwrap_or(2)
}

impl ControlMetrics {
    /// New, zeroed counters.
    pub fn new() -> Self {
        Self {
            switches: Default::default(),
            rollbacks: Default::default(),
            flip_duration: Histogram::default(),
            last_flip_ms: AtomicU64::new(0),
            checks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts a switch outcome (`ok`, `refused`, `failed`).
    pub fn switch(&self, result: &str) {
        self.switches[idx(result)].fetch_add(1, Relaxed);
    }

    /// Counts a rollback outcome.
    pub fn rollback(&self, result: &str) {
        self.rollbacks[idx(result)].fetch_add(1, Relaxed);
    }

    /// Records a completed flip (validation + persist + publish).
    pub fn flipped(&self, d: Duration) {
        self.flip_duration.observe(d);
        self.last_flip_ms.store(crate::controller::now_ms(), Relaxed);
    }

    /// Counts every check result of a report.
    pub fn record_checks(&self, r: &Report) {
        let mut m = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        for c in &r.checks {
            let key = (r.release.to_string(), c.service.to_string(), c.check.clone(), if c.passed { "pass" } else { "fail" });
            *m.entry(key).or_default() += 1;
        }
    }

    /// Appends the control-plane families.
    pub fn render(&self, out: &mut String, live: Option<&ReleaseName>) {
        out.push_str("# HELP canopy_live_release_info The release serving traffic (value 1).\n# TYPE canopy_live_release_info gauge\n");
        if let Some(l) = live {
            let _ = writeln!(out, "canopy_live_release_info{{release=\"{l}\"}} 1");
        }
        for (name, help, arr) in [
            ("canopy_switches_total", "Switch attempts by result.", &self.switches),
            ("canopy_rollbacks_total", "Rollback attempts by result.", &self.rollbacks),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, r) in RESULTS.iter().enumerate() {
                let _ = writeln!(out, "{name}{{result=\"{r}\"}} {}", arr[i].load(Relaxed));
            }
        }
        out.push_str("# HELP canopy_switch_duration_seconds Validation plus flip time of successful switches and rollbacks.\n# TYPE canopy_switch_duration_seconds histogram\n");
        self.flip_duration.render(out, "canopy_switch_duration_seconds", "");
        out.push_str("# HELP canopy_last_switch_timestamp_seconds Unix time of the last successful flip (0 if none).\n# TYPE canopy_last_switch_timestamp_seconds gauge\n");
        let _ = writeln!(out, "canopy_last_switch_timestamp_seconds {}", self.last_flip_ms.load(Relaxed) as f64 / 1e3);
        out.push_str("# HELP canopy_validation_checks_total Validation check results.\n# TYPE canopy_validation_checks_total counter\n");
        let m = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        for ((rel, svc, check, result), n) in m.iter() {
            let check = check.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "canopy_validation_checks_total{{release=\"{rel}\",service=\"{svc}\",check=\"{check}\",result=\"{result}\"}} {n}"
            );
        }
    }
}

/// Appends the background watch's verdict on the warm previous release
/// (the rollback target), when there is one.
pub fn render_rollback_target(out: &mut String, watched: Option<(ReleaseName, bool)>) {
    out.push_str(
        "# HELP canopy_rollback_target_healthy Latest background check of the warm previous release: 1 passed, 0 failed.\n\
         # TYPE canopy_rollback_target_healthy gauge\n",
    );
    if let Some((release, passed)) = watched {
        let _ = writeln!(out, "canopy_rollback_target_healthy{{release=\"{release}\"}} {}", u8::from(passed));
    }
}

/// Appends standard `process_*` metrics read from /proc (Linux).
pub fn render_process(out: &mut String) {
    let page = 4096.0;
    let ticks = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // fields after the parenthesised command name
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime=11, stime=12, starttime=19, rss=21 (0-based after the name)
            let cpu = (num(11) + num(12)) / ticks;
            let _ = writeln!(out, "# HELP process_cpu_seconds_total Total user and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}");
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", num(21) * page);
            let _ = writeln!(out, "# HELP process_threads Number of OS threads.\n# TYPE process_threads gauge\nprocess_threads {}", num(17));
            if let Some(boot) = boot_time() {
                let _ = writeln!(out, "# HELP process_start_time_seconds Start time since the Unix epoch.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}", boot + num(19) / ticks);
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}", fds.count());
    }
}

fn boot_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}
