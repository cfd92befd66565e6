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

    pub fn add(&self, other: &Dim) -> Dim {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.saturating_add(*c);
            if *e == 0 {
                terms.remove(m);
            }
        }
        Dim { terms }
    }

    pub fn neg(&self) -> Dim {
        Dim {
            terms: self
                .terms
                .iter()
                .map(|(m, c)| (m.clone(), c.saturating_neg()))
                .collect(),
        }
    }

    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.neg())
    }

    pub fn mul(&self, other: &Dim) -> Dim {
        let mut out = Dim::default();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &other.terms {
                let mut m: Vec<Atom> = m1.iter().chain(m2.iter()).cloned().collect();
                m.sort();
                let mut one = BTreeMap::new();
                one.insert(m, c1.saturating_mul(*c2));
                out = out.add(&Dim { terms: one });
            }
        }
        out
    }

    /// Floor division. `None` when dividing by a known zero.
    pub fn div(&self, other: &Dim) -> Option<Dim> {
        match (self.as_const(), other.as_const()) {
            (_, Some(0)) => None,
            (Some(a), Some(b)) => Some(Dim::konst(a.div_euclid(b))),
            (_, Some(1)) => Some(self.clone()),
            (_, Some(b)) if self.terms.values().all(|c| c % b == 0) => Some(Dim {
                terms: self.terms.iter().map(|(m, c)| (m.clone(), c / b)).collect(),
            }),
            _ if self == other => Some(Dim::konst(1)),
            _ => match self.exact_monomial_div(other) {
                Some(q) => Some(q),
                None => Some(Dim::atom(Atom::Div(
                    Box::new(self.clone()),
                    Box::new(other.clone()),
                ))),
            },
        }
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
            if c % dc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for a in &dm {
                let pos = rest.iter().position(|x| x == a)?;
                rest.remove(pos);
            }
            out.insert(rest, c / dc);
        }
        Some(Dim { terms: out })
    }

    /// Remainder of floor division. `None` when dividing by a known zero.
    pub fn rem(&self, other: &Dim) -> Option<Dim> {
        match (self.as_const(), other.as_const()) {
            (_, Some(0)) => None,
            (Some(a), Some(b)) => Some(Dim::konst(a.rem_euclid(b))),
            (_, Some(1)) => Some(Dim::konst(0)),
            (_, Some(b)) if self.terms.values().all(|c| c % b == 0) => Some(Dim::konst(0)),
            _ if self == other => Some(Dim::konst(0)),
            _ if self.exact_monomial_div(other).is_some() => Some(Dim::konst(0)),
            _ => Some(Dim::atom(Atom::Rem(
                Box::new(self.clone()),
                Box::new(other.clone()),
            ))),
        }
    }

    pub fn compare(&self, other: &Dim) -> Cmp {
        let d = self.sub(other);
        match d.as_const() {
            Some(0) => Cmp::Equal,
            Some(_) => Cmp::Different,
            None => Cmp::Unknown,
        }
    }

    /// Replaces variables by values; used to instantiate a signature and to count
    /// per-example work (`B = 1`).
    pub fn subst(&self, f: &dyn Fn(&str) -> Option<Dim>) -> Dim {
        let mut out = Dim::default();
        for (m, c) in &self.terms {
            let mut term = Dim::konst(*c);
            for a in m {
                let v = match a {
                    Atom::Sym(s) => f(s).unwrap_or_else(|| Dim::atom(a.clone())),
                    Atom::Div(x, y) => x
                        .subst(f)
                        .div(&y.subst(f))
                        .unwrap_or_else(|| Dim::atom(a.clone())),
                    Atom::Rem(x, y) => x
                        .subst(f)
                        .rem(&y.subst(f))
                        .unwrap_or_else(|| Dim::atom(a.clone())),
                };
                term = term.mul(&v);
            }
            out = out.add(&term);
        }
        out
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
    fn normal_form() {
        let h = Dim::sym("H");
        let two = Dim::konst(2);
        // (H + 2*1 - 1*(3 - 1) - 1) / 1 + 1 == H
        let out = h
            .add(&two)
            .sub(&two)
            .sub(&Dim::konst(1))
            .div(&Dim::konst(1))
            .and_then(|d| Some(d.add(&Dim::konst(1))));
        assert_eq!(out, Some(h.clone()));
        assert_eq!(h.mul(&two).to_string(), "2*H");
        assert_eq!(h.div(&two).map(|d| d.to_string()), Some("H / 2".into()));
        assert_eq!(Dim::konst(7).div(&two), Some(Dim::konst(3)));
        assert_eq!(h.add(&Dim::konst(1)).compare(&h), Cmp::Different);
        assert_eq!(h.compare(&Dim::sym("W")), Cmp::Unknown);
        assert_eq!(h.mul(&two).div(&two), Some(h.clone()));
        assert_eq!(
            h.div(&two)
                .map(|d| d.subst(&|s| (s == "H").then(|| Dim::konst(28)))),
            Some(Dim::konst(14))
        );
        assert_eq!(Dim::konst(0).div(&Dim::konst(0)), None);
    }
}
