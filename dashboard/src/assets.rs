//! The stylesheet and script, compiled into the binary.

pub const APP_CSS: &str = include_str!("../assets/app.css");
pub const APP_JS: &str = include_str!("../assets/app.js");

/// A short content hash, so the pages can name `/assets/app.css?v=…` and let browsers cache it
/// for good.
pub fn version() -> String {
    // FNV-1a over both files: stable across builds of the same sources.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in APP_CSS.bytes().chain(APP_JS.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}
