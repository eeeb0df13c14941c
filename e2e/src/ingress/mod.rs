//! Ingress agent: Ingress objects of class `nginx` to a real nginx (the ingress-nginx
//! controller's part of the platform). [`render`] is the pure config generator, [`nginx`] runs
//! and reloads the nginx process, [`agent`] is the API client tying them together.
pub mod agent;
pub mod nginx;
pub mod render;
