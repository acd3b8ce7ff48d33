//! The OCI/Docker image documents skiff reads (index, manifest, config), and the choice of a
//! manifest by tag or by this node's platform.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index / manifest list, or an image manifest: both parse into this, and
/// [`Manifest::is_index`] tells which it is.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
            Some(_) => false,
            None => self.config.is_none() && !self.manifests.is_empty(),
        }
    }
}

#[derive(Deserialize, Default)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub config: Option<ContainerConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// This node's platform in OCI terms.
pub fn this_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: variant.map(String::from),
    }
}

/// Picks the entry of an index for `want`; a variant only has to match when both name one.
/// Err lists the platforms the index offers.
pub fn pick_platform<'a>(
    index: &'a Manifest,
    want: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == want.os
                    && p.architecture == want.architecture
                    && match (&p.variant, &want.variant) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
        })
        .ok_or_else(|| {
            index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect()
        })
}

/// Picks a layout index's entry by its `org.opencontainers.image.ref.name` tag, or the only
/// entry when no tag is given. Err says why none fits.
pub fn pick_tagged<'a>(index: &'a Manifest, tag: Option<&str>) -> Result<&'a Descriptor, String> {
    match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or_else(|| {
                let tags: Vec<&str> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.annotations.get(REF_NAME))
                    .map(String::as_str)
                    .collect();
                format!("no tag {t:?} in the layout (tags: {tags:?})")
            }),
        None => match index.manifests.as_slice() {
            [one] => Ok(one),
            [] => Err("the layout's index.json lists no manifests".into()),
            _ => Err("the layout holds several images; name one with :tag".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Manifest {
        Manifest {
            media_type: Some(OCI_INDEX.into()),
            manifests: platforms
                .iter()
                .enumerate()
                .map(|(i, (os, arch, variant))| Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: format!("sha256:{i}"),
                    size: 1,
                    annotations: HashMap::new(),
                    platform: Some(Platform {
                        architecture: arch.to_string(),
                        os: os.to_string(),
                        variant: variant.map(String::from),
                    }),
                })
                .collect(),
            config: None,
            layers: vec![],
        }
    }

    #[test]
    fn platform_is_chosen_by_os_arch_and_variant() {
        let idx = index(&[
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "amd64", None),
        ]);
        let arm7 = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: Some("v7".into()),
        };
        assert_eq!(pick_platform(&idx, &arm7).unwrap().digest, "sha256:1");
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(pick_platform(&idx, &amd64).unwrap().digest, "sha256:2");
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            pick_platform(&idx, &s390).unwrap_err(),
            vec!["linux/arm/v6", "linux/arm/v7", "linux/amd64"]
        );
    }

    #[test]
    fn an_index_is_told_from_a_manifest() {
        let m: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"config":{"digest":"sha256:a"},"layers":[]}"#,
        )
        .unwrap();
        assert!(!m.is_index());
        let i: Manifest =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:a"}]}"#)
                .unwrap();
        assert!(i.is_index());
    }
}
