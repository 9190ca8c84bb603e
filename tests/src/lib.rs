//! Helpers shared by the root integration tests (node namespaces, plugin exec).
