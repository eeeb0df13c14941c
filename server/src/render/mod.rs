//! Images from values: matplotlib's colormaps applied exactly as matplotlib applies them,
//! a small RGBA canvas (rectangles, lines, bitmap text) and PNG/APNG encoding.
//!
//! Pure functions, no I/O and nothing from the dataset model: the plot and tile products
//! (`processing::plot`) read typed blocks and hand plain values here, so that what a pixel
//! shows can be checked against matplotlib's own lookup in tests.

mod tables;

use std::io::Cursor;

pub use tables::COLORMAPS;

/// The colour table of a matplotlib colormap name (256 RGB entries), `None` for a name
/// that is not one of [`names`].
pub fn colormap(name: &str) -> Option<&'static [u8; 768]> {
    COLORMAPS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The colormap names served (matplotlib's names, `_r` reversed), for error messages.
pub fn names() -> Vec<&'static str> {
    COLORMAPS.iter().map(|(n, _)| *n).collect()
}

/// A value range mapped onto the colormap as `matplotlib.colors.Normalize(vmin, vmax)`
/// followed by `Colormap.__call__` with `N = 256`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    /// Value at the bottom of the table.
    pub vmin: f64,
    /// Value at the top of the table.
    pub vmax: f64,
    /// True for float32 data: matplotlib keeps float32 arrays in float32 (each in-place
    /// step rounds to float32), so the same rounding is needed to pick the same entry.
    pub f32: bool,
}

impl Norm {
    /// The table index of `x`, `None` for NaN (drawn transparent, matplotlib's "bad"
    /// colour). Below the range is entry 0, above it entry 255 (matplotlib's defaults for
    /// "under" and "over").
    pub fn index(&self, x: f64) -> Option<u8> {
        if x.is_nan() {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)]
        let xa = if self.vmin == self.vmax {
            0.0
        } else if self.f32 {
            // resdat -= vmin; resdat /= (vmax - vmin); xa *= N -- each stored as float32
            let r = ((x - self.vmin) as f32) as f64;
            let r = (r / (self.vmax - self.vmin)) as f32;
            f64::from(r * 256.0)
        } else {
            (x - self.vmin) / (self.vmax - self.vmin) * 256.0
        };
        if xa.is_nan() {
            return None;
        }
        let xa = if xa == 256.0 { 255.0 } else { xa };
        if xa < 0.0 {
            return Some(0);
        }
        if xa >= 256.0 {
            return Some(255);
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(xa as u8)
    }
}

/// An RGBA image, rows top to bottom.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes.
    pub rgba: Vec<u8>,
}

/// Opaque white, the background of plots.
pub const WHITE: [u8; 4] = [255, 255, 255, 255];
/// Opaque black, for axes and text.
pub const BLACK: [u8; 4] = [0, 0, 0, 255];

impl Canvas {
    /// A canvas filled with `colour`.
    pub fn new(width: u32, height: u32, colour: [u8; 4]) -> Canvas {
        let n = width as usize * height as usize;
        let mut rgba = Vec::with_capacity(n * 4);
        for _ in 0..n {
            rgba.extend_from_slice(&colour);
        }
        Canvas { width, height, rgba }
    }

    /// Sets one pixel; outside the canvas nothing happens.
    pub fn put(&mut self, x: i64, y: i64, colour: [u8; 4]) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        self.rgba[i..i + 4].copy_from_slice(&colour);
    }

    /// Fills the rectangle `[x, x+w) × [y, y+h)`.
    pub fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: [u8; 4]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, colour);
            }
        }
    }

    /// The outline of the rectangle `[x, x+w) × [y, y+h)`.
    pub fn frame(&mut self, x: i64, y: i64, w: i64, h: i64, colour: [u8; 4]) {
        self.line(x - 1, y - 1, x + w, y - 1, colour);
        self.line(x - 1, y + h, x + w, y + h, colour);
        self.line(x - 1, y - 1, x - 1, y + h, colour);
        self.line(x + w, y - 1, x + w, y + h, colour);
    }

    /// A one-pixel line (Bresenham).
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: [u8; 4]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, colour);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// ASCII text with its top-left corner at `(x, y)` (other characters drawn as '?');
    /// returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, colour: [u8; 4]) -> i64 {
        let (gw, gh) = tables::GLYPH;
        let mut cx = x;
        for ch in s.chars() {
            let c = if (' '..='~').contains(&ch) { ch } else { '?' };
            let glyph = &tables::FONT[c as usize - 32];
            for (row, bits) in glyph.iter().enumerate().take(gh) {
                for col in 0..gw {
                    if bits & (0x80 >> col) != 0 {
                        self.put(cx + col as i64, y + row as i64, colour);
                    }
                }
            }
            cx += gw as i64;
        }
        cx - x
    }
}

/// The width in pixels `s` takes in [`Canvas::text`].
pub fn text_width(s: &str) -> i64 {
    (s.chars().count() * tables::GLYPH.0) as i64
}

/// Height of a text line.
pub const LINE_HEIGHT: i64 = 13;

/// A number as a short label (4 significant digits).
pub fn label(x: f64) -> String {
    if x == 0.0 || (1e-3..1e5).contains(&x.abs()) {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        let digits = if x.abs() >= 1.0 {
            4usize.saturating_sub(x.abs().log10() as usize + 1)
        } else {
            4
        };
        let t = format!("{x:.digits$}");
        if t.len() < s.len() { t } else { s.to_string() }
    } else {
        format!("{x:.3e}")
    }
}

/// Where the field lies in a map image, so that clients (and tests) can find the cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLayout {
    /// Left edge of the field.
    pub x: u32,
    /// Top edge of the field.
    pub y: u32,
    /// Pixels per cell, both directions.
    pub scale: u32,
}

/// A field of `ny × nx` values (row 0 drawn at the top) as a map image with the title and
/// subtitle above and a colour bar with the range's labels on the right; `scale` pixels
/// per cell.
#[allow(clippy::too_many_arguments)]
pub fn map_image(
    values: &[f64],
    ny: usize,
    nx: usize,
    scale: u32,
    norm: &Norm,
    table: &[u8; 768],
    title: &str,
    subtitle: &str,
) -> (Canvas, MapLayout) {
    map_canvas(values, ny, nx, scale, norm, table, title, subtitle, (10, 10))
}

/// A field sampled on a lon/lat (plate carrée) raster: `ny × nx` pixels, pixel `(i, j)`
/// centred on `lon = west + (i + 0.5)·step`, `lat = north − (j + 0.5)·step` (`ll` is
/// `(west, north, step)`), drawn as [`map_image`] draws a field at one pixel per value,
/// with degree labels along the left (latitude) and bottom (longitude) edges.
#[allow(clippy::too_many_arguments)]
pub fn lonlat_image(
    values: &[f64],
    ny: usize,
    nx: usize,
    ll: (f64, f64, f64),
    norm: &Norm,
    table: &[u8; 768],
    title: &str,
    subtitle: &str,
) -> (Canvas, MapLayout) {
    let (west, north, step) = ll;
    let left = 10 + text_width("-90N") + 6;
    let (mut c, l) = map_canvas(
        values,
        ny,
        nx,
        1,
        norm,
        table,
        title,
        subtitle,
        (left, 10 + LINE_HEIGHT + 6),
    );
    let (x0, y0) = (i64::from(l.x), i64::from(l.y));
    let (w, h) = (nx as f64 * step, ny as f64 * step);
    let tick = tick_step(w.max(h));
    let deg = |x: f64, pos: char, neg: char| {
        let r = x.round();
        let t = if (x - r).abs() < 1e-9 {
            format!("{}", r.abs())
        } else {
            label(x.abs())
        };
        match x.partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => format!("{t}{pos}"),
            Some(std::cmp::Ordering::Less) => format!("{t}{neg}"),
            _ => t,
        }
    };
    // latitudes: a tick and label at every multiple of `tick` inside the area
    let mut lat = (north / tick).floor() * tick;
    while lat >= north - h {
        let y = y0 + ((north - lat) / step).round() as i64;
        if y < y0 + ny as i64 {
            c.line(x0 - 4, y, x0 - 2, y, BLACK);
            let t = deg(lat, 'N', 'S');
            c.text(x0 - 5 - text_width(&t), (y - LINE_HEIGHT / 2).max(y0), &t, BLACK);
        }
        lat -= tick;
    }
    let mut lon = (west / tick).ceil() * tick;
    let yb = y0 + ny as i64 + 1;
    let mut next_free = i64::MIN;
    while lon <= west + w {
        let x = x0 + ((lon - west) / step).round() as i64;
        if x < x0 + nx as i64 {
            c.line(x, yb + 1, x, yb + 3, BLACK);
            // longitudes beyond the seam (a grid across the date line) are named as usual
            let t = deg((lon + 180.0).rem_euclid(360.0) - 180.0, 'E', 'W');
            let tx = x - text_width(&t) / 2;
            if tx >= next_free {
                c.text(tx, yb + 4, &t, BLACK);
                next_free = tx + text_width(&t) + 4;
            }
        }
        lon += tick;
    }
    (c, l)
}

/// A round degree spacing giving a handful of ticks over `span` degrees.
fn tick_step(span: f64) -> f64 {
    [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0]
        .into_iter()
        .find(|t| span / t <= 8.0)
        .unwrap_or(90.0)
}

/// [`map_image`] with the field's left margin and the margin below it given.
#[allow(clippy::too_many_arguments)]
fn map_canvas(
    values: &[f64],
    ny: usize,
    nx: usize,
    scale: u32,
    norm: &Norm,
    table: &[u8; 768],
    title: &str,
    subtitle: &str,
    (left, bottom): (i64, i64),
) -> (Canvas, MapLayout) {
    let s = i64::from(scale);
    let top = 10 + 2 * LINE_HEIGHT;
    let (fw, fh) = (nx as i64 * s, ny as i64 * s);
    let bar_x = left + fw + 15;
    let labels = [label(norm.vmax), label(norm.vmin)];
    let lw = labels.iter().map(|l| text_width(l)).max().unwrap_or(0);
    let width = (bar_x + 20 + 5 + lw + 10).max(left + text_width(title) + 10);
    let height = top + fh.max(60) + bottom;
    let mut c = Canvas::new(width as u32, height as u32, WHITE);
    c.text(left, 5, title, BLACK);
    c.text(left, 5 + LINE_HEIGHT, subtitle, BLACK);
    for j in 0..ny {
        for i in 0..nx {
            let colour = match norm.index(values[j * nx + i]) {
                Some(k) => {
                    let k = k as usize * 3;
                    [table[k], table[k + 1], table[k + 2], 255]
                }
                None => [0, 0, 0, 0],
            };
            c.rect(left + i as i64 * s, top + j as i64 * s, s, s, colour);
        }
    }
    c.frame(left, top, fw, fh, BLACK);
    // colour bar: one row per table entry band, the top entry at the top
    let bh = fh.max(60);
    for y in 0..bh {
        let k = (((bh - 1 - y) * 256) / bh) as usize * 3;
        c.rect(bar_x, top + y, 20, 1, [table[k], table[k + 1], table[k + 2], 255]);
    }
    c.frame(bar_x, top, 20, bh, BLACK);
    c.text(bar_x + 25, top, &labels[0], BLACK);
    c.text(bar_x + 25, top + bh - LINE_HEIGHT, &labels[1], BLACK);
    (
        c,
        MapLayout {
            x: left as u32,
            y: top as u32,
            scale,
        },
    )
}

/// A series `ys` against `xs` as a line plot (NaN breaks the line) with the title, the
/// y label and the axis ranges written at the axes' ends.
pub fn line_image(xs: &[f64], ys: &[f64], title: &str, ylabel: &str, xlabel: &str) -> Canvas {
    let (w, h) = (640i64, 400i64);
    let mut c = Canvas::new(w as u32, h as u32, WHITE);
    let finite = |v: &[f64]| {
        v.iter()
            .filter(|x| x.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(*x), b.max(*x))
            })
    };
    let (x0, x1) = finite(xs);
    let (y0, y1) = finite(ys);
    let (left, top, pw, ph) = (80i64, 10 + 2 * LINE_HEIGHT, w - 100, h - 40 - 3 * LINE_HEIGHT);
    c.text(10, 5, title, BLACK);
    c.text(10, 5 + LINE_HEIGHT, ylabel, BLACK);
    c.frame(left, top, pw, ph, BLACK);
    if x0.is_finite() && y0.is_finite() {
        c.text(left - 5 - text_width(&label(y1)), top, &label(y1), BLACK);
        c.text(
            left - 5 - text_width(&label(y0)),
            top + ph - LINE_HEIGHT,
            &label(y0),
            BLACK,
        );
        c.text(left, top + ph + 4, &label(x0), BLACK);
        c.text(
            left + pw - text_width(&label(x1)),
            top + ph + 4,
            &label(x1),
            BLACK,
        );
        c.text(
            left + pw / 2 - text_width(xlabel) / 2,
            top + ph + 4,
            xlabel,
            BLACK,
        );
        let px = |x: f64| {
            left + if x1 > x0 {
                ((x - x0) / (x1 - x0) * (pw - 1) as f64).round() as i64
            } else {
                pw / 2
            }
        };
        let py = |y: f64| {
            top + ph
                - 1
                - if y1 > y0 {
                    ((y - y0) / (y1 - y0) * (ph - 1) as f64).round() as i64
                } else {
                    ph / 2
                }
        };
        let blue = [31, 119, 180, 255]; // matplotlib's first cycle colour (tab:blue)
        let mut prev: Option<(i64, i64)> = None;
        for (x, y) in xs.iter().zip(ys) {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let p = (px(*x), py(*y));
            match prev {
                Some(q) => c.line(q.0, q.1, p.0, p.1, blue),
                None => c.put(p.0, p.1, blue),
            }
            prev = Some(p);
        }
    }
    c
}

/// Why an image could not be encoded (a bug: the canvas is always well formed).
#[derive(Debug, thiserror::Error)]
#[error("PNG encoding failed: {0}")]
pub struct EncodeError(String);

fn enc_err(e: impl std::fmt::Display) -> EncodeError {
    EncodeError(e.to_string())
}

/// PNG of `c` with `tEXt` chunks (`Title`, `Comment`, ...).
pub fn png(c: &Canvas, text: &[(&str, &str)]) -> Result<Vec<u8>, EncodeError> {
    apng(std::slice::from_ref(c), 0, text)
}

/// APNG of equally sized frames shown `delay_ms` each, looping (one frame: a plain PNG).
pub fn apng(frames: &[Canvas], delay_ms: u16, text: &[(&str, &str)]) -> Result<Vec<u8>, EncodeError> {
    let first = frames.first().ok_or_else(|| EncodeError("no frames".into()))?;
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(Cursor::new(&mut out), first.width, first.height);
        e.set_color(png::ColorType::Rgba);
        e.set_depth(png::BitDepth::Eight);
        e.set_compression(png::Compression::Fast);
        for (k, v) in text {
            e.add_text_chunk((*k).to_string(), (*v).to_string())
                .map_err(enc_err)?;
        }
        if frames.len() > 1 {
            let n = u32::try_from(frames.len()).map_err(enc_err)?;
            e.set_animated(n, 0).map_err(enc_err)?;
            e.set_frame_delay(delay_ms, 1000).map_err(enc_err)?;
        }
        let mut w = e.write_header().map_err(enc_err)?;
        for f in frames {
            if f.width != first.width || f.height != first.height {
                return Err(EncodeError("frames differ in size".into()));
            }
            w.write_image_data(&f.rgba).map_err(enc_err)?;
        }
        w.finish().map_err(enc_err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_picks_matplotlib_entries() {
        let n = Norm {
            vmin: 0.0,
            vmax: 1.0,
            f32: false,
        };
        assert_eq!(n.index(0.0), Some(0));
        assert_eq!(n.index(1.0), Some(255)); // xa == N -> N - 1
        assert_eq!(n.index(0.5), Some(128));
        assert_eq!(n.index(-3.0), Some(0));
        assert_eq!(n.index(7.0), Some(255));
        assert_eq!(n.index(f64::NAN), None);
        assert_eq!(n.index(255.9 / 256.0), Some(255));
        let same = Norm {
            vmin: 2.0,
            vmax: 2.0,
            f32: true,
        };
        assert_eq!(same.index(5.0), Some(0));
    }

    #[test]
    fn tables_hold_matplotlib_names() {
        let v = colormap("viridis").unwrap();
        assert_eq!(&v[..3], &[68, 1, 84]); // viridis(0)
        assert!(colormap("RdBu_r").is_some());
        assert!(colormap("nope").is_none());
    }

    #[test]
    fn apng_has_frames() {
        let f = vec![Canvas::new(3, 2, WHITE), Canvas::new(3, 2, BLACK)];
        let b = apng(&f, 500, &[("Title", "t")]).unwrap();
        let d = png::Decoder::new(Cursor::new(b)).read_info().unwrap();
        assert_eq!(d.info().animation_control().unwrap().num_frames, 2);
    }
}
