//! A small Prometheus text-format registry: counters and gauges by name and labels, cheap to
//! bump from hot paths (one atomic add once the handle is held).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter or gauge value.
#[derive(Debug, Clone, Default)]
pub struct Value(Arc<AtomicI64>);

impl Value {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<String, Value>,
}

/// Named metric families, rendered as Prometheus text.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

impl Registry {
    fn get(
        &self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Value {
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut fams = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let fam = fams.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        fam.series.entry(key).or_default().clone()
    }

    /// A counter (only goes up).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Value {
        self.get(name, "counter", help, labels)
    }

    /// A gauge (set to the current value).
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Value {
        self.get(name, "gauge", help, labels)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let fams = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                fam.help, fam.kind
            ));
            for (labels, v) in &fam.series {
                if labels.is_empty() {
                    out.push_str(&format!("{name} {}\n", v.get()));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {}\n", v.get()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::default();
        r.counter("runs_total", "runs", &[("status", "ok")]).add(3);
        r.gauge("warm", "warm containers", &[]).set(2);
        let text = r.render();
        assert!(
            text.contains("# TYPE runs_total counter\nruns_total{status=\"ok\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("warm 2\n"), "{text}");
    }
}
