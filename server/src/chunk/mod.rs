//! Chunk index → bytes: which stored pieces make up a served chunk, and reading them.

pub mod cache;
pub mod grid;
pub mod read;
pub mod verified;
