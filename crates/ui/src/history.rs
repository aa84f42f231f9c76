//! Resource history kept by the server: a ring buffer per VM of one point a
//! second (an hour of them), with markers where the OOM killer struck or a limit
//! changed. Pages read it when they open, so graphs survive navigation and
//! reloads; new points reach them over the page's WebSocket.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::backend::Sample;

/// Points kept per VM: an hour at 1 Hz.
pub const POINTS: usize = 3600;
const MARKERS: usize = 256;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Seconds since the epoch.
    pub t: u64,
    /// CPU use in percent of one core over the last interval.
    pub cpu: Option<f64>,
    pub mem: Option<u64>,
    pub mem_limit: Option<u64>,
    pub procs: Option<u64>,
    pub procs_limit: Option<u64>,
    /// Bytes a second read and written over the last interval.
    pub read: Option<f64>,
    pub write: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub t: u64,
    pub what: String,
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
    markers: VecDeque<Marker>,
    last: Option<(f64, Sample)>,
}

#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, Series>>,
}

/// What a page gets: the points and markers of one VM.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub points: Vec<Point>,
    pub markers: Vec<Marker>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn rate(new: Option<u64>, old: Option<u64>, secs: f64) -> Option<f64> {
    Some(new?.saturating_sub(old?) as f64 / secs)
}

impl History {
    /// Add one round of samples; returns the new point of each VM.
    pub fn record(&self, samples: Vec<(String, Sample)>) -> Vec<(String, Point)> {
        self.record_at(now(), samples)
    }

    pub fn record_at(&self, at: f64, samples: Vec<(String, Sample)>) -> Vec<(String, Point)> {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(samples.len());
        for (name, s) in samples {
            let series = all.entry(name.clone()).or_default();
            let u = s.usage;
            let prev = series.last.filter(|(t, _)| at > *t);
            let secs = prev.map(|(t, _)| at - t);
            let old = prev.map(|(_, p)| p.usage);
            let point = Point {
                t: at as u64,
                cpu: secs.and_then(|secs| {
                    rate(u.cpu_ns, old.and_then(|o| o.cpu_ns), secs).map(|ns| ns / 1e7)
                }),
                mem: u.memory,
                mem_limit: s.memory_limit,
                procs: u.processes,
                procs_limit: s.processes_limit,
                read: secs.and_then(|secs| rate(u.io_read, old.and_then(|o| o.io_read), secs)),
                write: secs.and_then(|secs| rate(u.io_write, old.and_then(|o| o.io_write), secs)),
            };
            if let Some((_, p)) = prev {
                let mut mark = |what: String| {
                    if series.markers.len() == MARKERS {
                        series.markers.pop_front();
                    }
                    series.markers.push_back(Marker { t: at as u64, what });
                };
                if let (Some(n), Some(o)) = (u.oom_kills, p.usage.oom_kills)
                    && n > o
                {
                    mark(format!("oom kill ({})", n - o));
                }
                if s.memory_limit != p.memory_limit {
                    mark("memory limit changed".to_owned());
                }
                if s.processes_limit != p.processes_limit {
                    mark("process limit changed".to_owned());
                }
            }
            if series.points.len() == POINTS {
                series.points.pop_front();
            }
            series.points.push_back(point);
            series.last = Some((at, s));
            out.push((name, point));
        }
        out
    }

    pub fn snapshot(&self, name: &str, last: usize) -> Snapshot {
        let all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        match all.get(name) {
            Some(s) => Snapshot {
                points: s
                    .points
                    .iter()
                    .skip(s.points.len().saturating_sub(last))
                    .copied()
                    .collect(),
                markers: s.markers.iter().cloned().collect(),
            },
            None => Snapshot {
                points: Vec::new(),
                markers: Vec::new(),
            },
        }
    }

    /// Forget VMs that are gone.
    pub fn retain(&self, names: &[String]) {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|n, _| names.contains(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fvm_engine::cgroup::Usage;

    fn sample(cpu_ns: u64, oom: u64, limit: u64) -> Sample {
        Sample {
            usage: Usage {
                cpu_ns: Some(cpu_ns),
                oom_kills: Some(oom),
                ..Usage::default()
            },
            memory_limit: Some(limit),
            processes_limit: None,
        }
    }

    #[test]
    fn rates_markers_and_a_bounded_ring() {
        let h = History::default();
        h.record_at(100.0, vec![("a".into(), sample(0, 0, 10))]);
        let p = h.record_at(101.0, vec![("a".into(), sample(500_000_000, 1, 20))]);
        assert_eq!(p[0].1.cpu, Some(50.0));
        let snap = h.snapshot("a", 10);
        assert_eq!(snap.points.len(), 2);
        let what: Vec<&str> = snap.markers.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(what, ["oom kill (1)", "memory limit changed"]);
        for i in 0..POINTS + 5 {
            h.record_at(200.0 + i as f64, vec![("a".into(), sample(0, 1, 20))]);
        }
        assert_eq!(h.snapshot("a", usize::MAX).points.len(), POINTS);
    }
}
