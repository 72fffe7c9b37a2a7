#![no_std]
// The library target exists so that lb-userspace can list lb-ebpf as a build-dependency
// and cargo rebuilds the kernel program when it changes.
