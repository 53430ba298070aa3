//! What `canopy check-config` says beyond "valid": warnings about a config
//! that parses but would serve errors. Today one: the backends of the
//! releases a first start registers (`initial` through the address
//! template, `[[release]]` with theirs) resolved as `canopy serve` resolves
//! them, each host that does not resolve named. Warnings never fail the
//! check: a release's containers may not exist yet.

use std::collections::BTreeMap;

use canopy_proxy::{Endpoint, ReleaseName};

use crate::config::Config;

/// One warning for the operator, as `check-config` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves the backends of every release a first start registers, all at
/// once; a warning for each that does not resolve, naming release, service
/// and host.
pub async fn unresolved_seeds(config: &Config) -> Vec<Warning> {
    let seed = &config.seed;
    let mut releases: BTreeMap<ReleaseName, _> = seed.releases.clone();
    if let Some(initial) = &seed.initial {
        releases.entry(initial.clone()).or_default();
    }
    let topology = &config.live.topology;
    let mut lookups = tokio::task::JoinSet::new();
    for (name, explicit) in &releases {
        // the config loader checked the explicit backends and the template
        let Ok(per_service) = topology.endpoints_for(name, explicit) else { continue };
        for (service, endpoints) in topology.services().iter().zip(per_service) {
            for endpoint in endpoints {
                let (name, service) = (name.clone(), service.name.clone());
                lookups.spawn(async move { (name, service, resolve(endpoint).await) });
            }
        }
    }
    let mut warnings = Vec::new();
    while let Some(done) = lookups.join_next().await {
        let Ok((name, service, Err(e))) = done else { continue };
        let role = if seed.initial.as_ref() == Some(&name) { "initial release" } else { "release" };
        warnings.push(Warning(format!(
            "{}: {role} `{name}`, service `{service}`: {e}; a first start (no state file yet) would register it so, \
             and every request it answers for `{service}` would be a 502 until the host resolves",
            config.path.display()
        )));
    }
    warnings.sort_by(|a, b| a.0.cmp(&b.0));
    warnings
}

async fn resolve(endpoint: Endpoint) -> Result<(), canopy_proxy::ResolveError> {
    endpoint.resolve().await.map(drop)
}
