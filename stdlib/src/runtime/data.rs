//! Datasets: IDX files (MNIST, Fashion-MNIST; gzipped or raw), the CIFAR-10 binary format
//! and PNG or JPEG image folders, each read into a [`Split`] of f32 pixels in [0, 1] and i32
//! labels. Every failure names the file and what was wrong with it.

use nabla_lang::backend::memory;
use std::borrow::Cow;
use std::sync::Arc;

use super::transform::{Transform, View};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One split of a dataset, in memory.
#[derive(Clone, Debug)]
pub struct Split {
    /// What it is, for messages (`MNIST train`).
    pub name: String,
    /// Per-example shape [C, H, W].
    pub shape: [usize; 3],
    /// N·C·H·W pixels as bytes: `b` stands for `b / 255` in [0, 1]. Every format we read
    /// stores 8-bit pixels, and a quarter of the bytes is a quarter of the memory and of
    /// the traffic when a batch is gathered from rows in random order.
    /// Shared: a transformed split ([`Split::transformed`]) reads the same bytes.
    pub images: Arc<Vec<u8>>,
    pub labels: Vec<i32>,
    pub classes: usize,
    /// How stored examples become the net's input (none: as they are stored).
    pub view: Option<Arc<View>>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Bytes per stored example.
    pub fn example_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The shape of an example as the net sees it: after the transforms.
    pub fn input(&self) -> [usize; 3] {
        self.view.as_ref().map_or(self.shape, |v| v.to)
    }
    /// Values per example as the net sees it.
    pub fn input_len(&self) -> usize {
        self.input().iter().product()
    }
    /// Its first `n` examples (all of them when it has fewer), named so.
    pub fn first(&self, n: usize) -> Split {
        let n = n.min(self.len());
        let per = self.example_len();
        Split {
            name: if n == self.len() {
                self.name.clone()
            } else {
                format!("{} (first {n})", self.name)
            },
            images: Arc::new(self.images.get(..n * per).unwrap_or(&[]).to_vec()),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }

    /// The same examples seen through `steps` (after any this split already has).
    pub fn transformed(&self, steps: &[Transform]) -> Result<Split, String> {
        let mut all = self
            .view
            .as_ref()
            .map(|v| v.steps.clone())
            .unwrap_or_default();
        all.extend_from_slice(steps);
        let view = View::new(self.shape, &all).map_err(|e| format!("{}: {e}", self.name))?;
        Ok(Split {
            view: view.map(Arc::new),
            ..self.clone()
        })
    }
}

/// The bundled MNIST subset (7,996 train / 2,004 test), compiled into the binary so a
/// fresh clone and an installed binary both train out of the box.
const BUNDLED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../../data/mnist-10k/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// The bytes of a file that may be gzipped: decompressed into a buffer of the size the
/// gzip trailer gives (on huge pages when large, see [`pixel_buffer`]), or as they are.
fn gunzip_if_needed<'a>(bytes: &'a [u8], what: &str) -> Result<Cow<'a, [u8]>, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(Cow::Borrowed(bytes));
    }
    // ISIZE, the uncompressed size mod 2³², is only a hint (a corrupt trailer may promise
    // 4 GB): `pixel_buffer` reserves what it can.
    let hint = bytes
        .last_chunk::<4>()
        .map_or(0, |t| u32::from_le_bytes(*t) as usize);
    let mut out = pixel_buffer(hint);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("{what}: not a valid gzip file ({e})"))?;
    Ok(Cow::Owned(out))
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX file of unsigned bytes: its dims and its data. `rank` is 1 (labels) or
/// 3 (images).
pub fn parse_idx<'a>(
    bytes: &'a [u8],
    rank: usize,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8]), String> {
    if bytes.len() < 4 + 4 * rank {
        return Err(format!(
            "{what}: too short for an IDX header ({} bytes)",
            bytes.len()
        ));
    }
    let magic = be_u32(bytes, 0);
    let want = 0x0800 + rank as u32;
    if magic != want {
        return Err(format!(
            "{what}: wrong magic number {magic:#010x}; an IDX file of {rank}-d unsigned bytes starts with {want:#010x}"
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    let n: usize = dims.iter().product();
    let data = &bytes[4 + 4 * rank..];
    if data.len() != n {
        return Err(format!(
            "{what}: the header promises {n} bytes of data ({dims:?}) but the file has {} (truncated or corrupt)",
            data.len()
        ));
    }
    Ok((dims, data))
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The IDX file `stem` in `dir`, gzipped or raw.
fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
}

/// An empty vector with room for `n` pixels. On Linux a large one is backed by 2 MB pages
/// where the kernel allows it (transparent huge pages in `madvise` mode, the usual
/// default): training reads examples in random order, and with 4 KB pages nearly every
/// MNIST row cost a TLB miss, a two-level page walk under a hypervisor.
///
/// A reservation the allocator refuses leaves the vector empty, to grow as it is filled.
fn pixel_buffer(n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        return v;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, end) = (v.as_ptr() as usize, v.as_ptr() as usize + n);
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the vector's allocation; the advice changes
            // only how its pages are backed, never their contents. A refusal is harmless.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// One split from images and labels IDX bytes.
pub fn idx_split(
    name: &str,
    images: (&[u8], &str),
    labels: (&[u8], &str),
    classes: usize,
) -> Result<Split, String> {
    let img = gunzip_if_needed(images.0, images.1)?;
    let lab = gunzip_if_needed(labels.0, labels.1)?;
    let (dims, pixels) = parse_idx(&img, 3, images.1)?;
    let (ldims, labs) = parse_idx(&lab, 1, labels.1)?;
    if dims[0] != ldims[0] {
        return Err(format!(
            "{} has {} images but {} has {} labels",
            images.1, dims[0], labels.1, ldims[0]
        ));
    }
    if let Some(bad) = labs.iter().find(|l| usize::from(**l) >= classes) {
        return Err(format!("{}: label {bad} is not below {classes}", labels.1));
    }
    let header = img.len() - pixels.len();
    let labels = labs.iter().map(|l| i32::from(*l)).collect();
    // Decompressed images keep their buffer, less the header: one copy of the pixels
    // in memory at a time, not three.
    let images = match img {
        Cow::Owned(mut all) => {
            all.drain(..header);
            all
        }
        Cow::Borrowed(raw) => {
            let mut images = pixel_buffer(raw.len() - header);
            images.extend_from_slice(&raw[header..]);
            images
        }
    };
    Ok(Split {
        name: name.to_string(),
        shape: [1, dims[1], dims[2]],
        images: Arc::new(images),
        labels,
        classes,
        view: None,
    })
}

/// A train/test pair of IDX splits from a directory.
pub fn idx_dir(dir: &Path, name: &str, classes: usize) -> Result<(Split, Split), String> {
    let mut out = Vec::new();
    for (split, prefix) in [("train", "train"), ("test", "t10k")] {
        let images = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))
            .ok_or_else(|| format!("no {prefix}-images-idx3-ubyte[.gz] in {}", dir.display()))?;
        let labels = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))
            .ok_or_else(|| format!("no {prefix}-labels-idx1-ubyte[.gz] in {}", dir.display()))?;
        let (ib, lb) = (read_file(&images)?, read_file(&labels)?);
        out.push(idx_split(
            &format!("{name} {split}"),
            (&ib, &images.display().to_string()),
            (&lb, &labels.display().to_string()),
            classes,
        )?);
    }
    let test = out.pop().ok_or("no test split")?;
    let train = out.pop().ok_or("no train split")?;
    Ok((train, test))
}

/// The bundled MNIST subset.
pub fn bundled_mnist() -> Result<(Split, Split), String> {
    let get = |n: &str| {
        BUNDLED
            .iter()
            .find(|(f, _)| *f == n)
            .map(|(_, b)| *b)
            .unwrap_or(&[])
    };
    let train = idx_split(
        "MNIST train",
        (get("train-images-idx3-ubyte.gz"), "bundled train images"),
        (get("train-labels-idx1-ubyte.gz"), "bundled train labels"),
        10,
    )?;
    let test = idx_split(
        "MNIST test",
        (get("t10k-images-idx3-ubyte.gz"), "bundled test images"),
        (get("t10k-labels-idx1-ubyte.gz"), "bundled test labels"),
        10,
    )?;
    Ok((train, test))
}

/// CIFAR-10 binary batches (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`):
/// records of one label byte and 3×32×32 pixel bytes.
pub fn cifar10(dir: &Path) -> Result<(Split, Split), String> {
    let read = |files: &[String], name: &str| -> Result<Split, String> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let path = dir.join(f);
            let bytes = read_file(&path)?;
            if bytes.is_empty() || bytes.len() % 3073 != 0 {
                return Err(format!(
                    "{}: {} bytes is not a whole number of CIFAR-10 records (3,073 bytes each): truncated or not CIFAR-10",
                    path.display(),
                    bytes.len()
                ));
            }
            for rec in bytes.chunks_exact(3073) {
                if rec[0] > 9 {
                    return Err(format!(
                        "{}: label {} is not below 10 (not the CIFAR-10 binary format?)",
                        path.display(),
                        rec[0]
                    ));
                }
                labels.push(i32::from(rec[0]));
                images.extend_from_slice(&rec[1..]);
            }
        }
        Ok(Split {
            name: name.into(),
            shape: [3, 32, 32],
            images: Arc::new(images),
            labels,
            classes: 10,
            view: None,
        })
    };
    let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok((
        read(&train, "CIFAR-10 train")?,
        read(&["test_batch.bin".to_string()], "CIFAR-10 test")?,
    ))
}

/// An image folder: `root/train/<class>/*` and `root/val/<class>/*` (or `test`), PNG or
/// JPEG images, classes in sorted order, images resized to `size`×`size` (bilinear), RGB.
/// The resized images of both splits must fit in `available` bytes (checked before any
/// image is read).
pub fn image_folder(
    root: &Path,
    size: usize,
    available: Option<u64>,
) -> Result<(Split, Split), String> {
    if size == 0 {
        return Err("the image size must be at least 1".into());
    }
    let classes_dir = root.join("train");
    let mut classes: Vec<String> = std::fs::read_dir(&classes_dir)
        .map_err(|e| {
            format!(
                "cannot read {}: {e} (an image folder has train/<class>/*.png or *.jpg)",
                classes_dir.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(format!("{}: no class folders", classes_dir.display()));
    }
    let val = ["val", "test"]
        .iter()
        .map(|d| root.join(d))
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("{}: no val/ or test/ folder", root.display()))?;
    // Every split's files with their classes, so the whole size is known first.
    let list = |dir: &Path| -> Vec<(PathBuf, usize)> {
        let mut out = Vec::new();
        for (c, class) in classes.iter().enumerate() {
            let Ok(entries) = std::fs::read_dir(dir.join(class)) else {
                continue;
            };
            // Hidden files (`.DS_Store`, editors' swap files) are not images.
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            out.extend(files.into_iter().map(|f| (f, c)));
        }
        out
    };
    let (train_files, val_files) = (list(&classes_dir), list(&val));
    // A class the training split has no image of could never be learned (and would
    // shift nothing visibly: its label would just never occur).
    if let Some(empty) = (0..classes.len()).find(|c| !train_files.iter().any(|f| f.1 == *c)) {
        return Err(format!(
            "{}: the class folder `{}` has no images (PNG or JPEG): add its images or remove it",
            classes_dir.join(&classes[empty]).display(),
            classes[empty]
        ));
    }
    let per_image = size.checked_mul(size).and_then(|a| a.checked_mul(3));
    let total = per_image.and_then(|p| p.checked_mul(train_files.len() + val_files.len()));
    memory::check(
        total.and_then(|n| memory::bytes_of(n, 1)),
        &format!(
            "{} images of {size}×{size} pixels (3 channels) from {}",
            train_files.len() + val_files.len(),
            root.display()
        ),
        available,
    )?;
    let load = |files: Vec<(PathBuf, usize)>, name: &str| -> Result<Split, String> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        {
            for (f, c) in files {
                if nabla_lang::host::interrupt::pending() {
                    return Err(nabla_lang::host::interrupt::MESSAGE.into());
                }
                let ext = f
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let pixels = match ext.as_str() {
                    "png" => decode_png(&f)?,
                    "jpg" | "jpeg" => decode_jpeg(&f)?,
                    _ => {
                        return Err(format!(
                            "{}: image folders hold PNG and JPEG images (.png, .jpg, .jpeg)",
                            f.display()
                        ));
                    }
                };
                images.extend(resize(&pixels, size));
                labels.push(c as i32);
            }
        }
        Ok(Split {
            name: name.into(),
            shape: [3, size, size],
            images: Arc::new(images),
            labels,
            classes: classes.len(),
            view: None,
        })
    };
    Ok((load(train_files, "train")?, load(val_files, "val")?))
}

/// Decoded 8-bit pixels: width, height, channels per pixel (1 to 4), row-major.
struct Pixels {
    w: usize,
    h: usize,
    channels: usize,
    data: Vec<u8>,
}

/// A PNG's pixels (palettes expanded, 16-bit samples reduced to 8).
fn decode_png(path: &Path) -> Result<Pixels, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: not a readable PNG ({e})", path.display());
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let mut data = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad(&"image too large"))?
    ];
    let info = reader.next_frame(&mut data).map_err(|e| bad(&e))?;
    Ok(Pixels {
        w: info.width as usize,
        h: info.height as usize,
        channels: info.color_type.samples(),
        data,
    })
}

/// A JPEG's pixels, as RGB (or one channel for a grayscale JPEG).
fn decode_jpeg(path: &Path) -> Result<Pixels, String> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let bad = |e: &dyn std::fmt::Display| format!("{}: not a readable JPEG ({e})", path.display());
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| bad(&format!("{e:?}")))?;
    let (w, h) = decoder.dimensions().ok_or_else(|| bad(&"no image size"))?;
    let len = decoder
        .output_buffer_size()
        .ok_or_else(|| bad(&"image too large"))?;
    let mut data = vec![0; len];
    decoder
        .decode_into(&mut data)
        .map_err(|e| bad(&format!("{e:?}")))?;
    let channels = len / (w * h).max(1);
    if w == 0 || h == 0 || !(1..=4).contains(&channels) {
        return Err(bad(&format!("{w}×{h} pixels with {len} bytes")));
    }
    Ok(Pixels {
        w,
        h,
        channels,
        data,
    })
}

/// Pixels as 3×size×size bytes, resized bilinearly (gray copied to all three channels,
/// alpha dropped).
fn resize(p: &Pixels, size: usize) -> Vec<u8> {
    to_input(p, 3, size, size)
}

/// Pixels as `channels`×`h`×`w` bytes, resized bilinearly: three channels are RGB (gray
/// copied to all three), one is gray (RGB as its luma, ITU-R BT.601); alpha is dropped.
/// `channels` is 1 or 3.
fn to_input(p: &Pixels, channels: usize, h: usize, w: usize) -> Vec<u8> {
    let (iw, ih) = (p.w, p.h);
    let px = |x: usize, y: usize, c: usize| -> f32 {
        let base = (y * iw + x) * p.channels;
        match (channels, p.channels >= 3) {
            (1, true) => {
                0.299 * f32::from(p.data[base])
                    + 0.587 * f32::from(p.data[base + 1])
                    + 0.114 * f32::from(p.data[base + 2])
            }
            (_, true) => f32::from(p.data[base + c]),
            (_, false) => f32::from(p.data[base]),
        }
    };
    let mut out = vec![0; channels * h * w];
    for c in 0..channels {
        for oy in 0..h {
            let fy = ((oy as f32 + 0.5) * ih as f32 / h as f32 - 0.5).clamp(0.0, (ih - 1) as f32);
            let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
            let y1 = (y0 + 1).min(ih - 1);
            for ox in 0..w {
                let fx =
                    ((ox as f32 + 0.5) * iw as f32 / w as f32 - 0.5).clamp(0.0, (iw - 1) as f32);
                let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
                let x1 = (x0 + 1).min(iw - 1);
                let top = px(x0, y0, c) * (1.0 - tx) + px(x1, y0, c) * tx;
                let bottom = px(x0, y1, c) * (1.0 - tx) + px(x1, y1, c) * tx;
                // Rounded to a byte, as image libraries' resizing does.
                let v = top * (1.0 - ty) + bottom * ty;
                out[(c * h + oy) * w + ox] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Images (PNG or JPEG, by extension) as a split of examples of `shape` [C, H, W]: each
/// decoded, converted to C channels (1: gray; 3: RGB) and resized to H×W, in order, with
/// label 0 (for predictions). An image that cannot be read or decoded is an error
/// naming its file; a net taking other than 1 or 3 channels is an error.
pub fn image_split(paths: &[PathBuf], shape: [usize; 3]) -> Result<Split, String> {
    let [c, h, w] = shape;
    if !(c == 1 || c == 3) || h == 0 || w == 0 {
        return Err(format!(
            "the net takes {c}×{h}×{w} inputs: images become 1 (gray) or 3 (RGB) channels of at least 1×1 pixels"
        ));
    }
    let mut images = Vec::new();
    for f in paths {
        let ext = f
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let pixels = match ext.as_str() {
            "png" => decode_png(f)?,
            "jpg" | "jpeg" => decode_jpeg(f)?,
            _ => {
                return Err(format!(
                    "{}: not a PNG or JPEG image (.png, .jpg, .jpeg)",
                    f.display()
                ));
            }
        };
        if pixels.w == 0 || pixels.h == 0 || !(1..=4).contains(&pixels.channels) {
            return Err(format!(
                "{}: an image of {}×{} pixels",
                f.display(),
                pixels.w,
                pixels.h
            ));
        }
        images.extend(to_input(&pixels, c, h, w));
    }
    Ok(Split {
        name: "the images".into(),
        shape,
        images: Arc::new(images),
        labels: vec![0; paths.len()],
        classes: 1,
        view: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_mnist_has_the_documented_split() {
        let (train, test) = bundled_mnist().expect("bundled data");
        assert_eq!((train.len(), test.len()), (7996, 2004));
        assert_eq!(train.shape, [1, 28, 28]);
        // Digits: black background, white strokes.
        let (lo, hi) = (train.images.iter().min(), train.images.iter().max());
        assert_eq!((lo, hi), (Some(&0), Some(&255)));
    }

    #[test]
    fn idx_errors_name_the_problem() {
        let e = parse_idx(&[0, 0, 8, 3, 0, 0, 0, 1], 1, "f").expect_err("wrong magic");
        assert!(e.contains("wrong magic number 0x00000803"), "{e}");
        let e = parse_idx(&[0, 0, 8, 1, 0, 0, 0, 5, 1, 2], 1, "f").expect_err("truncated");
        assert!(e.contains("promises 5 bytes") && e.contains("has 2"), "{e}");
        let e = gunzip_if_needed(&[0x1f, 0x8b, 1, 2, 3], "g.gz").expect_err("bad gzip");
        // A trailer promising 4 GB of a 9-byte file is only a hint.
        let e2 = gunzip_if_needed(&[0x1f, 0x8b, 8, 0, 0xff, 0xff, 0xff, 0xff, 0xff], "h.gz")
            .expect_err("bad gzip with a huge ISIZE");
        assert!(e2.starts_with("h.gz: not a valid gzip file"), "{e2}");
        assert!(e.starts_with("g.gz: not a valid gzip file"), "{e}");
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nabla-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn cifar_records_are_read_and_checked() {
        let d = scratch("cifar");
        let record = |label: u8, v: u8| -> Vec<u8> {
            std::iter::once(label)
                .chain(std::iter::repeat_n(v, 3072))
                .collect()
        };
        for i in 1..=5 {
            let bytes: Vec<u8> = [record(i, 255), record(0, 0)].concat();
            std::fs::write(d.join(format!("data_batch_{i}.bin")), bytes).expect("write");
        }
        std::fs::write(d.join("test_batch.bin"), record(9, 51)).expect("write");
        let (train, test) = cifar10(&d).expect("cifar");
        assert_eq!((train.len(), test.len(), train.shape), (10, 1, [3, 32, 32]));
        assert_eq!(&train.labels[..4], &[1, 0, 2, 0]);
        assert_eq!(
            (train.images[0], train.images[3072], test.images[5]),
            (255, 0, 51)
        );
        std::fs::write(d.join("test_batch.bin"), &record(9, 51)[..100]).expect("write");
        let e = cifar10(&d).expect_err("truncated");
        assert!(
            e.contains("test_batch.bin: 100 bytes is not a whole number of CIFAR-10 records"),
            "{e}"
        );
    }

    #[test]
    fn image_folders_are_read_resized_and_labelled_by_sorted_class() {
        let d = scratch("folder");
        let png = |path: &Path, rgb: [u8; 3]| {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            let f = std::fs::File::create(path).expect("create");
            let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 2, 2);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().expect("header");
            w.write_image_data(&rgb.repeat(4)).expect("pixels");
        };
        png(&d.join("train/dog/a.png"), [255, 0, 0]);
        png(&d.join("train/cat/b.png"), [0, 255, 0]);
        png(&d.join("val/dog/c.png"), [0, 0, 255]);
        let (train, val) = image_folder(&d, 4, None).expect("folder");
        assert_eq!(
            (train.len(), val.len(), train.shape, train.classes),
            (2, 1, [3, 4, 4], 2)
        );
        // Classes in sorted order: cat = 0, dog = 1.
        assert_eq!(train.labels, vec![0, 1]);
        // The cat image is green everywhere after resizing: channel 1 is 255, others 0.
        assert!(
            train.images[..16].iter().all(|v| *v == 0)
                && train.images[16..32].iter().all(|v| *v == 255)
        );
        // JPEG too (made by Pillow): an RGB one and a grayscale one.
        std::fs::write(
            d.join("train/dog/e.jpg"),
            include_bytes!("../../testdata/red-8x8.jpg"),
        )
        .expect("write");
        std::fs::write(
            d.join("train/cat/f.jpeg"),
            include_bytes!("../../testdata/gray-6x6.jpg"),
        )
        .expect("write");
        let (train, _) = image_folder(&d, 4, None).expect("folder with JPEGs");
        assert_eq!((train.len(), train.labels.clone()), (4, vec![0, 0, 1, 1]));
        // f.jpeg (cat's second image): mid-gray in every channel, within JPEG's rounding.
        let gray = &train.images[48..96];
        assert!(gray.iter().all(|v| v.abs_diff(128) < 2), "{gray:?}");
        // e.jpg (dog's second): red.
        let red = &train.images[144..192];
        assert!(
            red[..16].iter().all(|v| *v > 250) && red[16..].iter().all(|v| *v < 5),
            "{red:?}"
        );
        std::fs::write(d.join("val/dog/d.jpg"), b"not a jpeg").expect("write");
        let e = image_folder(&d, 4, None).expect_err("bad jpeg");
        assert!(e.contains("d.jpg: not a readable JPEG"), "{e}");
        std::fs::remove_file(d.join("val/dog/d.jpg")).expect("rm");
        std::fs::write(d.join("val/dog/g.gif"), b"GIF89a").expect("write");
        let e = image_folder(&d, 4, None).expect_err("gif");
        assert!(
            e.contains("g.gif: image folders hold PNG and JPEG images"),
            "{e}"
        );
        std::fs::remove_file(d.join("val/dog/g.gif")).expect("rm");
        // Hidden files are skipped; a class without images is an error naming it.
        std::fs::write(d.join("train/cat/.DS_Store"), b"\0\0").expect("write");
        image_folder(&d, 4, None).expect("hidden files are not images");
        std::fs::create_dir_all(d.join("train/emu")).expect("dir");
        std::fs::write(d.join("train/emu/.keep"), b"").expect("write");
        let e = image_folder(&d, 4, None).expect_err("empty class");
        assert!(
            e.contains("train/emu: the class folder `emu` has no images"),
            "{e}"
        );
    }

    #[test]
    fn transformed_splits_keep_their_bytes_and_report_the_net_shape() {
        let split = Split {
            name: "MNIST train".into(),
            shape: [1, 28, 28],
            images: Arc::new(vec![7; 2 * 784]),
            labels: vec![1, 2],
            classes: 10,
            view: None,
        };
        let t = split
            .transformed(&[Transform::Rgb, Transform::Resize(64)])
            .expect("valid");
        assert_eq!(
            (t.input(), t.input_len(), t.example_len()),
            ([3, 64, 64], 12288, 784)
        );
        assert!(Arc::ptr_eq(&t.images, &split.images));
        // Steps add to the ones a split has.
        let c = t.transformed(&[Transform::CenterCrop(56)]).expect("valid");
        assert_eq!(c.input(), [3, 56, 56]);
        // The first examples keep the view; more than there are is all of them.
        let f = t.first(1);
        assert_eq!((f.len(), f.images.len(), f.input()), (1, 784, [3, 64, 64]));
        assert_eq!(f.name, "MNIST train (first 1)");
        assert_eq!(t.first(5).len(), 2);
        let e = split
            .transformed(&[Transform::Resize(0)])
            .expect_err("size 0");
        assert!(
            e.starts_with("MNIST train: resize(0): the size must be at least 1"),
            "{e}"
        );
    }
}
