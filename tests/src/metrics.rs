//! Prometheus text exposition, parsed tolerantly.
//!
//! Keys are series as written: `walfleet_local_txid{db="app"}`; selectors pick series by
//! metric name and a subset of labels, in any order: `walfleet_object_store_requests_total`
//! (all series summed) or `walfleet_object_store_requests_total{kind="put"}`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

/// One scrape: series key (name plus labels as written) → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub HashMap<String, f64>);

impl Deref for Metrics {
    type Target = HashMap<String, f64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Metrics {
    /// Parses Prometheus text format; comment, blank and malformed lines are ignored.
    pub fn parse(text: &str) -> Metrics {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, rest)) = split_series(line) else {
                continue;
            };
            let Some(value) = rest.split_whitespace().next().and_then(parse_value) else {
                continue;
            };
            map.insert(key.to_owned(), value);
        }
        Metrics(map)
    }

    /// Sum of every series matching `selector` (name, optionally `{label="v",…}` that must all
    /// be present on the series); `None` if no series matches.
    pub fn select(&self, selector: &str) -> Option<f64> {
        let (want_name, want_labels) = parse_key(selector)?;
        let mut found = None;
        for (key, v) in &self.0 {
            let Some((name, labels)) = parse_key(key) else {
                continue;
            };
            if name == want_name && want_labels.iter().all(|(k, w)| labels.get(k) == Some(w)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// [`Metrics::select`] with 0.0 when nothing matches (counters not yet incremented).
    pub fn sum(&self, selector: &str) -> f64 {
        self.select(selector).unwrap_or(0.0)
    }

    /// Series whose key starts with `prefix`, sorted by key.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, f64)> {
        let mut v: Vec<_> =
            self.0.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every series, sorted, one per line (for failure messages).
    pub fn dump(&self) -> String {
        self.with_prefix("").iter().map(|(k, v)| format!("{k} {v}\n")).collect()
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Splits `name{labels} value…` / `name value…` into key and the rest, honouring quotes.
fn split_series(line: &str) -> Option<(&str, &str)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    if line[name_end..].starts_with('{') {
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    let end = name_end + i + 1;
                    return Some((&line[..end], &line[end..]));
                }
                _ => {}
            }
        }
        None
    } else {
        Some((&line[..name_end], &line[name_end..]))
    }
}

/// `name{a="x",b="y"}` → (name, {a: x, b: y}).
fn parse_key(key: &str) -> Option<(&str, BTreeMap<String, String>)> {
    let key = key.trim();
    let Some(open) = key.find('{') else {
        return Some((key, BTreeMap::new()));
    };
    let body = key[open + 1..].strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        rest = &after[end?..];
    }
    Some((&key[..open], labels))
}
