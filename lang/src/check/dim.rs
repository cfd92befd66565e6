//! Symbolic dimensions: integer polynomials over dim variables (`B`, `H`, `C`), with floor
//! division and remainder kept as opaque atoms when they cannot be evaluated.
//!
//! Every dim is kept in a normal form (a sum of monomials with sorted atoms), so two dims
//! are equal exactly when their normal forms are equal. [`Dim::compare`] answers "equal",
//! "different" (the difference is a nonzero constant) or "unknown" (it depends on values),
//! which lets a generic definition be checked without false alarms and an instantiated
//! one be checked exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Atom {
    Sym(Rc<str>),
    Div(Box<Dim>, Box<Dim>),
    Rem(Box<Dim>, Box<Dim>),
}

/// A polynomial: monomial (sorted atoms, empty for the constant) → coefficient.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dim {
    terms: BTreeMap<Vec<Atom>, i64>,
}

/// Floor division (rounds toward −∞), as host code divides ints; `None` on overflow
/// (`i64::MIN / -1`). `b` is not zero.
fn floor_div(a: i64, b: i64) -> Option<i64> {
    let q = a.checked_div(b)?;
    Some(if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    })
}

/// The remainder of [`floor_div`]: it has the sign of the divisor. `b` is not zero.
fn floor_rem(a: i64, b: i64) -> Option<i64> {
    let r = a.checked_rem(b)?;
    Some(if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    })
}

/// Why dim arithmetic has no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DimError {
    /// A coefficient or constant does not fit in 64 bits.
    Overflow,
    /// Division or remainder by a known zero.
    DivByZero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    Different,
    Unknown,
}

impl Dim {
    pub fn konst(n: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if n != 0 {
            terms.insert(vec![], n);
        }
        Dim { terms }
    }

    pub fn sym(name: &str) -> Dim {
        Dim::atom(Atom::Sym(name.into()))
    }

    fn atom(a: Atom) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![a], 1);
        Dim { terms }
    }

    /// The value, when the dim does not depend on any variable.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&vec![]).copied(),
            _ => None,
        }
    }

    /// The variable's name, when the dim is exactly one variable.
    pub fn as_sym(&self) -> Option<&str> {
        if self.terms.len() != 1 {
            return None;
        }
        match self.terms.iter().next() {
            Some((m, 1)) if m.len() == 1 => match &m[0] {
                Atom::Sym(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// `self + other`; an error when a coefficient leaves the 64-bit range.
    pub fn add(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.checked_add(*c).ok_or(DimError::Overflow)?;
            if *e == 0 {
                terms.remove(m);
            }
        }
        Ok(Dim { terms })
    }

    pub fn neg(&self) -> Result<Dim, DimError> {
        let terms = self
            .terms
            .iter()
            .map(|(m, c)| Ok((m.clone(), c.checked_neg().ok_or(DimError::Overflow)?)))
            .collect::<Result<_, DimError>>()?;
        Ok(Dim { terms })
    }

    pub fn sub(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.checked_sub(*c).ok_or(DimError::Overflow)?;
            if *e == 0 {
                terms.remove(m);
            }
        }
        Ok(Dim { terms })
    }

    pub fn mul(&self, other: &Dim) -> Result<Dim, DimError> {
        let mut out = Dim::default();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &other.terms {
                let mut m: Vec<Atom> = m1.iter().chain(m2.iter()).cloned().collect();
                m.sort();
                let mut one = BTreeMap::new();
                one.insert(m, c1.checked_mul(*c2).ok_or(DimError::Overflow)?);
                out = out.add(&Dim { terms: one })?;
            }
        }
        Ok(out)
    }

    /// `self + other` for counts (multiply-adds, parameters), which stop at `i64::MAX`
    /// instead of failing: a count is reported, never used as a size.
    pub fn saturating_add(&self, other: &Dim) -> Dim {
        self.add(other).unwrap_or_else(|_| Dim::konst(i64::MAX))
    }

    /// `self * other` for counts; see [`Dim::saturating_add`].
    pub fn saturating_mul(&self, other: &Dim) -> Dim {
        self.mul(other).unwrap_or_else(|_| Dim::konst(i64::MAX))
    }

    /// Floor division.
    pub fn div(&self, other: &Dim) -> Result<Dim, DimError> {
        Ok(match (self.as_const(), other.as_const()) {
            (_, Some(0)) => return Err(DimError::DivByZero),
            (Some(a), Some(b)) => Dim::konst(floor_div(a, b).ok_or(DimError::Overflow)?),
            (_, Some(1)) => self.clone(),
            (_, Some(-1)) => self.neg()?,
            (_, Some(b)) if self.terms.values().all(|c| c % b == 0) => Dim {
                terms: self.terms.iter().map(|(m, c)| (m.clone(), c / b)).collect(),
            },
            _ if self == other => Dim::konst(1),
            _ => match self.exact_monomial_div(other) {
                Some(q) => q,
                None => Dim::atom(Atom::Div(Box::new(self.clone()), Box::new(other.clone()))),
            },
        })
    }

    /// `self / other` when `other` is one monomial dividing every term exactly
    /// (`B*784 / B = 784`).
    fn exact_monomial_div(&self, other: &Dim) -> Option<Dim> {
        let (dm, dc) = match other.terms.iter().collect::<Vec<_>>().as_slice() {
            [(m, c)] => ((*m).clone(), **c),
            _ => return None,
        };
        let mut out = BTreeMap::new();
        for (m, c) in &self.terms {
            if c.checked_rem(dc)? != 0 {
                return None;
            }
            let mut rest = m.clone();
            for a in &dm {
                let pos = rest.iter().position(|x| x == a)?;
                rest.remove(pos);
            }
            out.insert(rest, c.checked_div(dc)?);
        }
        Some(Dim { terms: out })
    }

    /// Remainder of floor division.
    pub fn rem(&self, other: &Dim) -> Result<Dim, DimError> {
        Ok(match (self.as_const(), other.as_const()) {
            (_, Some(0)) => return Err(DimError::DivByZero),
            (_, Some(1 | -1)) => Dim::konst(0),
            (Some(a), Some(b)) => Dim::konst(floor_rem(a, b).ok_or(DimError::Overflow)?),
            (_, Some(b)) if self.terms.values().all(|c| c % b == 0) => Dim::konst(0),
            _ if self == other => Dim::konst(0),
            _ if self.exact_monomial_div(other).is_some() => Dim::konst(0),
            _ => Dim::atom(Atom::Rem(Box::new(self.clone()), Box::new(other.clone()))),
        })
    }

    pub fn compare(&self, other: &Dim) -> Cmp {
        // A difference that overflows is between two constants far apart: different.
        match self.sub(other).map(|d| d.as_const()) {
            Ok(Some(0)) => Cmp::Equal,
            Ok(Some(_)) | Err(_) => Cmp::Different,
            Ok(None) => Cmp::Unknown,
        }
    }

    /// Replaces variables by values (to count per-example work, `B = 1`). A division
    /// by a value that becomes zero stays unevaluated; a coefficient leaving the 64-bit
    /// range is an error.
    pub fn subst(&self, f: &dyn Fn(&str) -> Option<Dim>) -> Result<Dim, DimError> {
        let mut out = Dim::default();
        for (m, c) in &self.terms {
            let mut term = Dim::konst(*c);
            for a in m {
                let v = match a {
                    Atom::Sym(s) => f(s).unwrap_or_else(|| Dim::atom(a.clone())),
                    Atom::Div(x, y) => match x.subst(f)?.div(&y.subst(f)?) {
                        Err(DimError::DivByZero) => Dim::atom(a.clone()),
                        r => r?,
                    },
                    Atom::Rem(x, y) => match x.subst(f)?.rem(&y.subst(f)?) {
                        Err(DimError::DivByZero) => Dim::atom(a.clone()),
                        r => r?,
                    },
                };
                term = term.mul(&v)?;
            }
            out = out.add(&term)?;
        }
        Ok(out)
    }

    /// Whether `name` occurs anywhere in the dim.
    pub fn mentions(&self, name: &str) -> bool {
        self.terms.keys().flatten().any(|a| match a {
            Atom::Sym(s) => &**s == name,
            Atom::Div(x, y) | Atom::Rem(x, y) => x.mentions(name) || y.mentions(name),
        })
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Atom::Sym(s) => write!(f, "{s}"),
            Atom::Div(a, b) => write!(f, "{} / {}", paren(a), paren(b)),
            Atom::Rem(a, b) => write!(f, "{} % {}", paren(a), paren(b)),
        }
    }
}

fn paren(d: &Dim) -> String {
    if d.terms.len() > 1
        || d.terms
            .keys()
            .any(|m| m.len() > 1 || m.iter().any(|a| !matches!(a, Atom::Sym(_))))
    {
        format!("({d})")
    } else {
        d.to_string()
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.terms.is_empty() {
            return write!(f, "0");
        }
        // Variables first, the constant last: `H + 2`, not `2 + H`.
        let mut first = true;
        let mut terms: Vec<_> = self.terms.iter().collect();
        terms.sort_by_key(|(m, _)| m.is_empty());
        for (m, c) in terms {
            let (neg, mag) = (*c < 0, c.unsigned_abs());
            if first {
                if neg {
                    write!(f, "-")?;
                }
            } else {
                write!(f, " {} ", if neg { "-" } else { "+" })?;
            }
            first = false;
            if m.is_empty() {
                write!(f, "{mag}")?;
                continue;
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            let parts: Vec<String> = m
                .iter()
                .map(|a| {
                    if m.len() > 1 && !matches!(a, Atom::Sym(_)) {
                        format!("({a})")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            write!(f, "{}", parts.join("*"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form() -> Result<(), DimError> {
        let h = Dim::sym("H");
        let two = Dim::konst(2);
        // (H + 2*1 - 1*(3 - 1) - 1) / 1 + 1 == H
        let out = h
            .add(&two)?
            .sub(&two)?
            .sub(&Dim::konst(1))?
            .div(&Dim::konst(1))?
            .add(&Dim::konst(1))?;
        assert_eq!(out, h.clone());
        assert_eq!(h.mul(&two)?.to_string(), "2*H");
        assert_eq!(h.div(&two)?.to_string(), "H / 2");
        assert_eq!(Dim::konst(7).div(&two)?, Dim::konst(3));
        assert_eq!(h.add(&Dim::konst(1))?.compare(&h), Cmp::Different);
        assert_eq!(h.compare(&Dim::sym("W")), Cmp::Unknown);
        assert_eq!(h.mul(&two)?.div(&two)?, h.clone());
        assert_eq!(
            h.div(&two)?
                .subst(&|s| (s == "H").then(|| Dim::konst(28)))?,
            Dim::konst(14)
        );
        assert_eq!(Dim::konst(0).div(&Dim::konst(0)), Err(DimError::DivByZero));
        Ok(())
    }

    /// Every operation on constants near the ends of the 64-bit range either gives the
    /// exact result (checked against i128) or says it overflows; none panics.
    #[test]
    fn arithmetic_never_wraps_or_panics() {
        let edges = [
            i64::MIN,
            i64::MIN + 1,
            -(1 << 32),
            -3,
            -1,
            0,
            1,
            2,
            3,
            1 << 31,
            1 << 32,
            i64::MAX - 1,
            i64::MAX,
        ];
        let fits = |v: i128| i64::try_from(v).ok();
        for &a in &edges {
            for &b in &edges {
                let (x, y) = (Dim::konst(a), Dim::konst(b));
                let (wa, wb) = (a as i128, b as i128);
                let expect = |v: Option<i64>| v.map(Dim::konst).ok_or(DimError::Overflow);
                assert_eq!(x.add(&y), expect(fits(wa + wb)), "{a} + {b}");
                assert_eq!(x.sub(&y), expect(fits(wa - wb)), "{a} - {b}");
                assert_eq!(x.mul(&y), expect(fits(wa * wb)), "{a} * {b}");
                if b == 0 {
                    assert_eq!(x.div(&y), Err(DimError::DivByZero));
                    assert_eq!(x.rem(&y), Err(DimError::DivByZero));
                } else {
                    // Floor division, its remainder with the divisor's sign.
                    let q = wa.div_euclid(wb) - i128::from(wb < 0 && wa.rem_euclid(wb) != 0);
                    assert_eq!(x.div(&y), expect(fits(q)), "{a} / {b}");
                    assert_eq!(x.rem(&y), expect(fits(wa - q * wb)), "{a} % {b}");
                }
                // The same with a variable alongside, so the polynomial paths run too.
                let h = Dim::sym("H");
                let _ = x.add(&h).and_then(|s| s.mul(&y)).and_then(|p| p.div(&y));
                let _ = h.mul(&x).and_then(|p| p.rem(&y));
            }
        }
    }
}
