use clap::Parser;
use controller::config::{Cli, Command};
use tokio_util::sync::CancellationToken;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    let json = std::env::var("WALFLEET_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
