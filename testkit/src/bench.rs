//! Parts the benchmarks that run canopy, nginx and HAProxy side by side
//! share (benches/cutover.rs, benches/upgrade.rs): readiness through the
//! proxy, the machine's state as a run starts, percentiles, and the verdict.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::Proc;

/// A proxy that does not answer within this long is broken.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until GET `url` answers 200 with a JSON body naming `release`, or
/// panics with the process's log.
pub async fn wait_ready(p: &mut Proc, url: &str, release: &str) {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build().expect("HTTP client");
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(st) = p.exited() {
            panic!("{} exited with {st}:\n{}", p.name, p.output());
        }
        match http.get(url).send().await {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["release"] == release {
                    return;
                }
                last = format!("answered {v}");
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} not ready at {url} ({last}):\n{}", p.name, p.output());
}

/// Nearest-rank percentile.
pub fn pct(v: &[Duration], q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

/// Milliseconds with two decimals, or "-".
pub fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

/// The machine as a bench starts: how busy its CPUs were over the last
/// second, its load average and its CPU count (printed beside the figures).
pub struct Machine {
    /// e.g. "3%", from [`cpu_busy_1s`].
    pub busy: String,
    /// The three load averages.
    pub loadavg: String,
    /// CPUs available to this process.
    pub cpus: usize,
}

impl Machine {
    /// Samples the machine now (takes one second).
    pub fn now() -> Machine {
        let busy = cpu_busy_1s();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        Machine { busy, loadavg, cpus }
    }

    /// The runtime the clients and upstreams share: a worker per CPU.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(self.cpus.max(1)).enable_all().build().expect("tokio runtime")
    }
}

/// How busy the CPUs were over the last second, e.g. "3%" (from /proc/stat).
pub fn cpu_busy_1s() -> String {
    let sample = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        Some((v.iter().take(8).sum(), v.get(3)? + v.get(4)?))
    };
    let Some((t0, i0)) = sample() else { return "?".into() };
    std::thread::sleep(Duration::from_secs(1));
    let Some((t1, i1)) = sample() else { return "?".into() };
    let (t, i) = (t1 - t0, i1 - i0);
    if t == 0 {
        return "?".into();
    }
    format!("{:.0}%", 100.0 * (t - i) as f64 / t as f64)
}

/// A benchmark's goals, printed as PASS/FAIL lines; [`Goals::exit`] ends the
/// process non-zero when any failed, so a script or CI sees it.
#[derive(Debug, Default)]
pub struct Goals {
    failed: Vec<String>,
}

impl Goals {
    /// Records one goal and appends its line (`what`, the measured value,
    /// PASS or FAIL) to `out`, `width` wide before the value.
    pub fn check(&mut self, out: &mut String, width: usize, what: &str, measured: String, pass: bool) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "  {what:<width$}{measured:>18}   {}", if pass { "PASS" } else { "FAIL" });
        if !pass {
            self.failed.push(what.to_string());
        }
    }

    /// The goals that failed.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// Exits with status 1, naming the failed goals on stderr, if any failed.
    pub fn exit(&self) {
        if !self.failed.is_empty() {
            eprintln!("{} goal(s) failed: {}", self.failed.len(), self.failed.join("; "));
            std::process::exit(1);
        }
    }
}
