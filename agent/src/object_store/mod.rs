//! Object storage: S3-compatible servers and local directories behind one type.
