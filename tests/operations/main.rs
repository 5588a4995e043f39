//! Operations: the deployment artefacts heimdall ships, checked without the platforms that run them.

mod compose;
