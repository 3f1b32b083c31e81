//! walfleet's control plane: generations, single-writer leases, duplicate detection, the admin
//! API and CLI. The binary `walfleet` is a thin shell over this library.

pub mod auth;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod http;
pub mod inventory;
pub mod lease;
pub mod metrics;
pub mod roots;
pub mod server;
pub mod store;
pub mod tls;
