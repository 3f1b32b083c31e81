//! Replica roots: where an admin allows a project's replicas to live. The controller scans,
//! drills and restores replicas with its own credentials, so it reads a replica URL only when
//! it lies under one of its project's roots. URLs are compared parsed, component by component,
//! with the same parser that opens the store (`agent::object_store::parse_url`): scheme, bucket,
//! endpoint, region and addressing exactly equal, and the path under the root's on a segment
//! boundary. A project without roots has no replica the controller will read.

use std::path::{Component, Path};

use agent::object_store::{parse_url, StoreUrl};
use proto::model::ProjectName;

/// The longest replica URL accepted from anyone (S3 keys are at most 1,024 bytes).
pub const MAX_URL_LEN: usize = 1024;
/// The most roots one project may have.
pub const MAX_ROOTS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    #[error("replica URL of {len} bytes is longer than the {MAX_URL_LEN} allowed")]
    TooLong { len: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("a project has at most {MAX_ROOTS} replica roots, {0} were given")]
    TooMany(usize),
    #[error(
        "project {project} has no replica roots, so the controller reads no replica of it (refused {url}); an admin \
         sets them with `walfleet projects set-roots {project} --replica-root s3://BUCKET/PREFIX`"
    )]
    NoRoots { project: ProjectName, url: String },
    #[error(
        "replica URL {url} is outside the replica roots of project {project} ({roots}); an admin allows it with \
         `walfleet projects set-roots {project} --replica-root URL` (repeat for every root)"
    )]
    Outside { project: ProjectName, url: String, roots: String },
}

fn parse(url: &str) -> Result<StoreUrl, RootError> {
    if url.len() > MAX_URL_LEN {
        return Err(RootError::TooLong { len: url.len() });
    }
    let parsed = parse_url(url).map_err(|e| RootError::Invalid(e.to_string()))?;
    if let StoreUrl::File { root } = &parsed {
        if !clean_path(root) {
            return Err(RootError::Invalid(format!(
                "replica URL {url:?}: a file path must be absolute, without '.' or '..' segments"
            )));
        }
    }
    Ok(parsed)
}

/// Absolute and free of `.`/`..` segments (`Path::components` drops inner `.` silently, so the
/// text is checked as well).
fn clean_path(p: &Path) -> bool {
    p.is_absolute()
        && !p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        && !p.to_string_lossy().split('/').any(|s| s == "." || s == "..")
}

/// Checks the roots an admin gives: each a valid replica URL, no duplicates, at most
/// [`MAX_ROOTS`]. Returns them trimmed, in the order given.
pub fn validate_roots(roots: &[String]) -> Result<Vec<String>, RootError> {
    if roots.len() > MAX_ROOTS {
        return Err(RootError::TooMany(roots.len()));
    }
    let mut out: Vec<String> = Vec::with_capacity(roots.len());
    for r in roots {
        let r = r.trim();
        parse(r).map_err(|e| match e {
            RootError::Invalid(m) => RootError::Invalid(format!("replica root: {m}")),
            other => other,
        })?;
        if !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    Ok(out)
}

/// Whether `url` lies under one of `roots` (the project's, as an admin set them).
pub fn check(project: &ProjectName, url: &str, roots: &[String]) -> Result<(), RootError> {
    let parsed = parse(url)?;
    if roots.is_empty() {
        return Err(RootError::NoRoots { project: project.clone(), url: url.to_string() });
    }
    // A stored root that no longer parses allows nothing.
    if roots.iter().filter_map(|r| parse(r).ok()).any(|root| under(&parsed, &root)) {
        return Ok(());
    }
    Err(RootError::Outside { project: project.clone(), url: url.to_string(), roots: roots.join(", ") })
}

fn under(url: &StoreUrl, root: &StoreUrl) -> bool {
    match (url, root) {
        (StoreUrl::File { root: p }, StoreUrl::File { root: r }) => p.starts_with(r),
        (StoreUrl::S3(u), StoreUrl::S3(r)) => {
            // Prefixes are empty or end with '/', so `starts_with` stops on a segment boundary.
            u.bucket == r.bucket
                && u.endpoint == r.endpoint
                && u.region == r.region
                && u.force_path_style == r.force_path_style
                && u.prefix.starts_with(&r.prefix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> ProjectName {
        "alpha".parse().expect("name")
    }

    fn roots(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn urls_under_a_root_pass_on_segment_boundaries() {
        let r = roots(&["s3://bucket/tenants/alpha", "file:///srv/walfleet/alpha"]);
        for ok in [
            "s3://bucket/tenants/alpha",
            "s3://bucket/tenants/alpha/",
            "s3://bucket/tenants/alpha/app",
            "s3://bucket/tenants/alpha/app/orders",
            "s3://bucket/tenants/alpha%2Fapp",
            "file:///srv/walfleet/alpha",
            "file:///srv/walfleet/alpha/app",
            "file://localhost/srv/walfleet/alpha/app",
        ] {
            assert_eq!(check(&p(), ok, &r), Ok(()), "{ok}");
        }
        assert_eq!(check(&p(), "s3://whole/x", &roots(&["s3://whole"])), Ok(()));
    }

    #[test]
    fn urls_outside_every_root_are_refused() {
        let r = roots(&["s3://bucket/tenants/alpha", "file:///srv/walfleet/alpha"]);
        for bad in [
            "s3://other-bucket/tenants/alpha/app",
            "s3://bucket/tenants/alphabet",
            "s3://bucket/tenants",
            "s3://bucket/tenants/beta/app",
            "s3://bucket/tenants/alpha/../beta",
            "s3://bucket/tenants/alpha/%2E%2E/beta",
            "s3://bucket/tenants/alpha%2F..%2Fbeta",
            "s3://bucket/tenants/alpha/app?endpoint=http://127.0.0.1:1",
            "s3://bucket/tenants/alpha/app?region=x.attacker.example",
            "s3://bucket/tenants/alpha/app?forcePathStyle=true",
            "s3://Bucket/tenants/alpha/app",
            "file:///etc",
            "file:///srv/walfleet/alpha/../beta",
            "file:///srv/walfleet/alpha/./../beta",
            "file:///srv/walfleet/alphabet",
            "file:///srv/walfleet/alpha%2F..%2Fbeta",
            "file:///srv/walfleet",
            "http://bucket/tenants/alpha",
            "",
        ] {
            assert!(check(&p(), bad, &r).is_err(), "{bad} was accepted");
        }
        let long = format!("s3://bucket/tenants/alpha/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(check(&p(), &long, &r), Err(RootError::TooLong { .. })));
    }

    #[test]
    fn an_endpoint_passes_only_when_the_root_names_exactly_it() {
        let r = roots(&["s3://bucket/alpha?endpoint=https://minio.internal:9000/"]);
        assert_eq!(check(&p(), "s3://bucket/alpha/app?endpoint=https://minio.internal:9000", &r), Ok(()));
        for bad in [
            "s3://bucket/alpha/app",
            "s3://bucket/alpha/app?endpoint=http://minio.internal:9000",
            "s3://bucket/alpha/app?endpoint=https://minio.internal:9001",
            "s3://bucket/alpha/app?endpoint=https://minio.internal:9000@evil.example",
        ] {
            assert!(check(&p(), bad, &r).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn no_roots_refuses_and_says_how_to_set_one() {
        let e = check(&p(), "s3://bucket/alpha/app", &[]).expect_err("no roots");
        let msg = e.to_string();
        assert!(msg.contains("no replica roots") && msg.contains("walfleet projects set-roots alpha"), "{msg}");
        let e = check(&p(), "s3://other/app", &roots(&["s3://bucket/alpha"])).expect_err("outside");
        let msg = e.to_string();
        assert!(msg.contains("s3://other/app") && msg.contains("s3://bucket/alpha"), "{msg}");
    }

    #[test]
    fn roots_are_validated_deduplicated_and_capped() {
        assert_eq!(
            validate_roots(&roots(&[" s3://b/p ", "s3://b/p", "file:///srv/x"])),
            Ok(roots(&["s3://b/p", "file:///srv/x"]))
        );
        for bad in ["b/p", "s3://", "file://relative", "file:///srv/../etc", "s3://b/p?unknown=1"] {
            assert!(matches!(validate_roots(&roots(&[bad])), Err(RootError::Invalid(_))), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_ROOTS).map(|i| format!("s3://b/p{i}")).collect();
        assert_eq!(validate_roots(&many), Err(RootError::TooMany(MAX_ROOTS + 1)));
    }
}
