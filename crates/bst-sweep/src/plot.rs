//! Charts of a sweep, each written as PNG and SVG, drawn as a reviewer expects them in a paper:
//! - numeric axes (layer index, state size N, window W, length L) as lines through the means with
//!   a band of ± one standard deviation over seeds;
//! - categorical axes (variants, architectures) as dots with error bars, never joined by lines;
//! - baselines that do not vary along the axis as horizontal reference bands;
//! - one colour per architecture in every chart of every sweep ([`arch_color`]).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::error::SweepError;

/// The colour of an architecture, the same in every chart.
pub fn arch_color(arch: &str) -> RGBColor {
    match arch {
        "SLIDE" => RGBColor(90, 90, 90),
        "BRECT:FIXED:SKIP" => RGBColor(214, 39, 40),
        "TRSF-XL" => RGBColor(148, 103, 189),
        "TRANSFORMER" => RGBColor(0, 0, 0),
        "GSS-HYBRID" => RGBColor(140, 86, 75),
        "BST:SH:S4D" => RGBColor(44, 160, 44),
        "BST:MH:S4D" => RGBColor(23, 190, 207),
        "BST:MF:S4D" => RGBColor(188, 189, 34),
        "BST:SH:S4" => RGBColor(31, 119, 180),
        "BST:MH:S4" => RGBColor(0, 90, 140),
        "BST:MF:S4" => RGBColor(70, 50, 160),
        "BST:SH:UNSTRUCT" => RGBColor(255, 127, 14),
        "BST:MH:UNSTRUCT" => RGBColor(227, 119, 194),
        "BST:MF:UNSTRUCT" => RGBColor(205, 160, 0),
        _ => RGBColor(120, 120, 120),
    }
}

/// `color` made lighter (`shade` > 0) or darker (< 0), to tell variants of one architecture apart.
pub fn shaded(color: RGBColor, shade: f64) -> RGBColor {
    let mix = |c: u8| {
        let c = c as f64;
        (if shade >= 0.0 { c + (255.0 - c) * shade } else { c * (1.0 + shade) }).round().clamp(0.0, 255.0) as u8
    };
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// Colours for the lines of one chart: each architecture's colour, a shade lighter or darker for
/// every further line of the same architecture.
#[derive(Debug, Default)]
pub struct Palette {
    used: std::collections::BTreeMap<String, usize>,
}

impl Palette {
    pub fn color(&mut self, arch: &str) -> RGBColor {
        let n = self.used.entry(arch.to_owned()).or_insert(0);
        *n += 1;
        shaded(arch_color(arch), [0.0, -0.35, 0.35, -0.6, 0.6][(*n - 1) % 5])
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Line through the means with a ± sd band (numeric axes).
    Line,
    /// Dots with ± sd error bars (categorical axes).
    Dots,
}

/// One series: (x, mean, sd) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64, f64)>,
    pub style: Style,
}

/// A horizontal reference band: a baseline's mean ± sd across the whole axis.
#[derive(Debug, Clone)]
pub struct Band {
    pub label: String,
    pub color: RGBColor,
    pub mean: f64,
    pub sd: f64,
}

/// The x axis.
#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    Linear,
    Log,
    /// Categories at positions 0, 1, ...
    Categories(Vec<String>),
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub x: XAxis,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub bands: Vec<Band>,
}

/// A tick label: integers as such, other values with at most 4 significant decimals.
fn number(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A drawing error, as text (plotters' errors are generic over the backend).
fn failed<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// The data range of a chart, padded: (x0, x1, y0, y1).
fn ranges(chart: &Chart) -> Result<(f64, f64, f64, f64), String> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, m, sd) in chart.series.iter().flat_map(|s| s.points.iter()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(m - sd), y1.max(m + sd));
    }
    for b in &chart.bands {
        (y0, y1) = (y0.min(b.mean - b.sd), y1.max(b.mean + b.sd));
    }
    if let XAxis::Categories(c) = &chart.x {
        (x0, x1) = (0.0, c.len().saturating_sub(1) as f64);
    }
    if x0 > x1 || y0 > y1 {
        return Err(format!("nothing to plot for `{}`", chart.title));
    }
    // headroom above the data for a legend inside the plot (upper right), one line per entry
    let legend_rows = if legend_outside(chart) { 0.0 } else { legend_entries(chart) as f64 };
    let linear_y = |span: f64| (y0 - span * 0.12, y1 + span * (0.12 + 0.07 * legend_rows));
    let data_span = if y1 > y0 { y1 - y0 } else { 0.08 * y1.abs().max(1.0) };
    Ok(match (&chart.x, chart.log_y) {
        (XAxis::Log, true) => (x0 / 1.3, x1 * 1.3, y0 / 1.5, y1 * 1.5),
        (XAxis::Log, false) => {
            let (ya, yb) = linear_y(data_span);
            (x0 / 1.3, x1 * 1.3, ya, yb)
        }
        (XAxis::Categories(_), _) => {
            let (ya, yb) = linear_y((y1 - y0).max(0.01));
            (x0 - 0.6, x1 + 0.6, ya, yb)
        }
        _ => {
            let pad_x = if x1 > x0 { (x1 - x0) * 0.06 } else { 0.5 };
            let (ya, yb) = linear_y(data_span);
            (x0 - pad_x, x1 + pad_x, ya, yb)
        }
    })
}

/// The 1, 2, 5 x 10^n inside `[x0, x1]`: the ticks of a log axis. (plotters' own log ticks start
/// at the first power of ten, so a range such as 25-300 would get only 100 and 200.)
fn one_two_five_points(x0: f64, x1: f64) -> Vec<f64> {
    let (lo, hi) = (x0.log10().floor() as i32, x1.log10().ceil() as i32);
    (lo..=hi).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e))).filter(|x| (x0..=x1).contains(x)).collect()
}

/// Legends longer than this go beside the plot: inside it they would cover the curves or squash
/// them under the headroom they need.
const LEGEND_INSIDE_MAX: usize = 8;

fn legend_entries(chart: &Chart) -> usize {
    chart.series.len() + chart.bands.len()
}

fn legend_outside(chart: &Chart) -> bool {
    legend_entries(chart) > LEGEND_INSIDE_MAX
}

/// A band's legend entry.
fn band_label(b: &Band) -> String {
    format!("{} (baseline, ± sd)", b.label)
}

/// Width in pixels of a legend beside the plot (0 when it is inside).
fn outside_legend_width(chart: &Chart) -> u32 {
    if !legend_outside(chart) {
        return 0;
    }
    let longest = chart.series.iter().map(|s| s.label.chars().count()).chain(chart.bands.iter().map(|b| band_label(b).chars().count())).max().unwrap_or(0);
    (longest as u32 * 7 + 60).min(900)
}

/// A legend beside the plot: one row per band and series, in drawing order.
fn draw_outside_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let rows: Vec<(RGBColor, String, bool)> = chart.bands.iter().map(|b| (b.color, band_label(b), false)).chain(chart.series.iter().map(|s| (s.color, s.label.clone(), s.style == Style::Dots))).collect();
    // rows shrink (down to 9 px text) so that long legends still fit the panel's height
    let row_h = ((area.dim_in_pixel().1 as i32 - 80) / rows.len().max(1) as i32).clamp(10, 22);
    let text_px = (row_h - 6).clamp(9, 14);
    let font = ("sans-serif", text_px).into_font();
    for (i, (color, label, dot)) in rows.iter().enumerate() {
        let y = 50 + i as i32 * row_h;
        if *dot {
            area.draw(&Circle::new((20, y), 5, color.filled())).map_err(failed)?;
        } else {
            area.draw(&PathElement::new(vec![(10, y), (30, y)], color.stroke_width(3))).map_err(failed)?;
        }
        area.draw(&Text::new(label.as_str(), (38, y - text_px / 2), font.clone())).map_err(failed)?;
    }
    Ok(())
}

/// Draws one chart on `area`, with its legend beside the plot when it is long.
fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    if !legend_outside(chart) {
        return draw_plot(area, chart);
    }
    let width = area.dim_in_pixel().0;
    let (plot, side) = area.split_horizontally(width.saturating_sub(outside_legend_width(chart)));
    draw_plot(&plot, chart)?;
    draw_outside_legend(&side, chart)
}

fn draw_plot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (x0, x1, y0, y1) = ranges(chart)?;
    let mut builder = ChartBuilder::on(root);
    builder.caption(&chart.title, ("sans-serif", 22)).margin(18).x_label_area_size(52).y_label_area_size(76);
    let log_ticks = |x: &f64| if one_two_five(*x) { number(*x) } else { String::new() };
    match (&chart.x, chart.log_y) {
        (XAxis::Log, true) => {
            let ctx = builder.build_cartesian_2d((x0..x1).log_scale().with_key_points(one_two_five_points(x0, x1)), (y0..y1).log_scale()).map_err(failed)?;
            // costs grow to the upper right: the upper left is free
            finish(ctx, chart, (x0, x1), Ticks { x: &log_ticks, x_count: None, y: Some(&|y| format!("{y:.1e}")) }, SeriesLabelPosition::UpperLeft)
        }
        (XAxis::Log, false) => {
            let ctx = builder.build_cartesian_2d((x0..x1).log_scale().with_key_points(one_two_five_points(x0, x1)), y0..y1).map_err(failed)?;
            finish(ctx, chart, (x0, x1), Ticks { x: &log_ticks, x_count: None, y: None }, SeriesLabelPosition::UpperRight)
        }
        _ => {
            let ctx = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(failed)?;
            let labels = match &chart.x {
                XAxis::Categories(c) => Some(c.clone()),
                _ => None,
            };
            let integer_data = chart.series.iter().flat_map(|s| s.points.iter()).all(|p| p.0.fract() == 0.0);
            let format_x = move |x: &f64| match &labels {
                Some(labels) if (x - x.round()).abs() < 1e-9 && *x >= 0.0 => labels.get(x.round() as usize).cloned().unwrap_or_default(),
                Some(_) => String::new(),
                // integer data (layers, sizes, windows): integer ticks only
                None if integer_data && (x - x.round()).abs() > 1e-9 => String::new(),
                None => number(*x),
            };
            let x_count = match &chart.x {
                XAxis::Categories(c) => 2 * c.len() + 3,
                _ => 10,
            };
            finish(ctx, chart, (x0, x1), Ticks { x: &format_x, x_count: Some(x_count), y: None }, SeriesLabelPosition::UpperRight)
        }
    }
}

/// How a chart's axes are labelled: x tick labels, how many x ticks (plotters' default when
/// `None`), y tick labels (plotters' default when `None`).
struct Ticks<'f> {
    x: &'f dyn Fn(&f64) -> String,
    x_count: Option<usize>,
    y: Option<&'f dyn Fn(&f64) -> String>,
}

/// Draws the mesh, the bands and series and the legend on a chart of any axis kinds.
fn finish<'a, DB, X, Y>(mut ctx: ChartContext<'a, DB, Cartesian2d<X, Y>>, chart: &Chart, x_range: (f64, f64), ticks: Ticks, position: SeriesLabelPosition) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(&chart.x_desc).y_desc(&chart.y_desc).axis_desc_style(("sans-serif", 17)).label_style(("sans-serif", 14)).x_label_formatter(ticks.x);
    if let Some(n) = ticks.x_count {
        mesh.x_labels(n);
    }
    if let Some(y) = ticks.y {
        mesh.y_label_formatter(y);
    }
    mesh.draw().map_err(failed)?;
    draw_series(&mut ctx, chart, x_range)?;
    legend(&mut ctx, chart, position)
}

/// Whether a log-axis tick is 1, 2 or 5 times a power of ten (the others stay unlabelled, or
/// 7000, 8000, 9000 and 10000 run into each other).
fn one_two_five(x: f64) -> bool {
    if x <= 0.0 {
        return false;
    }
    let mantissa = x / 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6)
}

/// The legend inside the plot (nothing when [`draw_outside_legend`] draws it beside).
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(ctx: &mut ChartContext<'a, DB, CT>, chart: &Chart, position: SeriesLabelPosition) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    if legend_outside(chart) {
        return Ok(());
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(position)
        .draw()
        .map_err(failed)
}

/// Horizontal offset of series `i`'s dot at category `x`: the dot series that share a category
/// stand side by side across 0.8 of its width instead of on top of each other (0 elsewhere).
fn dodge(chart: &Chart, i: usize, x: f64) -> f64 {
    if !matches!(chart.x, XAxis::Categories(_)) || chart.series[i].style != Style::Dots {
        return 0.0;
    }
    let sharing: Vec<usize> = (0..chart.series.len()).filter(|&j| chart.series[j].style == Style::Dots && chart.series[j].points.iter().any(|p| p.0 == x)).collect();
    let (m, slot) = (sharing.len() as f64, sharing.iter().position(|&j| j == i).unwrap_or(0) as f64);
    (slot - (m - 1.0) / 2.0) * 0.8 / m
}

fn draw_series<'a, DB: DrawingBackend + 'a, X, Y>(ctx: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>, chart: &Chart, (x0, x1): (f64, f64)) -> Result<(), String>
where
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for b in &chart.bands {
        let color = b.color;
        ctx.draw_series(std::iter::once(Rectangle::new([(x0, b.mean - b.sd), (x1, b.mean + b.sd)], color.mix(0.15).filled()))).map_err(failed)?;
        ctx.draw_series(DashedLineSeries::new(vec![(x0, b.mean), (x1, b.mean)], 8, 5, color.stroke_width(2)))
            .map_err(failed)?
            .label(band_label(b))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    }
    for (i, s) in chart.series.iter().enumerate() {
        let color = s.color;
        let mut pts: Vec<(f64, f64, f64)> = s.points.iter().map(|&(x, m, sd)| (x + dodge(chart, i, x), m, sd)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        match s.style {
            Style::Line => {
                if pts.iter().any(|p| p.2 > 0.0) {
                    let band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 + p.2)).chain(pts.iter().rev().map(|p| (p.0, p.1 - p.2))).collect();
                    ctx.draw_series(std::iter::once(Polygon::new(band, color.mix(0.18).filled()))).map_err(failed)?;
                }
                ctx.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
                    .map_err(failed)?
                    .label(&s.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
                if pts.len() <= 12 {
                    ctx.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, color.filled()))).map_err(failed)?;
                }
            }
            Style::Dots => {
                ctx.draw_series(pts.iter().map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.stroke_width(2), 10))).map_err(failed)?;
                ctx.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 5, color.filled())))
                    .map_err(failed)?
                    .label(&s.label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
            }
        }
    }
    Ok(())
}

/// Draws `charts` side by side on `root`.
fn draw_panels<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, charts: &[Chart]) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(failed)?;
    for (area, chart) in root.split_evenly((1, charts.len())).iter().zip(charts) {
        draw(area, chart)?;
    }
    root.present().map_err(failed)
}

/// Renders `charts` side by side to `<stem>.png` and `<stem>.svg` (each written to a temporary
/// file, flushed, then renamed). Many categories widen each panel so that their labels fit, and a
/// long legend beside the plot widens it by its own width.
pub fn render(charts: &[Chart], stem: &Path) -> Result<Vec<PathBuf>, SweepError> {
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let (png_tmp, svg_tmp) = (stem.with_extension("tmp.png"), stem.with_extension("tmp.svg"));
    let panel_width = charts
        .iter()
        .map(|c| match &c.x {
            XAxis::Categories(l) => (l.len() as u32) * (l.iter().map(|s| s.len()).max().unwrap_or(0) as u32 * 8 + 24) + 260,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
        .max(900)
        + charts.iter().map(outside_legend_width).max().unwrap_or(0);
    let size = (panel_width * charts.len() as u32, 620);
    draw_panels(BitMapBackend::new(&png_tmp, size).into_drawing_area(), charts).map_err(SweepError::file(&png))?;
    draw_panels(SVGBackend::new(&svg_tmp, size).into_drawing_area(), charts).map_err(SweepError::file(&svg))?;
    for (tmp, file) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
        std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(SweepError::io(tmp))?;
        std::fs::rename(tmp, file).map_err(SweepError::io(file))?;
    }
    Ok(vec![png, svg])
}

/// (tokens_seen, loss) from a run's metrics.csv.
pub fn read_loss_curve(metrics_csv: &Path) -> Result<Vec<(f64, f64)>, SweepError> {
    let bad = |reason: String| SweepError::File { path: metrics_csv.to_owned(), reason };
    let mut reader = csv::Reader::from_path(metrics_csv).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name).ok_or_else(|| bad(format!("no `{name}` column")));
    let (tok, loss) = (col("tokens_seen")?, col("loss")?);
    let number = |cell: &str| cell.parse::<f64>().map_err(|e| bad(format!("`{cell}`: {e}")));
    reader
        .records()
        .map(|r| {
            let r = r.map_err(|e| bad(e.to_string()))?;
            Ok((number(&r[tok])?, number(&r[loss])?))
        })
        .collect()
}

/// A moving mean over `window` points, from 10% of the x range on: the initial drop would
/// squash the differences between curves.
pub fn smoothed_tail(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let w = &points[i.saturating_sub(window - 1)..=i];
            (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .filter(|&(x, _)| x >= 0.1 * x_max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("</text>").filter_map(|t| t.rsplit_once('>')).map(|(_, text)| text.trim().to_string()).collect()
    }

    #[test]
    fn dots_sharing_a_category_stand_side_by_side() {
        let dots = |label: &str, xs: &[f64]| Series { label: label.into(), color: arch_color(label), points: xs.iter().map(|&x| (x, 1.0, 0.1)).collect(), style: Style::Dots };
        let chart = Chart {
            title: String::new(),
            x_desc: String::new(),
            y_desc: String::new(),
            x: XAxis::Categories(vec!["a".into(), "b".into()]),
            log_y: false,
            series: vec![dots("A", &[0.0, 1.0]), dots("B", &[0.0]), dots("C", &[1.0])],
            bands: Vec::new(),
        };
        assert_eq!((dodge(&chart, 0, 0.0), dodge(&chart, 1, 0.0)), (-0.2, 0.2), "two series at category 0");
        assert_eq!((dodge(&chart, 0, 1.0), dodge(&chart, 2, 1.0)), (-0.2, 0.2));
        let alone = Chart { series: vec![dots("A", &[0.0]), dots("B", &[1.0])], ..chart };
        assert_eq!(dodge(&alone, 1, 1.0), 0.0, "a series alone at its category stays on the tick");
    }

    #[test]
    fn log_ticks_are_labelled_at_one_two_five_only() {
        let labelled: Vec<f64> = [1000.0, 2000.0, 3000.0, 5000.0, 8000.0, 9000.0, 10000.0, 20000.0].into_iter().filter(|x| one_two_five(*x)).collect();
        assert_eq!(labelled, [1000.0, 2000.0, 5000.0, 10000.0, 20000.0]);
        assert_eq!(one_two_five_points(25.0, 300.0), [50.0, 100.0, 200.0], "below the first power of ten too");
    }

    #[test]
    fn renders_bands_error_bars_and_log_axes_to_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let categorical = Chart {
            title: "demo: test bits per byte".into(),
            x_desc: "variant".into(),
            y_desc: "test bits per byte".into(),
            x: XAxis::Categories(vec!["BST:SH:S4D".into(), "BST:MF:S4D".into()]),
            log_y: false,
            series: vec![Series { label: "BST".into(), color: arch_color("BST:SH:S4D"), points: vec![(0.0, 2.5, 0.02), (1.0, 2.4, 0.03)], style: Style::Dots }],
            bands: vec![Band { label: "SLIDE".into(), color: arch_color("SLIDE"), mean: 2.55, sd: 0.01 }],
        };
        let speed = Chart {
            title: "forward".into(),
            x_desc: "sequence length L (tokens)".into(),
            y_desc: "time per call (s)".into(),
            x: XAxis::Log,
            log_y: true,
            series: vec![Series { label: "SLIDE".into(), color: arch_color("SLIDE"), points: vec![(1024.0, 0.01, 0.0), (4096.0, 0.04, 0.0)], style: Style::Line }],
            bands: vec![],
        };
        let files = render(&[categorical, speed], &dir.path().join("demo")).unwrap();
        assert_eq!(&std::fs::read(&files[0]).unwrap()[1..4], b"PNG");
        let texts = svg_texts(&std::fs::read_to_string(&files[1]).unwrap());
        for text in ["demo: test bits per byte", "variant", "test bits per byte", "BST", "SLIDE (baseline, ± sd)", "BST:SH:S4D", "BST:MF:S4D", "forward", "sequence length L (tokens)"] {
            assert!(texts.iter().any(|t| t == text), "svg has no text `{text}`: {texts:?}");
        }
    }

    #[test]
    fn a_long_legend_goes_beside_the_plot_and_leaves_the_data_its_height() {
        let line = |i: usize| Series { label: format!("BST:SH:S4D data.synthetic.n_pairs={i}"), color: arch_color("BST:SH:S4D"), points: vec![(0.0, 1.0, 0.0), (1.0, 2.0, 0.0)], style: Style::Line };
        let few = Chart { title: "t".into(), x_desc: String::new(), y_desc: String::new(), x: XAxis::Linear, log_y: false, series: (0..3).map(line).collect(), bands: Vec::new() };
        let many = Chart { series: (0..20).map(line).collect(), ..few.clone() };
        assert!(!legend_outside(&few) && legend_outside(&many));
        assert_eq!(outside_legend_width(&few), 0);
        let (y_top_few, y_top_many) = (ranges(&few).unwrap().3, ranges(&many).unwrap().3);
        assert!(y_top_many < y_top_few, "no headroom for a legend that is not inside: {y_top_many} vs {y_top_few}");
        let dir = tempfile::tempdir().unwrap();
        let files = render(std::slice::from_ref(&many), &dir.path().join("many")).unwrap();
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        let width: u32 = svg.split("width=\"").nth(1).and_then(|w| w.split('"').next()).and_then(|w| w.parse().ok()).unwrap();
        assert_eq!(width, 900 + outside_legend_width(&many), "the panel widens by the legend");
        let texts = svg_texts(&svg);
        for i in 0..20 {
            assert!(texts.iter().any(|t| *t == format!("BST:SH:S4D data.synthetic.n_pairs={i}")), "legend row {i} missing: {texts:?}");
        }
    }

    #[test]
    fn colours_are_fixed_per_architecture() {
        assert_eq!(arch_color("BRECT:FIXED:SKIP"), RGBColor(214, 39, 40));
        assert_ne!(arch_color("BST:SH:S4D"), arch_color("BST:MF:S4D"));
        assert_eq!(shaded(RGBColor(100, 100, 100), 0.5), RGBColor(178, 178, 178));
        assert_eq!(shaded(RGBColor(100, 100, 100), -0.5), RGBColor(50, 50, 50));
    }

    #[test]
    fn loss_tail_leaves_out_the_initial_drop() {
        let curve: Vec<(f64, f64)> = (0..100).map(|i| (i as f64 * 1e4, if i < 5 { 7.0 } else { 2.0 + 1.0 / (i as f64) })).collect();
        let ys: Vec<f64> = smoothed_tail(&curve, 1).iter().map(|p| p.1).collect();
        assert_eq!(ys.len(), 90, "the first 10% of the points are left out");
        assert!(ys.iter().all(|&y| y > 2.0 && y < 2.2), "no point of the initial drop remains: {ys:?}");
    }
}
