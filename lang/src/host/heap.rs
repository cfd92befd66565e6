//! The host runtime's objects: strings, records, lists, nets and the runtime's opaque
//! values (models, dataset splits), held by a [`Heap`] and named by handles.
//!
//! A handle is an index into the heap plus one (0 is never a handle). Objects live until
//! the heap is dropped at the end of a run (or a REPL session): host programs allocate
//! per epoch, not per step — builtins on the hot path reuse their buffers — so this is a
//! region, not a leak.

use std::any::Any;

use super::{HostProgram, Word};
use crate::check::ItemId;

/// One heap object.
pub enum Object {
    Str(String),
    /// A record of the given type: its fields' words in declaration order.
    Record(ItemId, Vec<Word>),
    List(Vec<Word>),
    /// A net, by name.
    Net(String),
    /// A value of an `extern type`, owned by the builtins that made it.
    Native(Box<dyn Any>),
}

/// The run's objects.
#[derive(Default)]
pub struct Heap {
    objects: Vec<Object>,
}

impl Heap {
    pub fn alloc(&mut self, o: Object) -> Word {
        self.objects.push(o);
        self.objects.len() as Word
    }
    pub fn get(&self, h: Word) -> Result<&Object, String> {
        usize::try_from(h)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.objects.get(i))
            .ok_or_else(|| format!("bad handle {h}"))
    }
    pub fn get_mut(&mut self, h: Word) -> Result<&mut Object, String> {
        usize::try_from(h)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.objects.get_mut(i))
            .ok_or_else(|| format!("bad handle {h}"))
    }
    pub fn str(&self, h: Word) -> Result<&str, String> {
        match self.get(h)? {
            Object::Str(s) => Ok(s),
            _ => Err("expected a string".into()),
        }
    }
    pub fn string(&mut self, s: impl Into<String>) -> Word {
        self.alloc(Object::Str(s.into()))
    }
    pub fn record(&self, h: Word) -> Result<&[Word], String> {
        match self.get(h)? {
            Object::Record(_, w) => Ok(w),
            _ => Err("expected a record".into()),
        }
    }
    pub fn list(&self, h: Word) -> Result<&[Word], String> {
        match self.get(h)? {
            Object::List(w) => Ok(w),
            _ => Err("expected a list".into()),
        }
    }
    pub fn net(&self, h: Word) -> Result<&str, String> {
        match self.get(h)? {
            Object::Net(n) => Ok(n),
            _ => Err("expected a net".into()),
        }
    }
    pub fn native<T: 'static>(&self, h: Word) -> Result<&T, String> {
        match self.get(h)? {
            Object::Native(b) => b
                .downcast_ref()
                .ok_or_else(|| "a runtime object of another kind".into()),
            _ => Err("expected a runtime object".into()),
        }
    }
    pub fn native_mut<T: 'static>(&mut self, h: Word) -> Result<&mut T, String> {
        match self.get_mut(h)? {
            Object::Native(b) => b
                .downcast_mut()
                .ok_or_else(|| "a runtime object of another kind".into()),
            _ => Err("expected a runtime object".into()),
        }
    }

    /// The value `w` of type `ty` as text (`print`, string interpolation without a format).
    pub fn show(&self, prog: &HostProgram, ty: &super::HTy, w: Word) -> String {
        use super::HTy;
        match ty {
            HTy::Unit => "()".into(),
            HTy::Int => (w as i64).to_string(),
            HTy::Float => show_float(f64::from_bits(w)),
            HTy::Bool => (w != 0).to_string(),
            HTy::Str => self.str(w).unwrap_or("?").to_string(),
            HTy::Net => self.net(w).map(|n| format!("net {n}")).unwrap_or_default(),
            HTy::Opaque(_) => "<runtime object>".into(),
            HTy::List(t) => {
                let items: Vec<String> = self
                    .list(w)
                    .unwrap_or(&[])
                    .iter()
                    .map(|x| self.show(prog, t, *x))
                    .collect();
                format!("[{}]", items.join(", "))
            }
            HTy::Record(id) => {
                let Some(layout) = prog.records.get(id) else {
                    return "<record>".into();
                };
                let words = self.record(w).unwrap_or(&[]);
                let fields: Vec<String> = layout
                    .fields
                    .iter()
                    .zip(words)
                    .map(|((n, t), x)| format!("{n}: {}", self.show(prog, t, *x)))
                    .collect();
                format!("{} {{ {} }}", layout.name, fields.join(", "))
            }
        }
    }
}

/// A float as written in source: always with a point or exponent.
pub fn show_float(x: f64) -> String {
    let s = format!("{x}");
    if x.is_finite() && !s.contains(['.', 'e', 'E']) {
        format!("{s}.0")
    } else {
        s
    }
}

/// The native side of `extern fn`s: the runtime calls `call` with the builtin's id in
/// [`HostProgram::builtins`] and its arguments as words; an `Err` stops the program with
/// that message at the call's span.
pub trait Builtins {
    fn call(
        &mut self,
        id: super::BuiltinId,
        heap: &mut Heap,
        args: &[Word],
    ) -> Result<Word, String>;
}
