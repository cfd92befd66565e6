//! Preprocessing of a dataset's images for a net: gray to RGB, resizing and centre
//! cropping, applied as each batch is written (the split keeps its stored bytes, so
//! Fashion-MNIST at 3×64×64 costs its 28×28 bytes in memory, not fifteen times that).
//!
//! A chain of [`Transform`]s becomes one [`View`]: for each output row and column, the
//! stored rows and columns it reads and their weights (resizing and cropping are
//! separable, and a chain of them composes into one such table per axis), and for each
//! output channel the stored channel. Writing an image is then a weighted sum of a few
//! stored pixels per output pixel, whatever the chain was.
//!
//! Resizing follows PIL and torchvision's `Resize` (antialiased bilinear): output pixel
//! `i` is centred at `(i + ½)·s` in the input (`s` = input / output size) and averages the
//! input pixels under a triangle of half-width `max(s, 1)`, weights normalized to sum 1.
//! Upscaling is plain bilinear with half-pixel centres; shrinking averages every pixel
//! it covers instead of skipping some. Values are not rounded back to bytes.

use std::fmt;

/// One preprocessing step (`std.data`'s `to_rgb()`, `resize(n)`, `center_crop(n)`).
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// One gray channel copied to three; three channels are left as they are.
    Rgb,
    /// The shorter side to this many pixels, the aspect ratio kept (torchvision's
    /// `Resize(n)`: the longer side becomes `⌊n · long / short⌋`).
    Resize(usize),
    /// The central n×n pixels (zeros around an image smaller than that), torchvision's
    /// `CenterCrop(n)`.
    CenterCrop(usize),
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Rgb => write!(f, "to_rgb()"),
            Transform::Resize(n) => write!(f, "resize({n})"),
            Transform::CenterCrop(n) => write!(f, "center_crop({n})"),
        }
    }
}

/// For each output index along one axis, the stored indexes it reads and their weights.
type Taps = Vec<Vec<(u32, f32)>>;

/// How stored examples of one shape become examples of another (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The steps, for messages.
    pub steps: Vec<Transform>,
    /// The stored examples' shape [C, H, W].
    pub from: [usize; 3],
    /// The shape the net sees.
    pub to: [usize; 3],
    /// The stored channel of each output channel.
    channels: Vec<usize>,
    rows: Taps,
    cols: Taps,
}

fn identity(n: usize) -> Taps {
    (0..n).map(|i| vec![(i as u32, 1.0)]).collect()
}

/// Antialiased bilinear taps from `input` to `output` pixels (see the module docs).
fn resize_taps(input: usize, output: usize) -> Taps {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = (centre - support + 0.5).floor().max(0.0) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(input);
            let taps: Vec<(u32, f64)> = (lo..hi)
                .filter_map(|x| {
                    let w = 1.0 - ((x as f64 + 0.5 - centre) / support).abs();
                    (w > 0.0).then_some((x as u32, w))
                })
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            taps.into_iter()
                .map(|(x, w)| (x, (w / total) as f32))
                .collect()
        })
        .collect()
}

/// Taps of a crop of `output` pixels starting at `start` (negative: zeros before the
/// image) from an axis of `input` pixels.
fn crop_taps(input: usize, output: usize, start: i64) -> Taps {
    (0..output as i64)
        .map(|o| {
            let s = o + start;
            if (0..input as i64).contains(&s) {
                vec![(s as u32, 1.0)]
            } else {
                vec![]
            }
        })
        .collect()
}

/// Where torchvision's `CenterCrop` starts a crop of `output` pixels from `input`:
/// `round((input − output) / 2)` with Python's ties to even, or, for a crop larger than
/// the image, minus the padding before it, `⌊(output − input) / 2⌋`.
fn crop_start(input: usize, output: usize) -> i64 {
    if output > input {
        return -(((output - input) / 2) as i64);
    }
    let twice = input - output;
    let (half, odd) = (twice / 2, twice % 2 == 1);
    // An odd difference is a tie at .5: round to the even neighbour.
    (if odd && half % 2 == 1 { half + 1 } else { half }) as i64
}

/// `outer` read through `inner`: output index o reads Σ w·inner[m] over (m, w) in
/// outer[o].
fn compose(inner: &Taps, outer: Taps) -> Taps {
    outer
        .into_iter()
        .map(|taps| {
            let mut out: Vec<(u32, f32)> = Vec::new();
            for (m, w) in taps {
                for &(s, v) in &inner[m as usize] {
                    match out.iter_mut().find(|t| t.0 == s) {
                        Some(t) => t.1 += w * v,
                        None => out.push((s, w * v)),
                    }
                }
            }
            out.sort_by_key(|t| t.0);
            out
        })
        .collect()
}

impl View {
    /// The view of `steps` over stored examples of shape `from`; `None` when the steps
    /// change nothing. Sizes of 0 and channel counts other than 1 and 3 are errors.
    pub fn new(from: [usize; 3], steps: &[Transform]) -> Result<Option<View>, String> {
        let [c, h, w] = from;
        if !(c == 1 || c == 3) {
            return Err(format!(
                "images of {c} channels: the transforms take 1 (gray) or 3 (RGB)"
            ));
        }
        let (mut channels, mut rows, mut cols) =
            ((0..c).collect::<Vec<_>>(), identity(h), identity(w));
        let mut changed = false;
        for s in steps {
            let (h, w) = (rows.len(), cols.len());
            match *s {
                Transform::Rgb => {
                    if channels.len() == 1 {
                        channels = vec![channels[0]; 3];
                        changed = true;
                    }
                }
                Transform::Resize(0) | Transform::CenterCrop(0) => {
                    return Err(format!("{s}: the size must be at least 1"));
                }
                Transform::Resize(n) => {
                    if h == 0 || w == 0 {
                        return Err(format!("{s}: the images have no pixels ({h}×{w})"));
                    }
                    // The shorter side becomes n; the longer ⌊n · long / short⌋.
                    let (nh, nw) = if h <= w {
                        (n, (n * w / h).max(1))
                    } else {
                        ((n * h / w).max(1), n)
                    };
                    if (nh, nw) != (h, w) {
                        rows = compose(&rows, resize_taps(h, nh));
                        cols = compose(&cols, resize_taps(w, nw));
                        changed = true;
                    }
                }
                Transform::CenterCrop(n) => {
                    if (n, n) != (h, w) {
                        rows = compose(&rows, crop_taps(h, n, crop_start(h, n)));
                        cols = compose(&cols, crop_taps(w, n, crop_start(w, n)));
                        changed = true;
                    }
                }
            }
        }
        let to = [channels.len(), rows.len(), cols.len()];
        Ok(changed.then(|| View {
            steps: steps.to_vec(),
            from,
            to,
            channels,
            rows,
            cols,
        }))
    }

    /// Writes one stored example `img` through the view into `dst` (the net's shape),
    /// shifted by `(dy, dx)` and then mirrored when `flip` (random crop and flip, with
    /// zeros shifted in), each channel's value `v` (in byte units) written as
    /// `v · scale + shift`.
    pub fn write(
        &self,
        img: &[u8],
        (dy, dx, flip): (i64, i64, bool),
        affine: &dyn Fn(usize) -> (f32, f32),
        dst: &mut [f32],
    ) {
        let [_, sh, sw] = self.from;
        let [_, h, w] = self.to;
        let mut acc = vec![0.0f32; w];
        // Rows outermost, so that a source channel read by several output channels (gray
        // to RGB) is resampled once per row and written to each through its own affine.
        let affines: Vec<(f32, f32)> = (0..self.channels.len()).map(affine).collect();
        for y in 0..h {
            let mut resampled = None;
            for (c, &sc) in self.channels.iter().enumerate() {
                if resampled != Some(sc) {
                    self.resample_row(
                        &img[sc * sh * sw..(sc + 1) * sh * sw],
                        y,
                        (dy, dx, flip),
                        &mut acc,
                    );
                    resampled = Some(sc);
                }
                let (scale, shift) = affines[c];
                let out = &mut dst[(c * h + y) * w..(c * h + y + 1) * w];
                for (o, a) in out.iter_mut().zip(&acc) {
                    *o = a * scale + shift;
                }
            }
        }
    }

    /// Output row `y` of one source `plane` (in byte units), shifted and mirrored as in
    /// [`View::write`], into `acc`.
    fn resample_row(
        &self,
        plane: &[u8],
        y: usize,
        (dy, dx, flip): (i64, i64, bool),
        acc: &mut [f32],
    ) {
        let [_, _, sw] = self.from;
        let w = acc.len();
        acc.fill(0.0);
        let sy = y as i64 + dy;
        if !(0..self.rows.len() as i64).contains(&sy) {
            return;
        }
        for &(ry, wy) in &self.rows[sy as usize] {
            let src = &plane[ry as usize * sw..(ry as usize + 1) * sw];
            for (x, a) in acc.iter_mut().enumerate() {
                let sx = if flip { w - 1 - x } else { x } as i64 + dx;
                if !(0..w as i64).contains(&sx) {
                    continue;
                }
                let v: f32 = self.cols[sx as usize]
                    .iter()
                    .map(|&(rx, wx)| wx * f32::from(src[rx as usize]))
                    .sum();
                *a += wy * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(t: &[(u32, f32)]) -> f32 {
        t.iter().map(|x| x.1).sum()
    }

    #[test]
    fn upscaling_is_bilinear_with_half_pixel_centres() {
        // 28 -> 64: output i sits at (i + ½)·28/64 − ½ in input pixels, clamped at the
        // edges, and reads its two neighbours linearly.
        let taps = resize_taps(28, 64);
        for (i, t) in taps.iter().enumerate() {
            let f = ((i as f64 + 0.5) * 28.0 / 64.0 - 0.5).clamp(0.0, 27.0);
            let (x0, frac) = (f.floor() as u32, f - f.floor());
            let expect: Vec<(u32, f64)> = [(x0, 1.0 - frac), (x0 + 1, frac)]
                .into_iter()
                .filter(|t| t.1 > 1e-9)
                .collect();
            assert_eq!(t.len(), expect.len(), "output {i}: {t:?} vs {expect:?}");
            for (a, b) in t.iter().zip(&expect) {
                assert_eq!(a.0, b.0, "output {i}");
                assert!((f64::from(a.1) - b.1).abs() < 1e-6, "output {i}: {t:?}");
            }
        }
    }

    #[test]
    fn shrinking_averages_what_each_pixel_covers() {
        // 8 -> 4: each output covers two inputs; the triangle of half-width 2 centred
        // between them weighs them 3/8 each and their outer neighbours 1/8 each.
        let taps = resize_taps(8, 4);
        assert_eq!(
            taps[1],
            vec![(1, 0.125), (2, 0.375), (3, 0.375), (4, 0.125)]
        );
        // At the edge the weights are renormalized: 3/8, 3/8, 1/8 over 7/8.
        let t0: Vec<f32> = taps[0].iter().map(|t| t.1).collect();
        assert!((t0[0] - 3.0 / 7.0).abs() < 1e-6 && (t0[2] - 1.0 / 7.0).abs() < 1e-6);
        for t in resize_taps(320, 224).iter().chain(&resize_taps(97, 13)) {
            assert!((sum(t) - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn centre_crops_start_where_torchvision_starts_them() {
        // torchvision: int(round((h - th) / 2.0)), Python rounding ties to even.
        assert_eq!(crop_start(256, 224), 16);
        assert_eq!(crop_start(5, 2), 2); // 1.5 -> 2
        assert_eq!(crop_start(6, 1), 2); // 2.5 -> 2
        assert_eq!(crop_start(4, 1), 2); // 1.5 -> 2
        assert_eq!(crop_start(3, 2), 0); // 0.5 -> 0
        // Larger than the image: zeros before it, ⌊(th − h) / 2⌋ of them.
        assert_eq!(crop_start(28, 32), -2);
        assert_eq!(crop_start(27, 32), -2);
    }

    #[test]
    fn a_chain_writes_what_its_steps_would_one_after_another() {
        // Gray 6×4 -> RGB, the shorter side (4) to 3, so 6×4 -> 4×3 (⌊3 · 6 / 4⌋ = 4
        // rows), then the centre 3×3 of that.
        let img: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
        let steps = [
            Transform::Rgb,
            Transform::Resize(3),
            Transform::CenterCrop(3),
        ];
        let v = View::new([1, 6, 4], &steps)
            .expect("valid")
            .expect("changes");
        assert_eq!(v.to, [3, 3, 3]);
        // Step by step in f64: resize 6×4 -> 4×3, then rows 0..3 of 4 (start round(0.5) = 0).
        let (rt, ct) = (resize_taps(6, 4), resize_taps(4, 3));
        let resized = |y: usize, x: usize| -> f64 {
            let mut s = 0.0;
            for &(ry, wy) in &rt[y] {
                for &(rx, wx) in &ct[x] {
                    s += f64::from(wy)
                        * f64::from(wx)
                        * f64::from(img[ry as usize * 4 + rx as usize]);
                }
            }
            s
        };
        let mut dst = vec![f32::NAN; 27];
        v.write(&img, (0, 0, false), &|_| (1.0, 0.0), &mut dst);
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..3 {
                    let got = f64::from(dst[(c * 3 + y) * 3 + x]);
                    assert!((got - resized(y, x)).abs() < 1e-3, "({c}, {y}, {x}): {got}");
                }
            }
        }
        // Shifted down by one and mirrored: row 0 is black (shift), the rest moves.
        let mut moved = vec![f32::NAN; 27];
        v.write(&img, (-1, 0, true), &|_| (2.0, 0.5), &mut moved);
        for x in 0..3 {
            assert_eq!(moved[x], 0.5);
            let want = 2.0 * resized(0, 2 - x) + 0.5;
            assert!((f64::from(moved[3 + x]) - want).abs() < 1e-3);
        }
        // Each RGB channel made from the one gray channel gets its own normalization.
        let mut per = vec![f32::NAN; 27];
        v.write(
            &img,
            (0, 1, false),
            &|c| (1.0 + c as f32, c as f32),
            &mut per,
        );
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..3 {
                    let v = if x == 2 { 0.0 } else { resized(y, x + 1) };
                    let want = (1.0 + c as f64) * v + c as f64;
                    let got = f64::from(per[(c * 3 + y) * 3 + x]);
                    assert!(
                        (got - want).abs() < 1e-2,
                        "channel {c} ({y}, {x}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn steps_that_change_nothing_give_no_view() {
        let same = [Transform::Resize(28), Transform::CenterCrop(28)];
        assert_eq!(View::new([1, 28, 28], &same), Ok(None));
        assert_eq!(View::new([3, 32, 32], &[Transform::Rgb]), Ok(None));
        assert!(View::new([2, 8, 8], &[Transform::Rgb]).is_err());
        assert!(View::new([1, 8, 8], &[Transform::Resize(0)]).is_err());
    }
}
