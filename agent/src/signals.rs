//! SIGTERM and SIGINT become one cancellation.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub async fn cancel_on_signal(cancel: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("sigterm: shutting down"),
        _ = int.recv() => tracing::info!("sigint: shutting down"),
        _ = cancel.cancelled() => {}
    }
    cancel.cancel();
}
