//! Ingress agent: Ingress objects of class `nginx` to a real nginx.
pub mod nginx;
pub mod render;
