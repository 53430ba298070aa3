//! The invariant shape of the stack: services, their ports and routes, and the
//! address template that names a release's backend for each service.

use std::collections::BTreeMap;

use crate::endpoint::{Endpoint, EndpointError};
use crate::names::{ReleaseName, ServiceName};
use crate::routing::{Route, RouteTable};

/// One service of the stack (e.g. `server` on port 3000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name, used in the address template and in metrics.
    pub name: ServiceName,
    /// The port every release's backend for this service listens on.
    pub port: u16,
    /// Request bodies larger than this many bytes are answered 413 before
    /// anything is forwarded (`None`: no limit).
    pub max_request_body: Option<u64>,
}

/// The host part of a backend address, with `{service}` and `{release}` placeholders
/// (e.g. `vendure-{service}--{release}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressTemplate(String);

/// Why an address template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address template `{template}`: {reason}")]
pub struct TemplateError {
    /// The refused template.
    pub template: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AddressTemplate {
    /// Validates a template: it must contain `{release}` (or every release would
    /// share one backend) and render to a valid host name.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let err = |reason: &str| TemplateError { template: s.to_string(), reason: reason.to_string() };
        if !s.contains("{release}") {
            return Err(err("it must contain `{release}` so each release has its own backends"));
        }
        let sample = s.replace("{service}", "svc").replace("{release}", "rel");
        if sample.contains(['{', '}']) {
            return Err(err("only `{service}` and `{release}` placeholders are known"));
        }
        Endpoint::new(&sample, 1).map_err(|_| err("it does not render to a valid host name"))?;
        Ok(Self(s.to_string()))
    }

    /// The host for `service` of `release`.
    pub fn render(&self, service: &ServiceName, release: &ReleaseName) -> String {
        self.0.replace("{service}", service.as_str()).replace("{release}", release.as_str())
    }

    /// The release whose `service` host is `host`: the inverse of
    /// [`Self::render`] (e.g. a Docker container's name back to its release),
    /// `None` when `host` is not one of this template's names for `service`.
    pub fn release_of(&self, service: &ServiceName, host: &str) -> Option<ReleaseName> {
        let pattern = self.0.replace("{service}", service.as_str());
        let (before, after) = pattern.split_once("{release}")?;
        let middle = host.strip_prefix(before)?.strip_suffix(after)?;
        ReleaseName::parse(middle).ok()
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Services, routes and the address template: the same for every release;
/// a config reload replaces it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    services: Box<[Service]>,
    routes: RouteTable,
    template: AddressTemplate,
}

/// Why a topology was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Two services share a name.
    #[error("duplicate service name `{0}`")]
    DuplicateService(ServiceName),
    /// Two routes are identical (same host and prefix).
    #[error("route `{route}` of service `{second}` is already routed to service `{first}`")]
    DuplicateRoute {
        /// The route as written.
        route: String,
        /// The service that claimed it first.
        first: ServiceName,
        /// The service that claimed it again.
        second: ServiceName,
    },
    /// A route refers to a service index that does not exist (programming error guard).
    #[error("no services are configured")]
    Empty,
}

impl Topology {
    /// Builds a topology from services and `(service index, route)` pairs.
    /// Each rule is checked by [`Topology::check_service`] / [`Topology::check_route`]
    /// so the config loader can point at the offending line first.
    pub fn new(services: Vec<Service>, routes: Vec<(usize, Route)>, template: AddressTemplate) -> Result<Self, TopologyError> {
        if services.is_empty() {
            return Err(TopologyError::Empty);
        }
        for (i, s) in services.iter().enumerate() {
            Self::check_service(&services[..i], &s.name)?;
        }
        for (i, (svc, r)) in routes.iter().enumerate() {
            Self::check_route(&services, &routes[..i], *svc, r)?;
        }
        Ok(Self { routes: RouteTable::new(routes), services: services.into(), template })
    }

    /// Rule: service names are unique.
    pub fn check_service(earlier: &[Service], name: &ServiceName) -> Result<(), TopologyError> {
        if earlier.iter().any(|s| &s.name == name) {
            return Err(TopologyError::DuplicateService(name.clone()));
        }
        Ok(())
    }

    /// Rule: no two routes have the same host and prefix.
    pub fn check_route(services: &[Service], earlier: &[(usize, Route)], service: usize, route: &Route) -> Result<(), TopologyError> {
        if let Some((first, _)) = earlier.iter().find(|(_, r)| r.same_match(route)) {
            return Err(TopologyError::DuplicateRoute {
                route: route.to_string(),
                first: services[*first].name.clone(),
                second: services[service].name.clone(),
            });
        }
        Ok(())
    }

    /// All services, in configuration order (their index is used everywhere else).
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The index of the named service.
    pub fn service_index(&self, name: &ServiceName) -> Option<usize> {
        self.services.iter().position(|s| &s.name == name)
    }

    /// The route table (pure; see [`RouteTable::route`]).
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The address template.
    pub fn template(&self) -> &AddressTemplate {
        &self.template
    }

    /// The endpoints of every service of `release`: the explicit ones where given,
    /// else the template host with the service's port. Indexed like [`Self::services`].
    pub fn endpoints_for(
        &self,
        release: &ReleaseName,
        explicit: &BTreeMap<ServiceName, Vec<Endpoint>>,
    ) -> Result<Vec<Vec<Endpoint>>, EndpointError> {
        self.services
            .iter()
            .map(|s| match explicit.get(&s.name) {
                Some(list) => Ok(list.clone()),
                None => Ok(vec![Endpoint::new(&self.template.render(&s.name, release), s.port)?]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_per_service_and_release() {
        let t = AddressTemplate::parse("vendure-{service}--{release}").unwrap();
        let s = ServiceName::parse("server").unwrap();
        let r = ReleaseName::parse("elm").unwrap();
        assert_eq!(t.render(&s, &r), "vendure-server--elm");
        assert_eq!(t.release_of(&s, "vendure-server--elm"), Some(r));
        assert_eq!(t.release_of(&s, "vendure-worker--elm"), None);
        assert_eq!(t.release_of(&s, "vendure-server--"), None);
        assert_eq!(t.release_of(&s, "vendure-server--Elm"), None);
    }

    #[test]
    fn template_needs_release() {
        let e = AddressTemplate::parse("vendure-{service}").unwrap_err();
        assert!(e.to_string().contains("must contain `{release}`"));
        assert!(AddressTemplate::parse("x-{release}-{port}").is_err());
        assert!(AddressTemplate::parse("bad host {release}").is_err());
    }
}
