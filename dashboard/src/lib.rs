//! walfleet's fleet dashboard: the pages `walfleet serve` renders on its HTTP address, and the
//! stylesheet and script they load (embedded in the binary: nothing to install, no CDN).
//!
//! Every page is rendered on the server from the admin API's own answers (`proto::v1` types),
//! so the dashboard shows exactly what `walfleet databases`, `walfleet events` and
//! `walfleet generations` print. A page's `#live` region is fetched again every few seconds
//! (the request carries `X-Live: 1` and gets only that region), so it updates without a reload.
//! Nothing here touches the network or the store: the controller's `http` module gathers the
//! data and checks access; this crate only turns it into HTML.

pub mod assets;
pub mod database;
pub mod events;
pub mod fleet;
mod fmt;
mod layout;
pub mod proof;

pub use layout::{login, notice, Page, Session};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// How often an open page asks for its live region again.
pub const LIVE_EVERY_MS: u64 = 5_000;
