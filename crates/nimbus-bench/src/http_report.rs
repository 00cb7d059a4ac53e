//! `nimbus bench http`'s report as charts like the CloudWatch figures seed 003 showed
//! (RequestCount, RequestCountPerTarget and TargetResponseTime over time, per cluster path):
//! PNG files, and one HTML page with the same charts as inline SVG and the tables.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::http::{table, Report};

/// A chart or file error.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Drawing failed.
    #[error("cannot draw the chart: {0}")]
    Chart(String),
    /// Writing failed.
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

fn chart_error(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// A chart: its file stem, title, y axis and lines of (seconds, value).
struct Chart {
    stem: String,
    title: String,
    y: &'static str,
    lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// The three charts of each path.
fn charts(report: &Report) -> Vec<Chart> {
    let mut by_path: BTreeMap<&str, Vec<&crate::http::BucketRow>> = BTreeMap::new();
    for row in &report.buckets {
        by_path.entry(row.path.as_str()).or_default().push(row);
    }
    let width = report.bucket_seconds;
    let mut out = Vec::new();
    for (path, rows) in by_path {
        let first = rows.iter().map(|r| r.start_s).fold(f64::INFINITY, f64::min);
        let last = rows.iter().map(|r| r.start_s).fold(0.0, f64::max);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let steps = ((last - first) / width).round() as usize + 1;
        let xs: Vec<f64> = (0..steps).map(|i| first + width * i as f64).collect();
        let at = |x: f64, r: &&crate::http::BucketRow| (r.start_s - x).abs() < width / 2.0;
        let total: Vec<(f64, f64)> = xs
            .iter()
            .map(|&x| {
                (
                    x,
                    rows.iter()
                        .filter(|r| at(x, r))
                        .map(|r| r.requests as f64)
                        .sum(),
                )
            })
            .collect();
        let targets: Vec<&str> = {
            let mut t: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let per_target = targets
            .iter()
            .map(|&t| {
                let line = xs
                    .iter()
                    .map(|&x| {
                        let n = rows
                            .iter()
                            .filter(|r| r.target == t && at(x, r))
                            .map(|r| r.requests as f64)
                            .sum();
                        (x, n)
                    })
                    .collect();
                (t.to_string(), line)
            })
            .collect();
        let mut mean = Vec::new();
        let mut p99 = Vec::new();
        for &x in &xs {
            let here: Vec<_> = rows.iter().filter(|r| at(x, r)).collect();
            let n: u64 = here.iter().map(|r| r.requests).sum();
            if n > 0 {
                let weighted: f64 = here
                    .iter()
                    .map(|r| r.latency.mean_ms * r.requests as f64)
                    .sum();
                mean.push((x, weighted / n as f64));
                p99.push((x, here.iter().map(|r| r.latency.p99_ms).fold(0.0, f64::max)));
            }
        }
        let name = path.trim_matches('/').replace('/', "-");
        let name = if name.is_empty() {
            "root".to_string()
        } else {
            name
        };
        out.push(Chart {
            stem: format!("{name}-request-count"),
            title: format!("RequestCount (sum per {width} s), {path}"),
            y: "requests",
            lines: vec![("all targets".into(), total)],
        });
        out.push(Chart {
            stem: format!("{name}-request-count-per-target"),
            title: format!("RequestCountPerTarget (sum per {width} s), {path}"),
            y: "requests",
            lines: per_target,
        });
        out.push(Chart {
            stem: format!("{name}-target-response-time"),
            title: format!("TargetResponseTime, {path}"),
            y: "milliseconds",
            lines: vec![("mean".into(), mean), ("p99 (slowest target)".into(), p99)],
        });
    }
    out
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(chart_error)?;
    let points = chart.lines.iter().flat_map(|(_, l)| l.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.02;
    let x_min = points.clone().map(|p| p.0).fold(x_max, f64::min);
    let y_max = points.map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut c = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x_min..x_max, 0f64..y_max)
        .map_err(chart_error)?;
    c.configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(chart.y)
        .draw()
        .map_err(chart_error)?;
    for (k, (label, line)) in chart.lines.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        c.draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(chart_error)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        c.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(chart_error)?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    root.present().map_err(chart_error)
}

const SIZE: (u32, u32) = (900, 400);

fn svg(chart: &Chart) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, chart)?;
    }
    Ok(out)
}

fn png(chart: &Chart) -> Result<Vec<u8>, ReportError> {
    let (w, h) = SIZE;
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        draw(&root, chart)?;
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let mut writer = encoder.write_header().map_err(chart_error)?;
        writer.write_image_data(&pixels).map_err(chart_error)?;
    }
    Ok(out)
}

/// Writes `report.json`, `report.txt`, a PNG per chart and `report.html` into `dir`; returns
/// the files written.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    nimbus_scale::report::fonts().map_err(|e| ReportError::Chart(e.0))?;
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Write(dir.to_path_buf(), e))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), ReportError> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| ReportError::Write(path.clone(), e))?;
        written.push(path);
        Ok(())
    };
    let json = serde_json::to_string_pretty(report).map_err(chart_error)?;
    put("report.json", json.as_bytes())?;
    let text = table(report);
    put("report.txt", text.as_bytes())?;
    let charts = charts(report);
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>nimbus bench http: {url}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}figure{{margin:1em 0}}</style>\
         </head><body><h1>nimbus bench http</h1><p>{url}: {requests} requests, {rps:.0} requests/s, {errors} errors, p99 {p99:.2} ms</p>",
        url = escape(&report.url),
        requests = report.requests,
        rps = report.requests_per_second,
        errors = report.errors,
        p99 = report.latency.p99_ms,
    );
    for chart in &charts {
        put(&format!("{}.png", chart.stem), &png(chart)?)?;
        let _ = write!(
            html,
            "<figure class=chart id=\"{stem}\">{svg}<figcaption><a href=\"{stem}.png\">{title} (PNG)</a></figcaption></figure>",
            stem = chart.stem,
            svg = svg(chart)?,
            title = escape(&chart.title)
        );
    }
    let _ = write!(
        html,
        "<h2>Figures</h2><pre>{}</pre></body></html>",
        escape(&text)
    );
    put("report.html", html.as_bytes())?;
    Ok(written)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
