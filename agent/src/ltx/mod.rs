//! LTX files (superfly/ltx format v3, as Litestream 0.5 writes them).
