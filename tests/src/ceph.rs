//! The Ceph RGW realism tier: a production S3 implementation whose conditional writes are
//! atomic under races. One cluster serves a whole test run: `scripts/test.sh` boots it with
//! `scripts/ceph.sh` and names its settings file in `WALFLEET_CEPH_ENV`. Each test works under
//! a prefix of its own in the shared bucket.

use anyhow::{bail, Context, Result};

pub struct Rgw {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
}

impl Rgw {
    /// The running cluster; an error (never a skip) when the test run did not start one.
    pub fn get() -> Result<Rgw> {
        let Some(path) = std::env::var_os("WALFLEET_CEPH_ENV") else {
            bail!("no Ceph RGW for this run: WALFLEET_CEPH_ENV is not set; run the tests with scripts/test.sh");
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (WALFLEET_CEPH_ENV)", path.to_string_lossy()))?;
        let get = |name: &str| -> Result<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
                .with_context(|| format!("{name} missing from {}", path.to_string_lossy()))
        };
        Ok(Rgw {
            endpoint: get("WALFLEET_CEPH_ENDPOINT")?,
            access_key: get("WALFLEET_CEPH_ACCESS_KEY")?,
            secret_key: get("WALFLEET_CEPH_SECRET_KEY")?,
            bucket: get("WALFLEET_CEPH_BUCKET")?,
        })
    }

    /// A replica URL under a prefix no other test uses.
    pub fn unique_url(&self, name: &str) -> String {
        format!("s3://{}/{name}-{:016x}", self.bucket, rand::random::<u64>())
    }

    /// AWS variables pointing at RGW.
    pub fn env(&self) -> Vec<(String, String)> {
        crate::s3::aws_env(&self.endpoint, &self.access_key, &self.secret_key)
    }
}
