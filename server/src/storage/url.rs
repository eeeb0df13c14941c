//! Parsing source URLs into a store (scheme + bucket/container/host) and a key or key glob.

/// The kind of object store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 or an S3-compatible store (`s3://`, `s3a://`).
    S3,
    /// Google Cloud Storage (`gs://`, `gcs://`).
    Gcs,
    /// Azure Blob Storage / Data Lake (`az://`, `azure://`, `abfs[s]://`, `adl://`).
    Azure,
    /// A plain HTTP(S) server (`http://`, `https://`): single objects only, it cannot be listed.
    Http,
}

/// A source URL on an object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    /// Which kind of store, from the URL's scheme.
    pub kind: StoreKind,
    /// `scheme://authority`: what the store is built from (`s3://bucket`,
    /// `abfs://container@account.dfs.core.windows.net`, `https://host:8443`).
    pub base: String,
    /// Object key or key glob, without a leading `/`.
    pub key: String,
}

impl ObjectUrl {
    /// True when the key is a pattern to match against a listing.
    pub fn has_glob(&self) -> bool {
        self.key.contains(['*', '?', '['])
    }
}

/// Parses a source. `Ok(None)`: a local path or `file://` URL (served with `pread`).
pub fn parse_object_url(source: &str) -> Result<Option<ObjectUrl>, String> {
    let Some((scheme, rest)) = source.split_once("://") else {
        return Ok(None);
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    let kind = match scheme_lc.as_str() {
        "file" => return Ok(None),
        "s3" | "s3a" => StoreKind::S3,
        "gs" | "gcs" => StoreKind::Gcs,
        "az" | "azure" | "abfs" | "abfss" | "adl" => StoreKind::Azure,
        "http" | "https" => StoreKind::Http,
        other => {
            return Err(format!(
                "scheme '{other}://' is not supported (use a path, file://, s3://, gs://, az://, abfs:// or https://)"
            ));
        }
    };
    let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(match kind {
            StoreKind::Http => "URL has no host".to_string(),
            _ => "URL has no bucket or container (expected scheme://bucket/key)".to_string(),
        });
    }
    let key = key.trim_start_matches('/');
    if key.is_empty() {
        return Err("URL names no object (expected scheme://bucket/key or a glob such as .../*.nc)".into());
    }
    if kind == StoreKind::Http && key.contains(['*', '[', '?']) {
        return Err(
            "http(s) servers cannot be listed: give each object's URL (no globs, no query strings)".into(),
        );
    }
    // `s3a` is Hadoop's spelling; object_store knows `s3`.
    let scheme_out = if scheme_lc == "s3a" {
        "s3"
    } else {
        scheme_lc.as_str()
    };
    Ok(Some(ObjectUrl {
        kind,
        base: format!("{scheme_out}://{authority}"),
        key: key.to_string(),
    }))
}

/// The part of a key glob to list: everything before the first wildcard, cut back to the
/// last `/` (object stores match prefixes by whole path segments).
pub fn list_prefix(pattern: &str) -> &str {
    let first = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    match pattern[..first].rfind('/') {
        Some(i) => &pattern[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ObjectUrl {
        parse_object_url(s).expect("valid").expect("remote")
    }

    #[test]
    fn local_sources_are_not_object_urls() {
        assert_eq!(parse_object_url("/data/x.nc"), Ok(None));
        assert_eq!(parse_object_url("data/*.nc"), Ok(None));
        assert_eq!(parse_object_url("file:///data/x.nc"), Ok(None));
    }

    #[test]
    fn schemes_map_to_stores() {
        let u = parse("s3://bucket/cmip6/tas_*.nc");
        assert_eq!(
            (u.kind, u.base.as_str(), u.key.as_str()),
            (StoreKind::S3, "s3://bucket", "cmip6/tas_*.nc")
        );
        assert!(u.has_glob());
        assert_eq!(parse("S3A://b/k.nc").base, "s3://b");
        assert_eq!(parse("gs://b/k.nc").kind, StoreKind::Gcs);
        assert_eq!(parse("az://container/dir/k.nc").kind, StoreKind::Azure);
        let a = parse("abfss://c@acct.dfs.core.windows.net/p/k.nc");
        assert_eq!(
            (a.kind, a.base.as_str(), a.key.as_str()),
            (StoreKind::Azure, "abfss://c@acct.dfs.core.windows.net", "p/k.nc")
        );
        let h = parse("http://127.0.0.1:8080/data/x.nc");
        assert_eq!(
            (h.kind, h.base.as_str(), h.key.as_str()),
            (StoreKind::Http, "http://127.0.0.1:8080", "data/x.nc")
        );
        assert!(!h.has_glob());
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(parse_object_url("ftp://h/x.nc").unwrap_err().contains("ftp"));
        assert!(parse_object_url("s3:///x.nc").unwrap_err().contains("bucket"));
        assert!(parse_object_url("s3://bucket").unwrap_err().contains("no object"));
        assert!(
            parse_object_url("s3://bucket/")
                .unwrap_err()
                .contains("no object")
        );
        assert!(
            parse_object_url("https://h/data/*.nc")
                .unwrap_err()
                .contains("cannot be listed")
        );
    }

    #[test]
    fn list_prefix_stops_at_the_segment_before_a_wildcard() {
        assert_eq!(list_prefix("cmip6/Amon/tas/tas_*.nc"), "cmip6/Amon/tas");
        assert_eq!(list_prefix("cmip6/*/tas/x.nc"), "cmip6");
        assert_eq!(list_prefix("tas_*.nc"), "");
        assert_eq!(list_prefix("a/b/c.nc"), "a/b");
        assert_eq!(list_prefix("a/b[12]/c.nc"), "a");
    }
}
