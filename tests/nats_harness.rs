//! The NATS test harness itself (`heimdall::test_helpers::nats`): a JetStream stream stored on file
//! survives a crash (SIGKILL) and restart of the server on the same port and store directory,
//! which the tests of heimdall's NATS support rely on.

#![allow(
    clippy::expect_used,
    reason = "test code: a failed call is a failed test"
)]

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use heimdall::test_helpers::nats::NatsServer;

#[tokio::test]
async fn nats_server_restarts_with_its_streams() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let Some(mut nats) = NatsServer::start().await else {
            return;
        };
        let port = nats.port();
        let js = jetstream::new(nats.client().await);
        js.get_or_create_stream(stream::Config {
            name: "T".to_owned(),
            subjects: vec!["t.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream T");
        for i in 0..3 {
            // The first await sends the message, the second waits for JetStream's ack.
            js.publish(format!("t.{i}"), format!("message {i}").into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }

        nats.kill().await;
        assert!(!nats.is_running());
        nats.restart().await;
        assert_eq!(nats.port(), port, "restarted on another port");

        let js = jetstream::new(nats.client().await);
        let info = js
            .get_stream("T")
            .await
            .expect("stream T after the restart")
            .get_info()
            .await
            .expect("stream T info");
        assert_eq!(
            info.state.messages,
            3,
            "messages of T after the restart\n--- NATS log ---\n{}",
            nats.log()
        );
    })
    .await
    .expect("the test did not finish within 60 s");
}
