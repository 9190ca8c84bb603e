//! The one collect-all-errors type of podnet's crates: a teardown never stops at its first
//! failure, it keeps going and reports every one ([`Errors`]). Each crate's error type says
//! how several of its errors become one ([`Combine`]): the runtime keeps them as a list, the
//! CNI engine and the shim join their messages.

/// How a crate's error type folds several failures into one.
pub trait Combine: Sized {
    /// `errs` has two or more elements.
    fn combine(errs: Vec<Self>) -> Self;
    /// The failures one error stands for (itself, unless it is already a combination):
    /// collecting a combined error keeps a flat list.
    fn flatten(self) -> Vec<Self> {
        vec![self]
    }
}

/// Implements [`Combine`] for an error enum whose variant `$variant(Vec<Self>)` holds several
/// failures: combining makes one, collecting one flattens it.
#[macro_export]
macro_rules! combine_into {
    ($ty:ident :: $variant:ident) => {
        impl $crate::Combine for $ty {
            fn combine(errs: Vec<$ty>) -> $ty {
                $ty::$variant(errs)
            }
            fn flatten(self) -> Vec<$ty> {
                match self {
                    $ty::$variant(v) => v,
                    e => vec![e],
                }
            }
        }
    };
}

/// Every failure of a teardown, in the order they happened.
#[derive(Debug)]
pub struct Errors<E>(Vec<E>);

impl<E> Default for Errors<E> {
    fn default() -> Self {
        Errors(Vec::new())
    }
}

impl<E: Combine> Errors<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the failure of `r`, if it failed.
    pub fn push(&mut self, r: Result<(), E>) {
        if let Err(e) = r {
            self.add(e);
        }
    }

    /// Records `e`.
    pub fn add(&mut self, e: E) {
        self.0.extend(e.flatten());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, E> {
        self.0.iter()
    }

    /// Ok when nothing failed; the one error, or all of them combined.
    pub fn into_result(self) -> Result<(), E> {
        match self.into_error() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// None when nothing failed; the one error, or all of them combined.
    pub fn into_error(mut self) -> Option<E> {
        match self.0.len() {
            0 => None,
            1 => Some(self.0.remove(0)),
            _ => Some(E::combine(self.0)),
        }
    }
}

impl<E> IntoIterator for Errors<E> {
    type Item = E;
    type IntoIter = std::vec::IntoIter<E>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        One(&'static str),
        Many(Vec<E>),
    }

    combine_into!(E::Many);

    #[test]
    fn nothing_failed_is_ok() {
        let mut errs = Errors::<E>::new();
        errs.push(Ok(()));
        assert!(errs.is_empty());
        assert_eq!(errs.into_result(), Ok(()));
    }

    #[test]
    fn one_failure_is_itself_and_several_are_combined_flat() {
        let mut errs = Errors::new();
        errs.push(Err::<(), _>(E::One("a")));
        assert_eq!(errs.len(), 1);
        let one = errs.into_result().unwrap_err();
        assert_eq!(one, E::One("a"));
        let mut errs = Errors::new();
        errs.add(E::One("a"));
        errs.push(Ok(()));
        errs.add(E::Many(vec![E::One("b"), E::One("c")]));
        assert_eq!(errs.iter().count(), 3);
        assert_eq!(errs.into_result().unwrap_err(), E::Many(vec![E::One("a"), E::One("b"), E::One("c")]));
    }
}
