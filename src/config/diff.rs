//! The typed diff a reload runs: every field of [`Fixed`] and [`Reloadable`]
//! is destructured without `..`, so a new field does not compile until it is
//! given its reload class and its name in the reply here.

use std::fmt::Debug;
use std::time::Duration;

use canopy_acme::AcmeSettings;
use canopy_admin::DeploySettings;
use canopy_proxy::TlsOptions;

use super::{Fixed, ReleaseSettings, Reloadable, TlsListener};

impl Fixed {
    /// Each setting that differs in `new`, as `name (old -> new)`, in file
    /// order: what a reload refuses, naming `canopy serve --upgrade`.
    pub fn changes(&self, new: &Fixed) -> Vec<String> {
        let Fixed {
            listen,
            listen_tls,
            h2c,
            tls,
            threads,
            work_stealing,
            shutdown_grace,
            client_timeout,
            admin_listen,
            state_file,
            upgrade_socket,
            // derived from `state_file`, which names the change
            pid_file: _,
            admin_priority,
            resolve_interval,
            deploy,
            cluster,
        } = self;
        let (options, watch_interval, acme) = tls_parts(tls);
        let (new_options, new_watch_interval, new_acme) = tls_parts(&new.tls);
        let mut out = Vec::new();
        let debug = |v: &dyn Debug| format!("{v:?}");
        let mut note = |name: &str, changed: bool, old: String, new: String| {
            if changed {
                out.push(format!("{name} ({old} -> {new})"));
            }
        };
        note("[proxy] listen", *listen != new.listen, debug(listen), debug(&new.listen));
        note("[proxy] listen-tls", *listen_tls != new.listen_tls, debug(listen_tls), debug(&new.listen_tls));
        note("[proxy] h2c", *h2c != new.h2c, h2c.to_string(), new.h2c.to_string());
        note("[tls] h2 / handshake-timeout", options != new_options, debug(&options), debug(&new_options));
        note("[tls] watch-interval", watch_interval != new_watch_interval, debug(&watch_interval), debug(&new_watch_interval));
        note("[tls.acme]", acme != new_acme, debug(&acme), debug(&new_acme));
        note("[proxy] threads", *threads != new.threads, threads.to_string(), new.threads.to_string());
        note("[proxy] work-stealing", *work_stealing != new.work_stealing, work_stealing.to_string(), new.work_stealing.to_string());
        note("[proxy] shutdown-grace", *shutdown_grace != new.shutdown_grace, debug(shutdown_grace), debug(&new.shutdown_grace));
        note("[proxy] client-timeout", *client_timeout != new.client_timeout, debug(client_timeout), debug(&new.client_timeout));
        note("[admin] listen", *admin_listen != new.admin_listen, admin_listen.to_string(), new.admin_listen.to_string());
        note("[admin] state-file", *state_file != new.state_file, state_file.display().to_string(), new.state_file.display().to_string());
        let socket = |p: &std::path::Path| p.display().to_string();
        note("[admin] upgrade-socket", *upgrade_socket != new.upgrade_socket, socket(upgrade_socket), socket(&new.upgrade_socket));
        note("[admin] nice / realtime", *admin_priority != new.admin_priority, debug(admin_priority), debug(&new.admin_priority));
        let resolve = (debug(resolve_interval), debug(&new.resolve_interval));
        note("[releases] resolve-interval", *resolve_interval != new.resolve_interval, resolve.0, resolve.1);
        let containers = |d: &Option<DeploySettings>| debug(&without_env_values(d));
        note("[docker] and the services' image / container / overlap", *deploy != new.deploy, containers(deploy), containers(&new.deploy));
        note("[cluster]", *cluster != new.cluster, debug(cluster), debug(&new.cluster));
        out
    }
}

/// `[tls]`'s fixed settings, apart, so each is named on its own (`None`
/// without `[tls]`).
fn tls_parts(tls: &Option<TlsListener>) -> (Option<&TlsOptions>, Option<Option<Duration>>, Option<&Option<AcmeSettings>>) {
    match tls {
        Some(TlsListener { options, watch_interval, acme }) => (Some(options), Some(*watch_interval), Some(acme)),
        None => (None, None, None),
    }
}

/// `deploy` with each environment variable's value left out: the reply
/// and the audit log name a changed variable, never its value (env files
/// hold passwords).
fn without_env_values(deploy: &Option<DeploySettings>) -> Option<DeploySettings> {
    let mut deploy = deploy.clone()?;
    for container in deploy.services.iter_mut().flatten() {
        for var in &mut container.env {
            if let Some(eq) = var.find('=') {
                var.replace_range(eq + 1.., "…");
            }
        }
    }
    Some(deploy)
}

impl Reloadable {
    /// The areas that differ in `new`, named as the reload reply and the
    /// audit log name them.
    pub fn changes(&self, new: &Reloadable) -> Vec<&'static str> {
        let Reloadable { topology, checks, proxy, certificates, releases, access_log, token } = self;
        let ReleaseSettings {
            preview,
            validation_window,
            drain_timeout,
            retire_hooks,
            hook_timeout,
            migrate,
            warm_check_interval,
            require_rollback_ready,
            guard,
            canary,
            live_check_interval,
        } = releases;
        let n = &new.releases;
        [
            ("services, routes and address template", *topology != new.topology),
            ("checks", *checks != new.checks),
            ("proxy timeouts, retries, HTTPS redirect and HSTS", *proxy != new.proxy),
            ("TLS certificates", *certificates != new.certificates),
            ("preview", *preview != n.preview),
            ("validation window", *validation_window != n.validation_window),
            ("drain timeout", *drain_timeout != n.drain_timeout),
            ("retire hooks", (retire_hooks, hook_timeout) != (&n.retire_hooks, &n.hook_timeout)),
            ("migrate command", *migrate != n.migrate),
            ("warm check interval", *warm_check_interval != n.warm_check_interval),
            ("rollback readiness requirement", *require_rollback_ready != n.require_rollback_ready),
            ("guard", *guard != n.guard),
            ("canary defaults", *canary != n.canary),
            ("live check interval", *live_check_interval != n.live_check_interval),
            ("access log", *access_log != new.access_log),
            ("admin token", *token != new.token),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}
