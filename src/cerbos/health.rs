//! The PDP's health in readiness: `cerbos` blocks `/ready` until Cerbos answers its gRPC health
//! check `SERVING`, and again whenever it stops answering.

use std::time::Duration;

use tonic::transport::Channel;

/// Reports the PDP's health into readiness: `cerbos` blocks `/ready` until the PDP answers
/// `SERVING`, and again whenever it stops answering.
pub async fn watch_health(
    channel: Channel,
    readiness: crate::readiness::Readiness,
    interval: Duration,
    timeout: Duration,
) {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut blocker = Some(readiness.block("cerbos"));
    loop {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let serving = matches!(
            tokio::time::timeout(timeout.max(Duration::from_millis(500)), client.check(request)).await,
            Ok(Ok(response)) if response.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        match (serving, blocker.is_some()) {
            (true, true) => {
                tracing::info!("Cerbos is serving");
                blocker = None;
            }
            (false, false) => {
                tracing::warn!("Cerbos stopped answering its health check");
                blocker = Some(readiness.block("cerbos"));
            }
            _ => {}
        }
        tokio::time::sleep(interval).await;
    }
}
