//! Networks: the stack network every release's containers join.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptions;

use crate::engine::Engine;
use crate::error::{status_of, DockerError};
use crate::spec::LABEL_MANAGED;

/// What [`Engine::ensure_network`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkStatus {
    /// The network was there already (made by canopy, compose or by hand).
    Existed,
    /// canopy created it (a bridge network labelled `canopy.managed=true`).
    Created,
}

impl Engine {
    /// Makes sure the network `name` exists, creating a bridge network when it
    /// does not. Called before creating a release's containers; idempotent.
    /// An existing network is used as it is, whoever made it (the database of
    /// a stack is usually on it already).
    ///
    /// Engines before API 1.44 accept two networks of one name; should two
    /// callers create it at the same moment, each keeps the network with the
    /// smallest id and removes its own if that is not it, so one remains.
    pub async fn ensure_network(&self, name: &str) -> Result<NetworkStatus, DockerError> {
        let network_err = |source| DockerError::Network { network: name.to_string(), source };
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(NetworkStatus::Existed),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(network_err(err)),
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())])),
            ..Default::default()
        };
        let created = match self.docker.create_network(request).await {
            Ok(created) => created.id,
            // Newer engines refuse a duplicate name: someone else just made it.
            Err(err) if status_of(&err) == Some(409) => return Ok(NetworkStatus::Existed),
            Err(err) => return Err(network_err(err)),
        };
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let options = ListNetworksOptions { filters: Some(filters) };
        let same_name = self.docker.list_networks(Some(options)).await.map_err(network_err)?;
        let keep =
            same_name.iter().filter(|network| network.name.as_deref() == Some(name)).filter_map(|network| network.id.as_deref()).min();
        if keep.is_some_and(|keep| keep != created) {
            log::info!("network {name} was created twice at once; removing the duplicate {created}");
            self.docker.remove_network(&created).await.map_err(network_err)?;
            return Ok(NetworkStatus::Existed);
        }
        log::info!("created Docker network {name}");
        Ok(NetworkStatus::Created)
    }
}
