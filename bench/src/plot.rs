//! PNG plots of the suite: latency percentiles against the offered rate (direct, nginx, joch),
//! and the distribution of quarantine propagation times. Text is drawn with DejaVu Sans
//! (Debian's `fonts-dejavu-core`); without it the plots are skipped, with a warning.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font once; false when it is missing.
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| match std::fs::read(FONT) {
        Ok(bytes) => register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok(),
        Err(_) => {
            eprintln!("bench: {FONT} is missing (apt-get install fonts-dejavu-core): no plots");
            false
        }
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(0, 120, 200),
    RGBColor(220, 80, 0),
    RGBColor(0, 150, 60),
    RGBColor(150, 60, 170),
    RGBColor(200, 160, 0),
];

/// Latency (p50 solid, p99 dashed-looking thin) against offered rate, one panel per era.
pub fn rates(result: &Value, path: &Path) -> anyhow::Result<()> {
    if !font() {
        return Ok(());
    }
    let sweeps = result["rates"].as_array().cloned().unwrap_or_default();
    let root = BitMapBackend::new(path, (1500, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, era) in panels.iter().zip(["legacy", "modern"]) {
        let mine: Vec<&Value> = sweeps.iter().filter(|s| s["era"] == era).collect();
        let xmax = mine
            .iter()
            .flat_map(|s| s["points"].as_array().into_iter().flatten())
            .filter_map(|p| p["offered_rps"].as_f64())
            .fold(1000.0, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{era} era: latency against offered rate"), ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.05, (0.02f64..200f64).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("offered requests per second")
            .y_desc("latency, ms (log)")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, s) in mine.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts = |q: &str| -> Vec<(f64, f64)> {
                s["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p["offered_rps"].as_f64()?, p[q].as_f64()?.max(0.02))))
                    .collect()
            };
            let name = s["target"].as_str().unwrap_or("?").to_string();
            chart
                .draw_series(LineSeries::new(pts("p50_ms"), color.stroke_width(3)))?
                .label(format!("{name} p50"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart
                .draw_series(LineSeries::new(pts("p99_ms"), color.stroke_width(1)))?
                .label(format!("{name} p99"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// How many trials reached "denied on every node" at each millisecond, per condition.
pub fn propagation(result: &Value, path: &Path) -> anyhow::Result<()> {
    if !font() {
        return Ok(());
    }
    let raw = &result["propagation"]["raw"];
    let conditions = ["one_server_idle", "one_server_1500rps", "many_servers_idle", "many_servers_1500rps"];
    let series: Vec<(String, Vec<f64>)> = conditions
        .iter()
        .map(|c| {
            let v = raw[c].as_array().into_iter().flatten().filter_map(|t| t["all_denied_ms"].as_f64()).collect();
            (c.replace('_', " "), v)
        })
        .collect();
    let xmax = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(5.0, f64::max).ceil() + 1.0;
    let bins = xmax as usize + 1;
    let counts: Vec<Vec<u32>> = series
        .iter()
        .map(|(_, v)| {
            let mut c = vec![0u32; bins];
            for x in v {
                c[(*x as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let ymax = counts.iter().flatten().copied().max().unwrap_or(1) as f64 * 1.1;
    let root = BitMapBackend::new(path, (1100, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("quarantine: send to denied on every node", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart.configure_mesh().x_desc("ms (1 ms bins)").y_desc("trials").label_style(("sans-serif", 14)).draw()?;
    for (i, ((name, _), c)) in series.iter().zip(&counts).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = c.iter().enumerate().map(|(b, n)| (b as f64 + 0.5, *n as f64)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
