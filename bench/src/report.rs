//! A scenario's result: named figures in a fixed order, printed as a table
//! for people and as one JSON line for scripts (the last line of stdout),
//! plus the checks that the counts add up.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

/// One scenario's figures, in the order they were added.
#[derive(Debug)]
pub(crate) struct Report {
    scenario: String,
    rows: Vec<Row>,
    /// Counts that do not add up; empty when all is well.
    failures: Vec<String>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Row {
    key: String,
    label: String,
    value: Value,
}

impl Report {
    pub(crate) fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            rows: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a figure: `key` in the JSON, `label` in the table.
    pub(crate) fn add(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        self.rows.push(Row {
            key: key.to_owned(),
            label: label.to_owned(),
            value: value.into(),
        });
    }

    /// Adds a figure if it is known.
    pub(crate) fn add_opt(&mut self, key: &str, label: &str, value: Option<impl Into<Value>>) {
        if let Some(v) = value {
            self.add(key, label, v);
        }
    }

    /// Adds a rate, rounded to a whole number per second.
    pub(crate) fn rate(&mut self, key: &str, label: &str, count: u64, elapsed: Duration) {
        self.add(key, label, per_second(count, elapsed).round() as u64);
    }

    /// Adds seconds, to the microsecond.
    pub(crate) fn seconds(&mut self, key: &str, label: &str, d: Duration) {
        self.add(key, label, round(d.as_secs_f64(), 6));
    }

    /// Records a check; a false one makes the scenario fail.
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// A line printed under the table and kept in the JSON (`notes`).
    #[allow(dead_code)] // for scenarios with caveats to print
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether every check held.
    pub(crate) fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Folds another report's figures in under `prefix` (e.g. `limit_`).
    pub(crate) fn merge(&mut self, prefix: &str, other: Report) {
        for row in other.rows {
            self.rows.push(Row {
                key: format!("{prefix}{}", row.key),
                label: format!("{prefix}{}", row.label),
                value: row.value,
            });
        }
        self.failures
            .extend(other.failures.into_iter().map(|f| format!("{prefix}{f}")));
        self.notes.extend(other.notes);
    }

    /// The same report without the figures named in `keys`.
    pub(crate) fn without(mut self, keys: &[&str]) -> Report {
        self.rows.retain(|r| !keys.contains(&r.key.as_str()));
        self
    }

    /// The value of a figure added earlier.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.rows.iter().find(|r| r.key == key).map(|r| &r.value)
    }

    /// The JSON line: `scenario`, `ok`, every figure, `failures`, `notes`.
    pub(crate) fn json(&self) -> String {
        let mut parts = vec![
            format!("\"scenario\":{}", Value::from(self.scenario.as_str())),
            format!("\"ok\":{}", self.ok()),
        ];
        for row in &self.rows {
            parts.push(format!("{}:{}", Value::from(row.key.as_str()), row.value));
        }
        parts.push(format!(
            "\"failures\":{}",
            Value::from(self.failures.clone())
        ));
        parts.push(format!("\"notes\":{}", Value::from(self.notes.clone())));
        format!("{{{}}}", parts.join(","))
    }

    /// The human table.
    pub(crate) fn table(&self) -> String {
        let width = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        let mut out = format!("icom-bench {}\n", self.scenario);
        for row in &self.rows {
            let value = match &row.value {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            out.push_str(&format!("  {:<width$}  {value}\n", row.label));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        if self.ok() {
            out.push_str("  result: ok\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("  FAILED: {f}\n"));
            }
        }
        out
    }

    /// Prints the table (unless `json_only`) and then the JSON line.
    ///
    /// # Errors
    /// When stdout cannot be written.
    pub(crate) fn print(&self, json_only: bool) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if !json_only {
            out.write_all(self.table().as_bytes())?;
        }
        writeln!(out, "{}", self.json())?;
        out.flush()
    }
}

/// Events per second.
pub(crate) fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Rounds to `digits` decimals.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// Latency samples, summarised by nearest-rank percentiles.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub(crate) fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    pub(crate) fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// Adds `<key>_p50_us` … `<key>_p999_us` and `<key>_max_us` to `report`.
    pub(crate) fn add_to(&mut self, report: &mut Report, key: &str, label: &str) {
        if self.samples.is_empty() {
            return;
        }
        self.samples.sort_unstable();
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            let v = self.quantile(q);
            report.add(
                &format!("{key}_{name}_us"),
                &format!("{label} {name} (µs)"),
                round(v.as_secs_f64() * 1e6, 1),
            );
        }
        let max = self.samples.last().copied().unwrap_or_default();
        report.add(
            &format!("{key}_max_us"),
            &format!("{label} max (µs)"),
            round(max.as_secs_f64() * 1e6, 1),
        );
    }

    /// The nearest-rank quantile of sorted samples.
    fn quantile(&self, q: f64) -> Duration {
        let n = self.samples.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.samples[rank - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for us in 1..=1000 {
            l.push(Duration::from_micros(us));
        }
        let mut r = Report::new("t");
        l.add_to(&mut r, "rtt", "rtt");
        assert_eq!(r.get("rtt_p50_us"), Some(&Value::from(500.0)));
        assert_eq!(r.get("rtt_p99_us"), Some(&Value::from(990.0)));
        assert_eq!(r.get("rtt_p999_us"), Some(&Value::from(999.0)));
        assert_eq!(r.get("rtt_max_us"), Some(&Value::from(1000.0)));
    }

    #[test]
    fn the_json_line_keeps_the_order_and_the_verdict() {
        let mut r = Report::new("tput");
        r.add("sent", "sent", 3);
        r.add("acked", "acked", 2);
        r.check(false, "acked 2 of 3");
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["sent"], 3);
        assert!(r.json().find("sent") < r.json().find("acked"));
        assert!(r.table().contains("FAILED: acked 2 of 3"));
    }
}
