//! Images: a release's image present locally, pulled with progress when not.

use std::fmt;

use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use crate::engine::Engine;
use crate::error::{reason_of, status_of, DockerError};

/// What [`Engine::ensure_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// The image was already present locally; nothing was pulled.
    Present,
    /// The image was pulled from its registry.
    Pulled,
}

/// One status line of a pull, as `docker pull` prints them: for the whole
/// image (`Pulling from acme/vendure-server`, `Digest: sha256:…`) or for one
/// layer (`Downloading`, `Extracting`, `Pull complete`, `Already exists`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PullProgress {
    /// The layer's short id, `None` for lines about the whole image.
    pub layer: Option<String>,
    /// The status text.
    pub status: String,
    /// Bytes done so far in this step, when the engine says.
    pub current: Option<u64>,
    /// Bytes in total for this step, when the engine says.
    pub total: Option<u64>,
}

impl From<CreateImageInfo> for PullProgress {
    fn from(info: CreateImageInfo) -> Self {
        let detail = info.progress_detail.unwrap_or_default();
        let bytes = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
        PullProgress { layer: info.id, status: info.status.unwrap_or_default(), current: bytes(detail.current), total: bytes(detail.total) }
    }
}

impl fmt::Display for PullProgress {
    /// `layer: status current/total bytes`, like one line of `docker pull`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(layer) = &self.layer {
            write!(f, "{layer}: ")?;
        }
        f.write_str(&self.status)?;
        match (self.current, self.total) {
            (Some(current), Some(total)) => write!(f, " {current}/{total} bytes"),
            (Some(current), None) => write!(f, " {current} bytes"),
            _ => Ok(()),
        }
    }
}

/// The tag of an image reference (`ghcr.io/acme/server:elm` → `elm`,
/// `127.0.0.1:5000/acme/server:elm` → `elm`), ignoring a digest; `None` when
/// the reference has no tag.
pub fn image_tag(reference: &str) -> Option<&str> {
    split_reference(reference).map(|(_, tag)| tag)
}

/// `(repository, tag)` of a reference that has a tag.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.split_once('@').map_or(reference, |(name, _digest)| name);
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    let colon = reference[name_start..].rfind(':')? + name_start;
    let (repository, tag) = (&reference[..colon], &reference[colon + 1..]);
    (!repository.is_empty() && !tag.is_empty()).then_some((repository, tag))
}

impl Engine {
    /// Makes sure the image `reference` (`repository:tag`) is present locally.
    /// Called first in a deploy. Present → [`ImageStatus::Present`] at once
    /// (canopy never re-pulls a tag it has: a release's tag is immutable).
    /// Missing → pulled from its registry, every status line the engine
    /// streams handed to `progress` as it arrives, then
    /// [`ImageStatus::Pulled`]. A failed pull (no such repository or tag,
    /// registry unreachable, denied) is [`DockerError::Pull`] naming
    /// repository and tag with the registry's reason.
    pub async fn ensure_image(&self, reference: &str, mut progress: impl FnMut(PullProgress)) -> Result<ImageStatus, DockerError> {
        let (repository, tag) = split_reference(reference).ok_or_else(|| DockerError::NoTag { image: reference.to_string() })?;
        let pull_error = |reason: String| DockerError::Pull { repository: repository.to_string(), tag: tag.to_string(), reason };
        match self.docker.inspect_image(reference).await {
            Ok(_) => return Ok(ImageStatus::Present),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(source) => return Err(DockerError::Image { image: reference.to_string(), source }),
        }
        log::info!("pulling image {reference}");
        let options = CreateImageOptions { from_image: Some(repository.to_string()), tag: Some(tag.to_string()), ..Default::default() };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(line) = pull.next().await {
            progress(PullProgress::from(line.map_err(|err| pull_error(reason_of(&err)))?));
        }
        match self.docker.inspect_image(reference).await {
            Ok(_) => Ok(ImageStatus::Pulled),
            Err(err) => Err(pull_error(format!("the pull ended but the image is not present: {}", reason_of(&err)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_references() {
        assert_eq!(image_tag("acme/server:elm"), Some("elm"));
        assert_eq!(image_tag("ghcr.io/acme/vendure-server:juniper"), Some("juniper"));
        assert_eq!(image_tag("127.0.0.1:5000/acme/server:oak"), Some("oak"));
        assert_eq!(image_tag("127.0.0.1:5000/acme/server"), None);
        assert_eq!(image_tag("acme/server:elm@sha256:abcd"), Some("elm"));
        assert_eq!(image_tag("acme/server@sha256:abcd"), None);
        assert_eq!(image_tag("server"), None);
        assert_eq!(image_tag(":elm"), None);
        assert_eq!(split_reference("localhost:5000/server:elm"), Some(("localhost:5000/server", "elm")));
    }

    #[test]
    fn progress_lines_read_like_docker_pull() {
        let line = PullProgress { layer: Some("a1b2".into()), status: "Downloading".into(), current: Some(10), total: Some(20) };
        assert_eq!(line.to_string(), "a1b2: Downloading 10/20 bytes");
        let line = PullProgress { layer: None, status: "Digest: sha256:ff".into(), current: None, total: None };
        assert_eq!(line.to_string(), "Digest: sha256:ff");
    }
}
