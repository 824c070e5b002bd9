//! File input/output helpers: atomic writes, NPY and CSV matrices.

pub mod atomic;
pub mod csv;
pub mod npy;
