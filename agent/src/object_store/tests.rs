//! Tests for the object store.
