use clap::Parser;
use controller::config::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    agent::telemetry::init(agent::telemetry::format_from_env(cli.log_format), "info,sqlx=warn");
    // rustls sees two crypto providers in this build (ring and aws-lc-rs); use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cancel = CancellationToken::new();
    let result = match cli.command {
        Command::Serve(args) => {
            let c = cancel.clone();
            tokio::spawn(async move {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                c.cancel();
            });
            controller::server::serve(args, cancel).await.map(|()| 0)
        }
        other => controller::cli::run(other).await,
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
