//! Lets the worker binary find libtorch at run time without `LD_LIBRARY_PATH`: torch-sys
//! exports the library directory it linked against, and we bake it in as an rpath.
//! (`LD_LIBRARY_PATH` still wins, which is how another machine's libtorch is used.)

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
