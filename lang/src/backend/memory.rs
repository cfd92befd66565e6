//! Allocating tensor storage so that too much is an error, not an abort: sizes are
//! computed with checked arithmetic, compared with what the backend says it can still
//! allocate ([`super::Backend::memory_available`]), and allocated with `try_reserve`, so a
//! parameter too large for memory, a batch too large, or an image size of a billion
//! becomes a message naming what was being allocated and how big.
//!
//! Pure: the caller passes the available memory (a backend knows it; `lang` reads no
//! system state).

/// The size of `n` values of `bytes_each` bytes, or `None` when it overflows.
pub fn bytes_of(n: usize, bytes_each: usize) -> Option<u64> {
    u64::try_from(n).ok()?.checked_mul(bytes_each as u64)
}

/// `b` bytes for people: `312.5 GiB`, `18.0 MiB`, `512 bytes`.
pub fn show_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} bytes");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Whether `bytes` (None: more than 2^64) fits in `available` (None: unknown, so only the
/// allocation itself can tell); the error names `what`.
pub fn check(bytes: Option<u64>, what: &str, available: Option<u64>) -> Result<(), String> {
    let Some(bytes) = bytes else {
        return Err(format!(
            "cannot allocate {what}: its size does not fit in 64 bits"
        ));
    };
    match available {
        Some(a) if bytes > a => Err(format!(
            "cannot allocate {} for {what}: only {} of memory is available",
            show_bytes(bytes),
            show_bytes(a)
        )),
        _ => Ok(()),
    }
}

/// Below this many bytes an allocation is not checked against the available memory:
/// asking costs a file read, and a small allocation that fails is refused by
/// `try_reserve` all the same.
pub const CHECK_MIN: u64 = 16 << 20;

/// [`check`], asking `available` only for sizes of at least [`CHECK_MIN`].
fn check_large(
    bytes: Option<u64>,
    what: &str,
    available: impl FnOnce() -> Option<u64>,
) -> Result<(), String> {
    match bytes {
        Some(b) if b < CHECK_MIN => Ok(()),
        _ => check(bytes, what, available()),
    }
}

/// The number of elements of a tensor of `shape`; `None` when it overflows.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

/// `n` default values (zeros), checked against `available()` first and allocated without
/// aborting when the allocation fails.
pub fn zeroed<T: Clone + Default>(
    n: usize,
    what: &str,
    available: impl FnOnce() -> Option<u64>,
) -> Result<Vec<T>, String> {
    let bytes = bytes_of(n, std::mem::size_of::<T>());
    check_large(bytes, what, available)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        format!(
            "cannot allocate {} for {what}: the system refused it",
            bytes.map_or_else(|| "more than 2^64 bytes".into(), show_bytes)
        )
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// Makes `v` hold `n` values (default values where it grows), like `resize`, without
/// aborting when growing fails. `available` is asked only when `v` must grow (a training
/// loop refills the same buffers every step).
pub fn resize<T: Clone + Default>(
    v: &mut Vec<T>,
    n: usize,
    what: &str,
    available: impl FnOnce() -> Option<u64>,
) -> Result<(), String> {
    if n > v.capacity() {
        let bytes = bytes_of(n, std::mem::size_of::<T>());
        check_large(bytes, what, available)?;
        v.try_reserve_exact(n - v.len()).map_err(|_| {
            format!(
                "cannot allocate {} for {what}: the system refused it",
                bytes.map_or_else(|| "more than 2^64 bytes".into(), show_bytes)
            )
        })?;
    }
    v.resize(n, T::default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_too_large_are_errors_naming_what_and_how_big() {
        let e = zeroed::<f32>(1 << 40, "the weights of `Big`", || Some(8 << 30))
            .expect_err("4 TiB do not fit in 8 GiB");
        assert_eq!(
            e,
            "cannot allocate 4.0 TiB for the weights of `Big`: only 8.0 GiB of memory is available"
        );
        assert!(
            zeroed::<f32>(usize::MAX, "x", || None)
                .expect_err("overflow")
                .contains("64 bits")
        );
        // Unknown availability: the allocator decides (this one is refused).
        assert!(zeroed::<f64>(usize::MAX / 16, "y", || None).is_err());
        assert_eq!(
            zeroed::<f32>(3, "z", || Some(12)).expect("fits"),
            vec![0.0; 3]
        );
        // Small sizes do not ask (the closure would refuse).
        assert!(zeroed::<f32>(1000, "small", || Some(0)).is_ok());
        assert_eq!(numel(&[2, 3, 4]), Some(24));
        assert_eq!(numel(&[usize::MAX, 2]), None);
        let mut v = vec![1.0f32];
        resize(&mut v, 3, "w", || Some(64)).expect("grows");
        assert_eq!(v, [1.0, 0.0, 0.0]);
        assert_eq!(show_bytes(1536), "1.5 KiB");
    }
}
