//! Where objects live under a database's root.
//!
//! ```text
//! <root>/<generation:016x>/manifest.json
//! <root>/<generation:016x>/<level:04x>/<min:016x>-<max:016x>.ltx      (S3, as Litestream lays out S3)
//! <root>/<generation:016x>/ltx/<level>/<min:016x>-<max:016x>.ltx      (file, as Litestream lays out files)
//! ```
//!
//! A generation prefix is therefore exactly what `litestream restore` expects of a replica of
//! the same backend, and a Litestream replica is a generation without a manifest.

use proto::model::{Generation, Txid};

use crate::object_store::{Backend, Listing};

/// The level Litestream keeps full snapshots in.
pub const SNAPSHOT_LEVEL: u8 = 9;
pub const MANIFEST: &str = "manifest.json";

/// A prefix inside the store: empty for the store root, else ending in '/'.
pub fn generation_prefix(generation: Generation) -> String {
    format!("{generation}/")
}

pub fn manifest_key(generation: Generation) -> String {
    format!("{generation}/{MANIFEST}")
}

/// Key of an LTX file relative to a generation prefix (`base`, empty or ending in '/').
pub fn ltx_key(backend: &Backend, base: &str, level: u8, min: Txid, max: Txid) -> String {
    let name = crate::ltx::filename(min.0, max.0);
    match backend {
        Backend::S3 => format!("{base}{level:04x}/{name}"),
        Backend::File => format!("{base}ltx/{level}/{name}"),
    }
}

/// One LTX object found under a generation prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LtxObject {
    pub key: String,
    pub level: u8,
    pub min: Txid,
    pub max: Txid,
    pub size: u64,
}

/// Picks the LTX files out of a listing of `base` (recursive). Other objects are ignored.
pub fn ltx_objects(backend: &Backend, base: &str, listing: &Listing) -> Vec<LtxObject> {
    let mut out = Vec::new();
    for obj in &listing.objects {
        let Some(rest) = obj.key.strip_prefix(base) else { continue };
        let (level, name) = match backend {
            Backend::S3 => match rest.split_once('/') {
                Some((l, n)) if l.len() == 4 => (u8::from_str_radix(l, 16).ok(), n),
                _ => continue,
            },
            Backend::File => match rest.strip_prefix("ltx/").and_then(|r| r.split_once('/')) {
                Some((l, n)) => (l.parse::<u8>().ok(), n),
                None => continue,
            },
        };
        let (Some(level), Some((min, max))) = (level, crate::ltx::parse_filename(name)) else { continue };
        // TXIDs start at 1 and grow by one, so a range that runs backwards, or ends at the
        // largest TXID (no transaction could follow it), is not an LTX file of a replica.
        if min == 0 || min > max || max == u64::MAX {
            continue;
        }
        out.push(LtxObject { key: obj.key.clone(), level, min: Txid(min), max: Txid(max), size: obj.size });
    }
    out.sort_by_key(|o| (o.level, o.min, o.max));
    out
}

/// The generation after `last`, or an error naming the replica when `last` is the largest
/// number (a prefix named `ffffffffffffffff` leaves no room for another writer).
pub fn next_generation(last: Generation) -> anyhow::Result<Generation> {
    match last.0.checked_add(1) {
        Some(n) => Ok(Generation(n)),
        None => anyhow::bail!("the replica holds generation {last}, the largest possible: no generation can follow it"),
    }
}

/// Generation numbers named by the common prefixes of a root listing.
pub fn generations(listing: &Listing) -> Vec<Generation> {
    let mut gens: Vec<Generation> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.trim_end_matches('/').rsplit('/').next()?.parse().ok())
        .collect();
    gens.sort();
    gens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::ObjectMeta;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta { key: key.to_string(), size: 10, etag: None, last_modified: None, timestamp: None }
    }

    #[test]
    fn keys_follow_litestream_layout_per_backend() {
        let g = Generation(3);
        let base = generation_prefix(g);
        assert_eq!(
            ltx_key(&Backend::S3, &base, 9, Txid(1), Txid(0x20)),
            "0000000000000003/0009/0000000000000001-0000000000000020.ltx"
        );
        assert_eq!(
            ltx_key(&Backend::File, &base, 0, Txid(5), Txid(5)),
            "0000000000000003/ltx/0/0000000000000005-0000000000000005.ltx"
        );
    }

    #[test]
    fn listing_parses_back_into_ltx_objects_and_ignores_the_rest() {
        let base = "0000000000000003/";
        for backend in [Backend::S3, Backend::File] {
            let keys = [
                ltx_key(&backend, base, 0, Txid(2), Txid(2)),
                ltx_key(&backend, base, 1, Txid(1), Txid(2)),
                ltx_key(&backend, base, 0, Txid(3), Txid(u64::MAX)),
                ltx_key(&backend, base, 0, Txid(5), Txid(4)),
                ltx_key(&backend, base, 0, Txid(0), Txid(0)),
                format!("{base}manifest.json"),
                format!("{base}0000/garbage.ltx"),
                format!("{base}ltx/x/0000000000000001-0000000000000001.ltx"),
            ];
            let listing = Listing { objects: keys.iter().map(|k| meta(k)).collect(), common_prefixes: vec![] };
            let objs = ltx_objects(&backend, base, &listing);
            assert_eq!(objs.len(), 2, "{backend:?}: {objs:?}");
            assert_eq!((objs[0].level, objs[0].min, objs[0].max), (0, Txid(2), Txid(2)));
            assert_eq!((objs[1].level, objs[1].min, objs[1].max), (1, Txid(1), Txid(2)));
        }
    }

    #[test]
    fn generations_come_from_common_prefixes_only_when_well_formed() {
        let listing = Listing {
            objects: vec![],
            common_prefixes: vec![
                "0000000000000002/".into(),
                "0000000000000010/".into(),
                "ltx/".into(),
                "0000000000000001/".into(),
            ],
        };
        assert_eq!(generations(&listing), vec![Generation(1), Generation(2), Generation(16)]);
    }
}
