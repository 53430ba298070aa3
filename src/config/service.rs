//! `[[service]]`: names, ports, routes and checks, which make the topology
//! (with `[releases] address-template`). A service's `image`,
//! `[service.container]` and `overlap` are `[docker]`'s (see `docker.rs`).

use std::collections::BTreeMap;

use canopy_admin::Check;
use canopy_proxy::{AddressTemplate, Route, Service, ServiceName, Topology};
use serde::Deserialize;
use toml::Spanned;

use super::check::{check, FileCheck};
use super::error::{ConfigError, Ctx};
use super::value::{body_limit, Dur};

/// One `[[service]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileService {
    pub name: Spanned<ServiceName>,
    port: Spanned<u16>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    checks: Vec<Spanned<FileCheck>>,
    pub image: Option<Spanned<String>>,
    pub container: Option<Spanned<FileContainer>>,
    pub overlap: Option<Spanned<bool>>,
    max_request_body: Option<Spanned<String>>,
}

/// `[service.container]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileContainer {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub env_file: Option<Spanned<String>>,
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub healthcheck: Option<FileHealthcheck>,
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
}

/// `healthcheck = { ... }` of `[service.container]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileHealthcheck {
    #[serde(default)]
    pub test: Vec<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub start_period: Option<Dur>,
}

/// The services and their routes, and each service's checks (topology
/// order). `body_limit` is `[proxy] max-request-body`, for services that set none.
pub(super) fn topology(
    cx: &Ctx<'_>,
    file: &[FileService],
    template: &Spanned<String>,
    default_body_limit: Option<u64>,
) -> Result<(Topology, Vec<Vec<Check>>), ConfigError> {
    let mut services: Vec<Service> = Vec::new();
    let mut routes: Vec<(usize, Route)> = Vec::new();
    let mut checks = Vec::new();
    for (i, s) in file.iter().enumerate() {
        Topology::check_service(&services, s.name.get_ref()).map_err(|e| cx.err(s.name.span(), e.to_string()))?;
        if *s.port.get_ref() == 0 {
            return Err(cx.err(s.port.span(), "port must be between 1 and 65535"));
        }
        let max_request_body = body_limit(cx, &s.max_request_body, default_body_limit)?;
        services.push(Service { name: s.name.get_ref().clone(), port: *s.port.get_ref(), max_request_body });
        for r in &s.routes {
            let route = Route::parse(r.get_ref()).map_err(|e| cx.err(r.span(), e.to_string()))?;
            Topology::check_route(&services, &routes, i, &route).map_err(|e| cx.err(r.span(), e.to_string()))?;
            routes.push((i, route));
        }
        checks.push(s.checks.iter().map(|c| check(cx, c)).collect::<Result<Vec<_>, _>>()?);
    }
    if services.is_empty() {
        return Err(cx.err(0..0, "no [[service]] is configured; canopy needs at least one"));
    }
    if routes.is_empty() {
        return Err(cx.err(0..0, "no service has `routes`; nothing would be served"));
    }
    let template = AddressTemplate::parse(template.get_ref()).map_err(|e| cx.err(template.span(), e.to_string()))?;
    Ok((Topology::new(services, routes, template).expect("rules checked above"), checks))
}
