//! Lets the worker binaries find libtorch at run time without `LD_LIBRARY_PATH`: torch-sys
//! exports the library directory it linked against, and we bake it in as an rpath.
//! (`LD_LIBRARY_PATH` still wins, which is how another machine's libtorch is used.)
//!
//! Also keeps libtorch_cuda as a dependency when the libtorch has one: nothing refers to
//! its symbols, so the linker's `--as-needed` would drop it, and CUDA would then look
//! absent at run time even on a GPU machine.

use std::path::Path;

fn main() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
