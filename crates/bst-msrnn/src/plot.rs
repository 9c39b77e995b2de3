//! Line charts (optionally log-2 x axis) and grouped bar charts, each written as PNG and SVG, in
//! the style of bst-sweep's plots (white background, 24 px title, legend in a framed box).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{MsrnnError, Result};

/// One line (or one bar colour) of a chart: a legend label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed reference lines (the topline) are drawn thinner and without markers.
    pub reference: bool,
}

/// What a chart shows. With `categories`, x values are category indices and bars are drawn.
pub struct Chart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    /// Plot x on a log-2 scale (budgets k = 64 ... 512), labelled with the raw values.
    pub log2_x: bool,
    /// Plot ln(y), labelled with y (perplexities that span orders of magnitude).
    pub log_y: bool,
    /// Start the y axis at 0 (speeds: a cropped axis would exaggerate noise).
    pub y_from_zero: bool,
    pub categories: Option<Vec<String>>,
    pub legend: SeriesLabelPosition,
}

fn err(e: impl std::fmt::Debug) -> MsrnnError {
    MsrnnError::Config(format!("plotting: {e:?}"))
}

fn bounds(chart: &Chart) -> Result<(f64, f64, f64, f64)> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in chart.series.iter().flat_map(|s| s.points.iter()) {
        let x = if chart.log2_x { x.log2() } else { x };
        let y = if chart.log_y { y.ln() } else { y };
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(MsrnnError::Config(format!("nothing to plot for `{}`", chart.title)));
    }
    Ok((x0, x1, y0, y1))
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1, y0, y1) = bounds(chart)?;
    let bars = chart.categories.is_some();
    let (x0, x1) = if bars { (-0.6, x1 + 0.6) } else { (x0 - (x1 - x0).max(1.0) * 0.06, x1 + (x1 - x0).max(1.0) * 0.06) };
    let y0 = if bars || chart.y_from_zero { 0.0 } else { y0 };
    let mut builder = ChartBuilder::on(&root);
    builder.caption(&chart.title, ("sans-serif", 24)).margin(18).x_label_area_size(if bars { 70 } else { 48 }).y_label_area_size(80);
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let mut ctx = builder.build_cartesian_2d(x0..x1, (y0 - if bars || chart.y_from_zero { 0.0 } else { pad })..(y1 + pad)).map_err(err)?;
    mesh(&mut ctx, chart)?;
    series(&mut ctx, chart)?;
    root.present().map_err(err)
}

type Ctx<'a, DB, Y> = ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn mesh<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(ctx: &mut Ctx<'a, DB, Y>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let cats = chart.categories.clone();
    let log2 = chart.log2_x;
    let log_y = chart.log_y;
    let fmt_x = move |x: &f64| match &cats {
        Some(c) if (x - x.round()).abs() < 1e-9 && *x >= 0.0 => c.get(x.round() as usize).cloned().unwrap_or_default(),
        Some(_) => String::new(),
        None if log2 && (x - x.round()).abs() < 1e-9 => format!("{}", 2f64.powf(*x).round()),
        None if log2 => String::new(),
        None => format!("{x}"),
    };
    let n_x = chart.categories.as_ref().map_or(if log2 { 40 } else { 10 }, |c| 2 * c.len() + 3);
    ctx.configure_mesh()
        .y_labels(12)
        .y_label_formatter(&|y: &f64| if log_y { significant(y.exp()) } else { significant(*y) })
        .x_desc(&chart.x_desc)
        .y_desc(&chart.y_desc)
        .x_labels(n_x)
        .x_label_formatter(&fmt_x)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)
}

fn series<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(ctx: &mut Ctx<'a, DB, Y>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = chart.series.len().max(1) as f64;
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (if chart.log2_x { x.log2() } else { x }, if chart.log_y { y.ln() } else { y })).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3));
        if chart.categories.is_some() {
            let w = 0.8 / n;
            let rects = pts.iter().map(|&(x, y)| {
                let left = x - 0.4 + i as f64 * w;
                Rectangle::new([(left, 0.0), (left + w * 0.9, y)], color.filled())
            });
            ctx.draw_series(rects).map_err(err)?.label(&s.label).legend(legend);
        } else {
            let style = if s.reference { color.stroke_width(1) } else { color.stroke_width(2) };
            ctx.draw_series(LineSeries::new(pts.clone(), style)).map_err(err)?.label(&s.label).legend(legend);
            if !s.reference {
                ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
            }
        }
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(chart.legend.clone())
        .draw()
        .map_err(err)
}

/// Three significant digits, no exponent for everyday magnitudes.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// Renders `chart` to `<stem>.png` and `<stem>.svg` (temp files, then renamed).
pub fn render(chart: &Chart, stem: &Path) -> Result<Vec<PathBuf>> {
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let (png_tmp, svg_tmp) = (stem.with_extension("tmp.png"), stem.with_extension("tmp.svg"));
    let size = (1000, 640);
    draw(BitMapBackend::new(&png_tmp, size).into_drawing_area(), chart)?;
    draw(SVGBackend::new(&svg_tmp, size).into_drawing_area(), chart)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MsrnnError::Io { path, source }
    };
    std::fs::rename(&png_tmp, &png).map_err(io(&png))?;
    std::fs::rename(&svg_tmp, &svg).map_err(io(&svg))?;
    Ok(vec![png, svg])
}
