//! The SVG plot: throughput vs threads, one panel per component, freelane vs mutex.

use std::path::Path;

use plotters::prelude::*;

use super::report::Row;
use super::{Component, Impl};

const FREELANE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const MUTEX: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Renders the plot of `rows` to an SVG string (`title` goes on top).
pub fn render_svg(rows: &[Row], title: &str) -> Result<String, String> {
    let components: Vec<Component> = Component::ALL
        .into_iter()
        .filter(|c| rows.iter().any(|r| r.component == *c))
        .collect();
    if components.is_empty() {
        return Err("nothing to plot: the report has no rows".into());
    }
    let cols = components.len().min(3);
    let grid_rows = components.len().div_ceil(cols);
    let (w, h) = (420 * cols as u32, 60 + 320 * grid_rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((grid_rows, cols));
        for (panel, &c) in panels.iter().zip(&components) {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.component == c).collect();
            let max_x = mine.iter().map(|r| r.threads).max().unwrap_or(1) as f64;
            let max_y = mine
                .iter()
                .map(|r| r.throughput_ops_s / 1e6)
                .fold(0.0, f64::max)
                .max(1e-3)
                * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(c.name(), ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..max_x + 0.5, 0.0..max_y)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("threads")
                .y_desc("Mops/s")
                .x_labels(8)
                .y_labels(6)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| e.to_string())?;
            for (imp, color) in [(Impl::Freelane, FREELANE), (Impl::Mutex, MUTEX)] {
                let mut pts: Vec<(f64, f64)> = mine
                    .iter()
                    .filter(|r| r.imp == imp)
                    .map(|r| (r.threads as f64, r.throughput_ops_s / 1e6))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(imp.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes the plot of `rows` to `path`.
pub fn write_svg(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    let svg = render_svg(rows, title)?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
