//! The simulator's results side by side: a Markdown table and an SVG chart of the active
//! instances over time, one line per policy.

use std::fmt::Write;

use plotters::prelude::*;

use crate::simulate::Outcome;

fn secs(d: std::time::Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// The outcomes as a Markdown table, one row per policy.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| policy | served | p50 s | p99 s | last s | instance-s | peak | launched | started | stopped | terminated |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            o.policy,
            o.served,
            o.requests,
            secs(o.p50),
            secs(o.p99),
            secs(o.last),
            o.instance_seconds,
            o.peak,
            o.launched,
            o.started,
            o.stopped,
            o.terminated
        );
    }
    out
}

/// A chart error (plotters reports its backend's errors as text).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct ChartError(pub String);

fn chart_error(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// Where a TrueType font for the charts' text is looked for, after `$NIMBUS_FONT`.
const FONTS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the charts' font (`sans-serif`) once: `$NIMBUS_FONT`, else the first of
/// [`FONTS`] this machine has. Every chart calls it first: text is laid out with it, in SVG
/// as in PNG.
pub fn fonts() -> Result<(), ChartError> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let given = std::env::var("NIMBUS_FONT").ok();
        let path = given
            .iter()
            .map(String::as_str)
            .chain(FONTS)
            .find(|p| std::path::Path::new(p).is_file())
            .ok_or_else(|| {
                "no TrueType font found for the charts' text: install fonts-dejavu-core or set NIMBUS_FONT to a .ttf file".to_string()
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{path} is not a TrueType font"))
    })
    .clone()
    .map_err(ChartError)
}

/// An SVG chart of the active instances over time for each outcome.
pub fn chart(title: &str, outcomes: &[Outcome]) -> Result<String, ChartError> {
    fonts()?;
    let x_max = outcomes
        .iter()
        .flat_map(|o| o.fleet.last().map(|&(t, _)| t))
        .fold(1.0f64, f64::max);
    let y_max = outcomes.iter().map(|o| o.peak).max().unwrap_or(1).max(1) + 1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..x_max, 0usize..y_max)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("active instances")
            .draw()
            .map_err(chart_error)?;
        for (k, o) in outcomes.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    o.fleet.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(chart_error)?
                .label(o.policy.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}
