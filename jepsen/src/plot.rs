//! Latency and throughput over time as an SVG, drawn as Jepsen draws them:
//! one dot per operation at its invocation time and latency (log scale),
//! coloured by outcome; below, completed operations per second; nemesis
//! intervals shaded across both.

use std::fmt::Write as _;

use crate::history::{Event, Outcome};
use crate::nemesis::FaultInterval;

const WIDTH: f64 = 1000.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const LATENCY_TOP: f64 = 30.0;
const LATENCY_HEIGHT: f64 = 300.0;
const RATE_TOP: f64 = 370.0;
const RATE_HEIGHT: f64 = 120.0;
const HEIGHT: f64 = 530.0;
/// Latency axis: 0.1 ms to 100 s.
const LOG_MS_MIN: f64 = -1.0;
const LOG_MS_MAX: f64 = 5.0;

/// One completed or unfinished operation: when it started and how long it
/// took, in seconds since the run started.
struct Point {
    start_s: f64,
    latency_s: f64,
    outcome: Outcome,
}

/// Renders the histories of a run (any number of them) and its faults.
pub fn render(title: &str, histories: &[&[Event]], faults: &[FaultInterval], duration_s: f64) -> String {
    let points: Vec<Point> = histories.iter().flat_map(|events| points(events)).collect();
    let duration_s = duration_s.max(points.iter().map(|p| p.start_s + p.latency_s).fold(1.0, f64::max));
    let x = |t: f64| MARGIN_LEFT + t / duration_s * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{MARGIN_LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    for fault in faults {
        let (x0, x1) = (x(fault.start_s), x(fault.end_s));
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{LATENCY_TOP}" width="{:.1}" height="{:.1}" fill="#f4c7a1" opacity="0.5"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            RATE_TOP + RATE_HEIGHT - LATENCY_TOP,
            escape(&fault.target)
        );
    }
    latency_panel(&mut svg, &points, &x);
    rate_panel(&mut svg, &points, duration_s, &x);
    svg.push_str("</svg>\n");
    svg
}

fn points(events: &[Event]) -> Vec<Point> {
    let Ok(ops) = crate::history::pair(events) else {
        return Vec::new();
    };
    let seconds = |index: usize| events[index].time.unwrap_or(0) as f64 / 1e9;
    let end_s = events.last().map(|e| e.time.unwrap_or(0) as f64 / 1e9).unwrap_or(0.0);
    ops.iter()
        .map(|op| {
            let start_s = seconds(op.invoke);
            let latency_s = op.complete.map(seconds).unwrap_or(end_s) - start_s;
            Point {
                start_s,
                latency_s: latency_s.max(1e-4),
                outcome: op.outcome,
            }
        })
        .collect()
}

fn latency_panel(svg: &mut String, points: &[Point], x: &impl Fn(f64) -> f64) {
    let y = |latency_s: f64| {
        let log_ms = (latency_s * 1e3).log10().clamp(LOG_MS_MIN, LOG_MS_MAX);
        LATENCY_TOP + LATENCY_HEIGHT * (1.0 - (log_ms - LOG_MS_MIN) / (LOG_MS_MAX - LOG_MS_MIN))
    };
    axes(svg, LATENCY_TOP, LATENCY_HEIGHT, "latency (ms, log)");
    for exp in (LOG_MS_MIN as i32)..=(LOG_MS_MAX as i32) {
        let ms = 10f64.powi(exp);
        let yy = y(ms / 1e3);
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{ms}</text>"##,
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 4.0,
            yy + 4.0
        );
    }
    for p in points {
        let colour = match p.outcome {
            Outcome::Ok => "#2b8cbe",
            Outcome::Fail => "#e34a33",
            Outcome::Info => "#fdae61",
        };
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{colour}" opacity="0.7"/>"#,
            x(p.start_s),
            y(p.latency_s)
        );
    }
    let legend = [("ok", "#2b8cbe"), ("fail", "#e34a33"), ("info", "#fdae61")];
    for (i, (label, colour)) in legend.iter().enumerate() {
        let lx = WIDTH - 200.0 + i as f64 * 60.0;
        let _ = write!(
            svg,
            r#"<circle cx="{lx}" cy="14" r="4" fill="{colour}"/><text x="{}" y="18">{label}</text>"#,
            lx + 8.0
        );
    }
}

fn rate_panel(svg: &mut String, points: &[Point], duration_s: f64, x: &impl Fn(f64) -> f64) {
    let buckets = duration_s.ceil().max(1.0) as usize;
    let mut per_second = vec![0u32; buckets + 1];
    for p in points.iter().filter(|p| p.outcome == Outcome::Ok) {
        let second = ((p.start_s + p.latency_s) as usize).min(buckets);
        per_second[second] += 1;
    }
    let peak = f64::from(per_second.iter().copied().max().unwrap_or(1).max(1));
    axes(svg, RATE_TOP, RATE_HEIGHT, "ok ops/s");
    let path: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(s, n)| {
            format!(
                "{:.1},{:.1}",
                x(s as f64),
                RATE_TOP + RATE_HEIGHT * (1.0 - f64::from(*n) / peak)
            )
        })
        .collect();
    let _ = write!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#31a354"/><text x="{}" y="{}" text-anchor="end">{peak}</text><text x="{}" y="{}">time (s), {duration_s:.0} s</text>"##,
        path.join(" "),
        MARGIN_LEFT - 4.0,
        RATE_TOP + 4.0,
        WIDTH / 2.0,
        RATE_TOP + RATE_HEIGHT + 25.0
    );
}

fn axes(svg: &mut String, top: f64, height: f64, label: &str) {
    let _ = write!(
        svg,
        r#"<rect x="{MARGIN_LEFT}" y="{top}" width="{}" height="{height}" fill="none" stroke="black"/><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{label}</text>"#,
        WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
        top + height / 2.0,
        top + height / 2.0
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{EventType, Func};

    #[test]
    fn every_operation_becomes_a_dot_and_every_fault_a_band() {
        let mut events = Vec::new();
        for (i, kind) in [EventType::Ok, EventType::Fail, EventType::Info]
            .into_iter()
            .enumerate()
        {
            let mut invoke = Event::new(EventType::Invoke, i as u64, Func::Read, "k", json!(null));
            invoke.time = Some(i as u64 * 1_000_000_000);
            let mut done = Event::new(kind, i as u64, Func::Read, "k", json!(null));
            done.time = Some(i as u64 * 1_000_000_000 + 5_000_000);
            events.extend([invoke, done]);
        }
        let fault = FaultInterval {
            kind: crate::nemesis::NemesisKind::Kill,
            target: "kill ns1".into(),
            start_s: 0.5,
            end_s: 1.5,
            error: None,
        };
        let svg = render("t <1>", &[&events], &[fault], 3.0);
        assert_eq!(
            svg.matches("<circle").count(),
            3 + 3,
            "three dots and three legend marks"
        );
        assert!(svg.contains("<title>kill ns1</title>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
