//! NVRTC, loaded at run time with `dlopen` (never linked, never needed at build time), and the
//! on-disk cache of compiled kernels.
//!
//! Our own eight-function binding rather than cudarc's `nvrtc` module: cudarc panics when the
//! library is missing, and we want to search the places a pip-installed NVRTC lives (and name
//! the library explicitly with `FEDCLIP_NVRTC`) and to say clearly what was tried.

use super::sources::{KERNEL_HEADERS, KernelSource};
use anyhow::{Context, Result, bail};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// Options every compile uses besides the architecture. No fast-math: the kernels are checked
/// against the f32 CPU engine.
pub const BASE_OPTIONS: &[&str] = &["--std=c++17", "-DNDEBUG"];

type CreateFn = unsafe extern "C" fn(
    *mut *mut c_void,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type NumArchsFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type ArchsFn = unsafe extern "C" fn(*mut c_int) -> c_int;

/// A loaded libnvrtc.
pub struct Nvrtc {
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    /// (major, minor), e.g. (13, 0).
    pub version: (i32, i32),
    /// Real architectures it can compile for, e.g. [75, 80, 86, 89, 90, ...].
    pub archs: Vec<i32>,
    /// Which file was loaded (or the bare name the dynamic loader resolved).
    pub path: String,
    // Kept loaded for the function pointers above; builtins first so they unload last.
    _lib: libloading::Library,
    _builtins: Option<libloading::Library>,
}

// SAFETY: NVRTC's API is thread-safe for distinct programs; the struct holds only function
// pointers and library handles.
unsafe impl Send for Nvrtc {}
unsafe impl Sync for Nvrtc {}

/// A compiled kernel file.
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings; with `--ptxas-options=-v`, register and spill counts).
    pub log: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

/// Candidate library names / paths, in search order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("FEDCLIP_NVRTC") {
        let p = PathBuf::from(p);
        if p.is_dir() {
            for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
                out.push(p.join(name));
            }
        } else {
            out.push(p);
        }
    }
    // Bare names: the dynamic loader's own search (LD_LIBRARY_PATH, ldconfig cache).
    for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
        out.push(PathBuf::from(name));
    }
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|d| PathBuf::from(d).join("lib64"))
        .collect();
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    for d in dirs {
        for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
            out.push(d.join(name));
        }
    }
    out
}

/// libnvrtc `dlopen`s its builtins library by bare name; when we found libnvrtc in a directory
/// that is not on the loader's path, load the builtins from beside it first so that lookup
/// resolves to the already-loaded copy.
fn preload_builtins(lib_path: &Path) -> Option<libloading::Library> {
    let dir = lib_path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt."))
        })
        .collect();
    names.sort();
    // SAFETY: loading NVRTC's own builtins library; it has no initialisers with side effects
    // on this process beyond registering itself.
    names
        .iter()
        .find_map(|p| unsafe { libloading::Library::new(p) }.ok())
}

impl Nvrtc {
    /// Finds and loads libnvrtc, or says where it looked (any version).
    pub fn load() -> Result<Nvrtc> {
        Self::load_matching(None)
    }

    /// Finds and loads an NVRTC whose cubins a driver of CUDA `driver_major` can load: NVRTC's
    /// major version at most the driver's (a 12.x driver refuses NVRTC 13's code), so on a 12.x
    /// driver `libnvrtc.so.12` is taken when present. The error names both versions.
    pub fn load_for_driver(driver_major: i32) -> Result<Nvrtc> {
        Self::load_matching(Some(driver_major))
    }

    fn load_matching(driver_major: Option<i32>) -> Result<Nvrtc> {
        let mut tried = Vec::new();
        let mut too_new = Vec::new();
        for cand in candidates() {
            let explicit = cand.components().count() > 1;
            if explicit && !cand.exists() {
                continue;
            }
            let builtins = if explicit {
                preload_builtins(&cand)
            } else {
                None
            };
            // SAFETY: libnvrtc's initialisers only set up its own state.
            match unsafe { libloading::Library::new(&cand) } {
                Ok(lib) => {
                    let nv = Self::from_library(lib, builtins, cand.display().to_string())?;
                    match driver_major {
                        Some(major) if nv.version.0 > major => too_new.push(format!(
                            "NVRTC {}.{} ({})",
                            nv.version.0, nv.version.1, nv.path
                        )),
                        _ => return Ok(nv),
                    }
                }
                Err(e) => tried.push(format!("{} ({e})", cand.display())),
            }
        }
        if let (Some(major), false) = (driver_major, too_new.is_empty()) {
            bail!(
                "the CUDA driver supports CUDA {major}.x, but the only NVRTC found is newer: {}; its kernels would not load. Install NVRTC {major} (`pip install nvidia-cuda-nvrtc-cu{major}`, or the CUDA {major} toolkit) and set FEDCLIP_NVRTC to its libnvrtc.so.{major}, or update the driver",
                too_new.join(", ")
            );
        }
        bail!(
            "NVRTC (libnvrtc.so.13 / .12) not found; install the CUDA toolkit's NVRTC or `pip install nvidia-cuda-nvrtc`, then put its lib directory on LD_LIBRARY_PATH or set FEDCLIP_NVRTC to the library file. Tried: {}",
            tried.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )
    }

    fn from_library(
        lib: libloading::Library,
        builtins: Option<libloading::Library>,
        path: String,
    ) -> Result<Nvrtc> {
        // SAFETY: the symbol types match NVRTC's C API (nvrtc.h), unchanged since CUDA 11.
        unsafe {
            macro_rules! sym {
                ($name:literal, $ty:ty) => {
                    *lib.get::<$ty>(concat!($name, "\0").as_bytes())
                        .with_context(|| format!("{path}: no symbol {}", $name))?
                };
            }
            let version_fn: VersionFn = sym!("nvrtcVersion", VersionFn);
            let num_archs: NumArchsFn = sym!("nvrtcGetNumSupportedArchs", NumArchsFn);
            let archs_fn: ArchsFn = sym!("nvrtcGetSupportedArchs", ArchsFn);
            let mut nv = Nvrtc {
                create: sym!("nvrtcCreateProgram", CreateFn),
                compile: sym!("nvrtcCompileProgram", CompileFn),
                log_size: sym!("nvrtcGetProgramLogSize", SizeFn),
                log: sym!("nvrtcGetProgramLog", GetFn),
                cubin_size: sym!("nvrtcGetCUBINSize", SizeFn),
                cubin: sym!("nvrtcGetCUBIN", GetFn),
                destroy: sym!("nvrtcDestroyProgram", DestroyFn),
                error_string: sym!("nvrtcGetErrorString", ErrorStringFn),
                version: (0, 0),
                archs: Vec::new(),
                path,
                _lib: lib,
                _builtins: builtins,
            };
            let (mut major, mut minor) = (0, 0);
            nv.check(version_fn(&mut major, &mut minor), "nvrtcVersion")?;
            nv.version = (major, minor);
            let mut n = 0;
            nv.check(num_archs(&mut n), "nvrtcGetNumSupportedArchs")?;
            let mut archs = vec![0; n.max(0) as usize];
            nv.check(archs_fn(archs.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
            nv.archs = archs;
            Ok(nv)
        }
    }

    fn check(&self, code: c_int, what: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static string for any code.
        let msg = unsafe {
            let p = (self.error_string)(code);
            if p.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        bail!("{what} failed: {msg} (code {code})")
    }

    /// Compiles one source to a cubin for `sm_<arch>` (e.g. 90), no cache.
    pub fn compile(&self, src: &KernelSource, arch: i32, extra: &[&str]) -> Result<Compiled> {
        if !self.archs.contains(&arch) {
            bail!(
                "NVRTC {}.{} ({}) cannot compile for sm_{arch}; it supports {:?}",
                self.version.0,
                self.version.1,
                self.path,
                self.archs
            );
        }
        let source = CString::new(src.source).context("kernel source has a NUL byte")?;
        let name = CString::new(src.file)?;
        let header_src: Vec<CString> = KERNEL_HEADERS
            .iter()
            .map(|(_, s)| CString::new(*s))
            .collect::<Result<_, _>>()?;
        let header_names: Vec<CString> = KERNEL_HEADERS
            .iter()
            .map(|(n, _)| CString::new(*n))
            .collect::<Result<_, _>>()?;
        let header_ptrs: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
        let mut opts: Vec<CString> = vec![CString::new(format!("--gpu-architecture=sm_{arch}"))?];
        for o in BASE_OPTIONS.iter().chain(extra) {
            opts.push(CString::new(*o)?);
        }
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        let mut prog: *mut c_void = std::ptr::null_mut();
        // SAFETY: every pointer refers to a NUL-terminated string alive for this call; the
        // program is destroyed below on every path.
        unsafe {
            self.check(
                (self.create)(
                    &mut prog,
                    source.as_ptr(),
                    name.as_ptr(),
                    header_ptrs.len() as c_int,
                    header_ptrs.as_ptr(),
                    name_ptrs.as_ptr(),
                ),
                "nvrtcCreateProgram",
            )?;
            let result = (|| {
                let code = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
                let mut log_len = 0usize;
                self.check(
                    (self.log_size)(prog, &mut log_len),
                    "nvrtcGetProgramLogSize",
                )?;
                let mut log = vec![0u8; log_len.max(1)];
                self.check(
                    (self.log)(prog, log.as_mut_ptr() as *mut c_char),
                    "nvrtcGetProgramLog",
                )?;
                let log = CStr::from_bytes_until_nul(&log)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if code != 0 {
                    self.check(
                        code,
                        &format!("compiling kernels/{} for sm_{arch}", src.file),
                    )
                    .with_context(|| format!("NVRTC log:\n{log}"))?;
                }
                let mut size = 0usize;
                self.check((self.cubin_size)(prog, &mut size), "nvrtcGetCUBINSize")?;
                let mut cubin = vec![0u8; size];
                self.check(
                    (self.cubin)(prog, cubin.as_mut_ptr() as *mut c_char),
                    "nvrtcGetCUBIN",
                )?;
                Ok(Compiled {
                    cubin,
                    log,
                    cached: false,
                })
            })();
            (self.destroy)(&mut prog);
            result
        }
    }

    /// [`compile`](Self::compile) through the on-disk cache: the key is a hash of the source,
    /// the headers, the architecture, NVRTC's version and the options.
    pub fn compile_cached(&self, src: &KernelSource, arch: i32) -> Result<Compiled> {
        let key = cache_key(src, arch, self.version);
        let file = cache_dir().map(|d| d.join(format!("{}-sm_{arch}-{key}.cubin", src.file)));
        if let Some(f) = &file
            && let Ok(cubin) = std::fs::read(f)
            && !cubin.is_empty()
        {
            return Ok(Compiled {
                cubin,
                log: String::new(),
                cached: true,
            });
        }
        let compiled = self.compile(src, arch, &[])?;
        if let Some(f) = &file {
            // A cache that cannot be written only costs a recompile next time.
            let _ = crate::io::write_atomic(f, &compiled.cubin);
        }
        Ok(compiled)
    }
}

fn cache_key(src: &KernelSource, arch: i32, version: (i32, i32)) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"fedclip-kernel-cache-v1\0");
    h.update(src.file.as_bytes());
    h.update(b"\0");
    h.update(src.source.as_bytes());
    for (name, text) in KERNEL_HEADERS {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(text.as_bytes());
    }
    h.update(format!("\0sm_{arch}\0nvrtc {}.{}\0", version.0, version.1).as_bytes());
    h.update(BASE_OPTIONS.join(" ").as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// `$FEDCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/fedclip/kernels`, else
/// `~/.cache/fedclip/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FEDCLIP_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("fedclip").join("kernels"))
}
