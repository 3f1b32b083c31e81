//! Reading SQLite WAL files.
