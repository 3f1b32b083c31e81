//! walfleet's black-box integration tests: ONE test binary, one module per area.
//! Run them with `scripts/test.sh` (installs tools, builds the binaries, runs nextest).

mod ceph;
mod dashboard;
mod encryption;
mod errors;
mod fencing;
mod fleet;
mod garage;
mod harness;
mod interop;
mod inventory;
mod large;
mod lifecycle;
mod logs;
mod persistence;
mod point_in_time;
mod safety_agent;
mod safety_restore;
mod security_controller;
mod transport;
