//! Logging to stderr, shaped for the platforms that capture it: ANSI colour only when stderr is
//! a terminal (Cloud Run, App Platform, Fly and Kubernetes read it through a pipe), or one JSON
//! object per line (`--log-format json` / `WALFLEET_LOG_FORMAT=json`) with the fields their log
//! viewers read: `severity` (Cloud Logging's names), `message`, `timestamp`, the event's
//! fields and those of its spans. Filter: `WALFLEET_LOG` (or `RUST_LOG`), `RUST_LOG` syntax.
//! Shared by `walfleet-agent` and `walfleet`.

use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    Plain,
    /// One JSON object per line.
    Json,
}

/// The format asked for on the command line, else `WALFLEET_LOG_FORMAT`, else plain.
pub fn format_from_env(flag: Option<LogFormat>) -> LogFormat {
    flag.unwrap_or_else(|| match std::env::var("WALFLEET_LOG_FORMAT") {
        Ok(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Plain,
    })
}

/// Installs the global subscriber. `default_filter` applies when neither `WALFLEET_LOG` nor
/// `RUST_LOG` is set (or when the one set does not parse).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = ["WALFLEET_LOG", "RUST_LOG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.fmt_fields(JsonFields::new()).event_format(JsonLine).init(),
    }
}

/// Cloud Logging's severity names (also read by App Platform, Fly and most collectors).
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// One line: `{"timestamp", "severity", "message", "target", <event fields>, "spans": [..]}`.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("severity".into(), severity(meta.level()).into());
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);
        line.insert("target".into(), meta.target().into());
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                let mut obj = Map::new();
                obj.insert("name".into(), span.name().into());
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f.as_str()) {
                        obj.extend(m);
                    }
                }
                spans.push(Value::Object(obj));
            }
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}
