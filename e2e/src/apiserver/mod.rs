//! Kubernetes API emulator (test double of kube-apiserver).
