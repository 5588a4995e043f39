//! Operating heimdall in production: one test binary, one module per feature.

mod tls;
