//! The Cerbos API messages and service heimdall calls, generated from `proto/`.
//!
//! The generated packages are nested modules: `pb::cerbos::svc::v1` (the client,
//! `cerbos_service_client::CerbosServiceClient`), `pb::cerbos::request::v1`,
//! `pb::cerbos::response::v1`, `pb::cerbos::engine::v1`, `pb::cerbos::effect::v1` and
//! `pb::cerbos::schema::v1`. Well-known types such as `google.protobuf.Value` are `prost_types`.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::restriction,
    unreachable_pub,
    unused_qualifications,
    reason = "generated code"
)]

include!(concat!(env!("OUT_DIR"), "/cerbos_api.rs"));
