//! Lets the worker binaries find libtorch at run time without `LD_LIBRARY_PATH`: torch-sys
//! exports the library directory it linked against, and we bake it in as an rpath.
//! (`LD_LIBRARY_PATH` still wins, which is how another machine's libtorch is used.)
//!
//! Compiles `native/c10d.cpp`, the narrow C surface over PyTorch's own collectives
//! (c10d's TCPStore and ProcessGroupGloo, exported by `libtorch_cpu`), against the headers
//! of that same libtorch. Its wheel ships no gloo headers; `native/gloo-stub/` declares
//! the few gloo types c10d's headers name (held by pointer only, so no layout depends on
//! them; recheck when upgrading torch).
//!
//! Also keeps libtorch_cuda as a dependency when the libtorch has one: nothing refers to
//! its symbols, so the linker's `--as-needed` would drop it, and CUDA would then look
//! absent at run time even on a GPU machine.

use std::path::Path;

fn main() {
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    compile_collectives(Path::new(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn compile_collectives(lib: &Path) {
    for file in ["native/c10d.cpp", "native/c10d.h", "native/gloo-stub"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let include = lib
        .parent()
        .expect("libtorch's lib has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("native/c10d.cpp")
        .include("native/gloo-stub") // before libtorch's, which lacks gloo's headers
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false) // libtorch's headers are noisy
        .compile("heirloom_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for library in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={library}");
    }
}
