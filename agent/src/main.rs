use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = agent::config::Cli::parse();
    agent::telemetry::init();
    // rustls sees two crypto providers in this build (ring for gRPC, aws-lc-rs from the AWS
    // SDK); name one or TLS to the controller panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walfleet-agent: start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let cancel = CancellationToken::new();
    rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            agent::signals::cancel_on_signal(c).await;
        });
        match agent::app::run(cli.command, cancel).await {
            Ok(code) => std::process::ExitCode::from(code as u8),
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("walfleet-agent: error: {e:#}");
                std::process::ExitCode::from(1)
            }
        }
    })
}
