//! Named sets of host-side tensors: a model's parameters, their gradients, or the contents
//! of a safetensors file written by another tool. Scripts save, load and compare them, so
//! a gradient computed by nabla can be checked against PyTorch's or JAX's on the same batch.

use std::path::Path;

use super::files::{canonical_safetensors, write_atomically};

/// One named tensor, in f32 (what every backend computes in).
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A named set of tensors, in a fixed order (the model's, or the file's sorted names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensors {
    pub items: Vec<Named>,
}

impl Tensors {
    pub fn get(&self, name: &str) -> Option<&Named> {
        self.items.iter().find(|t| t.name == name)
    }

    /// The L2 norm of all the tensors together (the global gradient norm of clipping).
    pub fn l2_norm(&self) -> f64 {
        self.items
            .iter()
            .flat_map(|t| &t.data)
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt()
    }

    /// The worst, over tensors, of `max|a − b| / max|b|` (the error relative to the largest
    /// entry of `b`, so entries near zero do not dominate). Both sets must hold the same
    /// names with the same shapes. Returns (error, name of the worst tensor).
    pub fn max_rel_error(&self, reference: &Tensors) -> Result<(f64, String), String> {
        let mut worst = (0.0, String::new());
        for r in &reference.items {
            if self.get(&r.name).is_none() {
                return Err(format!(
                    "`{}` is in the reference set but not in the other",
                    r.name
                ));
            }
        }
        for a in &self.items {
            let b = reference
                .get(&a.name)
                .ok_or_else(|| format!("`{}` is not in the reference set", a.name))?;
            if a.shape != b.shape {
                return Err(format!(
                    "`{}` has shape {:?} here and {:?} in the reference set",
                    a.name, a.shape, b.shape
                ));
            }
            let diff = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
                .fold(0.0, f64::max);
            let scale = b
                .data
                .iter()
                .map(|y| f64::from(*y).abs())
                .fold(0.0, f64::max);
            let e = if diff == 0.0 {
                0.0
            } else if scale == 0.0 {
                f64::INFINITY
            } else {
                diff / scale
            };
            if e.is_nan() || e > worst.0 || worst.1.is_empty() {
                worst = (e, a.name.clone());
            }
        }
        Ok(worst)
    }

    /// Writes the set to `path` as safetensors (f32, row-major), atomically, with
    /// `metadata`; the same set and metadata always give the same bytes.
    pub fn save(
        &self,
        path: &Path,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let bytes: Vec<Vec<u8>> = self
            .items
            .iter()
            .map(|t| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = self
            .items
            .iter()
            .zip(&bytes)
            .map(|(t, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                    .map(|v| (t.name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let out = safetensors::serialize(views, Some(metadata.into_iter().collect()))
            .map_err(|e| e.to_string())?;
        write_atomically(path, &canonical_safetensors(out)?)
    }

    /// Reads every tensor of a safetensors file, converting f64, f16 and bf16 to f32
    /// (other tools often save gradients in f64). Names come back sorted.
    pub fn load(path: &Path) -> Result<Tensors, String> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            format!("{shown} is not a valid safetensors file (truncated or corrupt): {e}")
        })?;
        let mut items = Vec::new();
        let mut names = st.names();
        names.sort();
        for name in names {
            let view = st
                .tensor(name)
                .map_err(|e| format!("{shown}: `{name}`: {e}"))?;
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                format!(
                    "{shown}: `{name}` is {:?}; nabla reads F32, F64, F16 and BF16 tensors",
                    view.dtype()
                )
            })?;
            items.push(Named {
                name: name.to_string(),
                shape: view.shape().to_vec(),
                data,
            });
        }
        Ok(Tensors { items })
    }
}

/// Little-endian floats of `dtype` as f32 (`None` for other dtypes).
pub(super) fn to_f32(dtype: safetensors::Dtype, b: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype::*;
    Some(match dtype {
        F32 => super::model::f32s(b),
        F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        F16 => b
            .chunks_exact(2)
            .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => return None,
    })
}

/// IEEE half precision to f32 (subnormals, infinities and NaN included).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[(&str, &[usize], &[f32])]) -> Tensors {
        Tensors {
            items: items
                .iter()
                .map(|(n, s, d)| Named {
                    name: n.to_string(),
                    shape: s.to_vec(),
                    data: d.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn relative_error_is_against_the_largest_reference_entry() {
        let a = set(&[("w", &[2], &[1.0, 2.001]), ("b", &[1], &[0.5])]);
        let b = set(&[("w", &[2], &[1.0, 2.0]), ("b", &[1], &[0.5])]);
        let (e, name) = a.max_rel_error(&b).expect("same layout");
        assert_eq!(name, "w");
        assert!((e - 0.001 / 2.0).abs() < 1e-6, "{e}");
        assert_eq!(b.max_rel_error(&b).expect("same").0, 0.0);
    }

    #[test]
    fn mismatched_sets_are_errors() {
        let a = set(&[("w", &[2], &[1.0, 2.0])]);
        let b = set(&[("w", &[1, 2], &[1.0, 2.0])]);
        let c = set(&[("v", &[2], &[1.0, 2.0])]);
        assert!(a.max_rel_error(&b).expect_err("shape").contains("shape"));
        assert!(a.max_rel_error(&c).is_err());
    }

    /// The same tensors and metadata give the same bytes every time (the safetensors
    /// crate writes metadata in a hash map's order, which varies between maps).
    #[test]
    fn saving_is_byte_for_byte_reproducible() {
        let dir = std::env::temp_dir().join(format!("nabla-tensors-repro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let a = set(&[("b", &[1], &[3.0]), ("w", &[2], &[1.0, 2.0])]);
        let meta: std::collections::BTreeMap<String, String> =
            ["format", "net", "epoch", "steps", "z", "a"]
                .iter()
                .map(|k| (k.to_string(), format!("value of {k}")))
                .collect();
        let path = dir.join("r.safetensors");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            a.save(&path, meta.clone()).expect("save");
            seen.insert(std::fs::read(&path).expect("read"));
        }
        assert_eq!(seen.len(), 1, "the bytes differ between saves");
        let bytes = seen.into_iter().next().unwrap_or_default();
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize) % 8,
            0
        );
        assert_eq!(Tensors::load(&path).expect("load"), a);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn save_and_load_round_trip_and_read_f64() {
        let dir = std::env::temp_dir().join(format!("nabla-tensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let a = set(&[("b", &[1], &[0.5]), ("w", &[2, 2], &[1.0, -2.0, 3.5, 0.0])]);
        let path = dir.join("a.safetensors");
        a.save(&path, Default::default()).expect("save");
        assert_eq!(Tensors::load(&path).expect("load"), a);
        // An f64 file, as numpy or torch write by default.
        let bytes: Vec<u8> = [1.5f64, -0.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &bytes)
            .expect("view");
        let out = safetensors::serialize(vec![("x".to_string(), v)], None).expect("serialize");
        std::fs::write(dir.join("d.safetensors"), out).expect("write");
        assert_eq!(
            Tensors::load(&dir.join("d.safetensors"))
                .expect("load f64")
                .items[0]
                .data,
            vec![1.5, -0.25]
        );
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        std::fs::write(dir.join("bad.safetensors"), b"\x10\x00\x00\x00").expect("write");
        assert!(
            Tensors::load(&dir.join("bad.safetensors"))
                .expect_err("truncated")
                .contains("truncated or corrupt")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
