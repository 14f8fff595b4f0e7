//! Links the costguard binary as a position-dependent executable on Linux with glibc.
//!
//! A position-independent executable of this size carries about 24,000 relative
//! relocations that the dynamic loader applies on every start, copy-on-write faulting each
//! page of `.data.rel.ro` it touches (about 120 page faults, a quarter of what a run's start
//! takes before the job); a fixed-address one has them resolved at link time
//! (`benches/start_cost.py`). The cost is address-space randomisation of the executable's
//! own image (the heap, stacks and shared libraries stay randomised) — as Go's static
//! binaries, the usual companions of a node agent, ship. Only the binaries: the library and
//! its tests are linked as before.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // glibc targets only: musl's are static-pie, and sanitizer builds need PIE.
    let os = std::env::var("CARGO_CFG_TARGET_OS");
    let env = std::env::var("CARGO_CFG_TARGET_ENV");
    if os.as_deref() == Ok("linux") && env.as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
