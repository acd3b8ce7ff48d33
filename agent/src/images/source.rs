//! Where an image comes from, parsed from its reference. Local sources are named like skopeo's
//! transports (`dir:`, `oci:`, `oci-archive:`, `docker-archive:`); anything else is a registry
//! reference with Docker's naming rules (`alpine` = `docker.io/library/alpine:latest`).

use std::path::PathBuf;

use oci_client::Reference;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A root filesystem directory, used as is.
    Dir(PathBuf),
    /// An OCI image layout directory, optionally naming a tag in its index.
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A `docker save` tar, optionally naming one of its RepoTags.
    DockerArchive {
        path: PathBuf,
        name: Option<String>,
    },
    Registry(Reference),
}

impl Source {
    pub fn parse(reference: &str) -> Result<Source, String> {
        if let Some(p) = reference.strip_prefix("dir:") {
            return Ok(Source::Dir(non_empty(p)?));
        }
        if let Some(rest) = reference.strip_prefix("oci:") {
            let (p, tag) = split_tag(rest);
            return Ok(Source::OciLayout {
                path: non_empty(p)?,
                tag: tag.map(String::from),
            });
        }
        if let Some(rest) = reference.strip_prefix("oci-archive:") {
            let (p, tag) = split_tag(rest);
            return Ok(Source::OciArchive {
                path: non_empty(p)?,
                tag: tag.map(String::from),
            });
        }
        if let Some(rest) = reference.strip_prefix("docker-archive:") {
            let (p, name) = match rest.split_once(':') {
                Some((p, n)) if !n.is_empty() => (p, Some(n.to_string())),
                _ => (rest.trim_end_matches(':'), None),
            };
            return Ok(Source::DockerArchive {
                path: non_empty(p)?,
                name,
            });
        }
        if reference.starts_with('/') || reference.starts_with('.') {
            return Err(format!(
                "{reference:?} looks like a path; name local images dir:PATH, oci:PATH[:TAG], \
                 oci-archive:PATH[:TAG] or docker-archive:PATH[:NAME]"
            ));
        }
        Reference::try_from(reference)
            .map(Source::Registry)
            .map_err(|e| format!("not a valid image reference: {e}"))
    }

    /// The name under which the image is recorded in the node's catalog.
    pub fn catalog_name(&self, original: &str) -> String {
        match self {
            Source::Registry(r) => r.whole(),
            _ => original.to_string(),
        }
    }
}

fn non_empty(p: &str) -> Result<PathBuf, String> {
    if p.is_empty() {
        Err("the path is empty".into())
    } else {
        Ok(PathBuf::from(p))
    }
}

/// `path:tag` → (path, Some(tag)); a colon inside the path (before a slash) is not a tag.
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() => (p, Some(t)),
        _ => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_naming_rules_apply_to_registry_references() {
        let Source::Registry(r) = Source::parse("alpine:3.20").unwrap() else {
            panic!()
        };
        assert_eq!(r.whole(), "docker.io/library/alpine:3.20");
        let Source::Registry(r) = Source::parse("registry.lan:5000/team/worker:v2").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.registry(), r.repository()),
            ("registry.lan:5000", "team/worker")
        );
        assert_eq!(r.tag(), Some("v2"));
        let d = format!("ghcr.io/org/app@sha256:{}", "a".repeat(64));
        let Source::Registry(r) = Source::parse(&d).unwrap() else {
            panic!()
        };
        assert_eq!(
            r.digest(),
            Some(format!("sha256:{}", "a".repeat(64)).as_str())
        );
        assert!(Source::parse("Upper/Case").is_err());
        assert!(Source::parse("/srv/rootfs").unwrap_err().contains("dir:"));
    }

    #[test]
    fn local_sources_split_their_tags() {
        assert_eq!(
            Source::parse("oci:/a/b:v1").unwrap(),
            Source::OciLayout {
                path: "/a/b".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci-archive:/x.tar").unwrap(),
            Source::OciArchive {
                path: "/x.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("docker-archive:/x.tar:busybox:latest").unwrap(),
            Source::DockerArchive {
                path: "/x.tar".into(),
                name: Some("busybox:latest".into())
            }
        );
        assert!(Source::parse("dir:").is_err());
    }
}
