//! Redis backlog sources for autoscaling, parsed: `redis://[:password@]host:port/KEY` (a
//! list: its length waits) and `redis://[:password@]host:port/STREAM#GROUP` (a stream's
//! consumer group: its lag waits, its pending entries are in flight). The controller's
//! `backlog_poller.rs` reads them.

/// Where a Redis backlog is read.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisSource {
    /// `redis://[:password@]host:port/`, for the client.
    pub url: String,
    pub key: String,
    /// Set for a stream: the consumer group whose lag and pending entries count.
    pub group: Option<String>,
}

/// Parses `redis://host:port/KEY` or `redis://host:port/STREAM#GROUP`.
pub fn parse(source: &str) -> Result<RedisSource, String> {
    let rest = source
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{source:?} does not start with redis://"))?;
    let (addr, path) = rest.split_once('/').ok_or_else(|| {
        format!("{source:?}: give the key after the address (redis://host:port/KEY)")
    })?;
    let (key, group) = match path.split_once('#') {
        Some((k, g)) => (k, Some(g.to_string())),
        None => (path, None),
    };
    if addr.is_empty() || key.is_empty() || group.as_deref() == Some("") {
        return Err(format!(
            "{source:?} is not redis://host:port/KEY or redis://host:port/STREAM#GROUP"
        ));
    }
    Ok(RedisSource {
        url: format!("redis://{addr}/"),
        key: key.to_string(),
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_a_list_or_a_streams_group() {
        let r = parse("redis://127.0.0.1:6379/jobs").unwrap();
        assert_eq!(
            (r.url.as_str(), r.key.as_str(), r.group),
            ("redis://127.0.0.1:6379/", "jobs", None)
        );
        let r = parse("redis://:secret@redis.lan:6379/events#workers").unwrap();
        assert_eq!(r.url, "redis://:secret@redis.lan:6379/");
        assert_eq!(
            (r.key.as_str(), r.group.as_deref()),
            ("events", Some("workers"))
        );
        for bad in [
            "redis://host:6379",
            "redis://host:6379/",
            "redis:///k",
            "redis://h/k#",
            "http://h/k",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
