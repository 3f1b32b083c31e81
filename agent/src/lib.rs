//! walfleet's data plane: WAL capture, LTX encoding, object storage, replication and restore.

pub mod app;
pub mod config;
pub mod control;
pub mod health;
pub mod layout;
pub mod ltx;
pub mod manifest;
pub mod object_store;
pub mod pages;
pub mod replicate;
pub mod restore;
pub mod retention;
pub mod run;
pub mod seed;
pub mod signals;
pub mod telemetry;
pub mod wal;
