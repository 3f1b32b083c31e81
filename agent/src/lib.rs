//! walfleet's data plane: WAL capture, LTX encoding, object storage, replication and restore.

pub mod ltx;
pub mod object_store;
pub mod wal;
