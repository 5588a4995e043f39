//! Operating heimdall in production, each feature against real peers: one test binary, one file per feature.

mod tracing;
