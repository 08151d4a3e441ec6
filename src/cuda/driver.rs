//! The device: a CUDA GPU through the driver API (cudarc's `result` layer, libcuda loaded at
//! run time), or the host emulator for tests. Memory, copies and kernel launches go through
//! here, every driver call's result checked.
//!
//! All work is issued on the legacy default stream, so kernels, copies and frees are ordered
//! without explicit synchronisation; copies to the host wait for the kernels before them.

use super::emu::{EmuAlloc, EmuLib};
use super::libcuda::driver_err;
use super::nvrtc::Nvrtc;
use super::profile::{Launch, LaunchTime, Recorder};
use super::sources::{GemmVersion, KERNEL_SOURCES, KernelSource};
use anyhow::{Context, Result, anyhow, bail, ensure};
use bytemuck::Pod;
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the engine knows about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability, e.g. (9, 0).
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub total_memory: usize,
    /// NVRTC used to build the kernels, e.g. "13.0".
    pub nvrtc: String,
    /// The driver's CUDA version (cuDriverGetVersion), e.g. "13.0"; "-" on the emulator.
    pub driver: String,
    /// Largest grid y dimension (65535 on every GPU so far): launches with more rows split.
    pub max_grid_y: u32,
    /// Most dynamic shared memory a block can opt in to (cuFuncSetAttribute).
    pub max_smem_optin: u32,
    /// Kernels that came from the on-disk cache / were compiled now.
    pub kernels_cached: usize,
    pub kernels_compiled: usize,
    /// The host emulator rather than a GPU.
    pub emulated: bool,
}

struct CudaState {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    modules: Vec<sys::CUmodule>,
    functions: HashMap<&'static str, sys::CUfunction>,
}

/// Dynamic shared memory every kernel may use without `cuFuncSetAttribute`.
pub const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

enum Backend {
    Cuda(CudaState),
    Emu {
        lib: EmuLib,
        allocs: Mutex<HashMap<u64, EmuAlloc>>,
    },
}

/// An open device with every kernel loaded.
pub struct Gpu {
    backend: Backend,
    pub info: DeviceInfo,
    launches: AtomicU64,
    /// `FEDCLIP_CUDA_SYNC=1`: synchronise after every launch, so a fault names its kernel.
    sync_launches: bool,
    /// Kernels whose dynamic shared memory limit was raised, and to what.
    smem_optin: Mutex<HashMap<&'static str, u32>>,
    /// The first failed cuMemFree (a drop cannot return it): reported by the next
    /// [`Gpu::synchronize`] or [`Gpu::read`].
    free_error: Mutex<Option<String>>,
    /// The GEMM version `GemmTile::Auto` takes when set ([`Gpu::set_gemm_version`]); else
    /// `FEDCLIP_GEMM`'s.
    gemm_version: Mutex<Option<GemmVersion>>,
    /// The launches being timed, between [`Gpu::start_profile`] and [`Gpu::finish_profile`].
    profile: Mutex<Option<Recorder>>,
}

// SAFETY: the CUDA handles are plain driver handles, usable from any thread once the context
// is made current there (every entry point below does so); the emulator's allocation map is
// behind a mutex.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// What [`Gpu::open`] reads of device 0.
struct DeviceAttributes {
    name: String,
    compute_capability: (i32, i32),
    sm_count: i32,
    max_grid_y: i32,
    max_smem_optin: i32,
    total_memory: usize,
}

impl DeviceAttributes {
    fn query(dev: sys::CUdevice) -> Result<DeviceAttributes> {
        let attr = |a: sys::CUdevice_attribute| {
            // SAFETY: `dev` came from cuDeviceGet.
            unsafe { result::device::get_attribute(dev, a) }
                .map_err(driver_err("cuDeviceGetAttribute"))
        };
        use sys::CUdevice_attribute::*;
        let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_grid_y = attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?;
        let max_smem_optin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let name = result::device::get_name(dev).map_err(driver_err("cuDeviceGetName"))?;
        // SAFETY: as above.
        let total_memory =
            unsafe { result::device::total_mem(dev) }.map_err(driver_err("cuDeviceTotalMem"))?;
        Ok(DeviceAttributes {
            name,
            compute_capability: (major, minor),
            sm_count,
            max_grid_y,
            max_smem_optin,
            total_memory,
        })
    }
}

impl CudaState {
    /// Compiles (or takes from the disk cache) and loads every kernel source for `arch`, in
    /// the current context; returns how many modules were cached and how many compiled.
    fn load_kernels(
        &mut self,
        nvrtc: &Nvrtc,
        arch: i32,
        driver: (i32, i32),
    ) -> Result<(usize, usize)> {
        let versions = format!(
            "NVRTC {}.{} ({}), driver CUDA {}.{}",
            nvrtc.version.0, nvrtc.version.1, nvrtc.path, driver.0, driver.1
        );
        let (mut cached, mut compiled) = (0, 0);
        for src in KERNEL_SOURCES {
            let (module, was_cached) = load_source(nvrtc, src, arch).with_context(|| {
                format!("loading kernels/{} for sm_{arch}; {versions}", src.file)
            })?;
            if was_cached {
                cached += 1;
            } else {
                compiled += 1;
            }
            self.modules.push(module);
            for &k in src.kernels {
                // SAFETY: a module just loaded.
                let f = unsafe { result::module::get_function(module, CString::new(k)?) }
                    .map_err(driver_err("cuModuleGetFunction"))
                    .with_context(|| format!("kernel {k} in kernels/{}", src.file))?;
                self.functions.insert(k, f);
            }
        }
        Ok((cached, compiled))
    }
}

/// One kernel source's module for `arch`, and whether its cubin came from the cache: a cached
/// cubin the driver refuses (stale or damaged) is compiled afresh.
fn load_source(nvrtc: &Nvrtc, src: &KernelSource, arch: i32) -> Result<(sys::CUmodule, bool)> {
    let image = nvrtc.compile_cached(src, arch)?;
    // SAFETY: a cubin produced by NVRTC for this device's architecture.
    match unsafe { load_module(&image.cubin) } {
        Ok(m) => Ok((m, image.cached)),
        Err(_) if image.cached => {
            let image = nvrtc.compile(src, arch, &[])?;
            // SAFETY: as above.
            let m = unsafe { load_module(&image.cubin) }.map_err(driver_err("cuModuleLoadData"))?;
            Ok((m, false))
        }
        Err(e) => Err(driver_err("cuModuleLoadData")(e)),
    }
}

/// The CUDA version the driver supports (cuDriverGetVersion), e.g. (12, 4). Call after
/// [`super::availability`] found the driver library.
pub fn driver_version() -> Result<(i32, i32)> {
    let mut v = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(driver_err("cuDriverGetVersion"))?;
    Ok((v / 1000, (v % 1000) / 10))
}

fn sync_requested() -> bool {
    std::env::var("FEDCLIP_CUDA_SYNC").is_ok_and(|v| v == "1")
}

impl Gpu {
    fn with_backend(backend: Backend, info: DeviceInfo) -> Gpu {
        Gpu {
            backend,
            info,
            launches: AtomicU64::new(0),
            sync_launches: sync_requested(),
            smem_optin: Mutex::new(HashMap::new()),
            free_error: Mutex::new(None),
            gemm_version: Mutex::new(None),
            profile: Mutex::new(None),
        }
    }

    /// Opens CUDA device 0 (after `CUDA_VISIBLE_DEVICES`), compiling the kernels for it with
    /// NVRTC (or taking them from the disk cache). Call [`super::availability`] first on
    /// machines that may lack the driver: cudarc panics if libcuda cannot be loaded.
    pub fn open() -> Result<Arc<Gpu>> {
        super::availability().map_err(|why| anyhow!("{why}"))?;
        let driver = driver_version()?;
        let nvrtc = Nvrtc::load_for_driver(driver.0)?;
        // cudarc panics (rather than erring) on a missing symbol; keep that a clean error.
        std::panic::catch_unwind(|| Self::open_cuda(&nvrtc, driver))
            .unwrap_or_else(|_| Err(anyhow!("the CUDA driver library is unusable (see above)")))
            .map(Arc::new)
    }

    fn open_cuda(nvrtc: &Nvrtc, driver: (i32, i32)) -> Result<Gpu> {
        result::init().map_err(driver_err("cuInit"))?;
        let count = result::device::get_count().map_err(driver_err("cuDeviceGetCount"))?;
        if count < 1 {
            bail!("no CUDA device");
        }
        let dev = result::device::get(0).map_err(driver_err("cuDeviceGet"))?;
        let a = DeviceAttributes::query(dev)?;
        let (major, minor) = a.compute_capability;
        if major < 8 {
            bail!(
                "{} has compute capability {major}.{minor}; the CUDA engine needs 8.0 or newer (mma.sync m16n8k16, cp.async)",
                a.name
            );
        }
        // SAFETY: `dev` is valid; the context is released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }
            .map_err(driver_err("cuDevicePrimaryCtxRetain"))?;
        let mut state = CudaState {
            dev,
            ctx,
            modules: Vec::new(),
            functions: HashMap::new(),
        };
        // SAFETY: a context just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        let (cached, compiled) = state.load_kernels(nvrtc, major * 10 + minor, driver)?;
        Ok(Gpu::with_backend(
            Backend::Cuda(state),
            DeviceInfo {
                name: a.name,
                compute_capability: a.compute_capability,
                sm_count: a.sm_count.max(1) as u32,
                total_memory: a.total_memory,
                nvrtc: format!("{}.{}", nvrtc.version.0, nvrtc.version.1),
                driver: format!("{}.{}", driver.0, driver.1),
                max_grid_y: a.max_grid_y.max(1) as u32,
                max_smem_optin: a.max_smem_optin.max(0) as u32,
                kernels_cached: cached,
                kernels_compiled: compiled,
                emulated: false,
            },
        ))
    }

    /// The host emulator (tests only): builds kernels/emu with the system C++ compiler.
    pub fn emulator() -> Result<Arc<Gpu>> {
        Self::emulator_with_grid_limit(65535)
    }

    /// The emulator with a grid y limit of `max_grid_y` rows instead of a GPU's 65535, so
    /// that launches which split their grid can be tested at small sizes.
    pub fn emulator_with_grid_limit(max_grid_y: u32) -> Result<Arc<Gpu>> {
        Self::emulator_shaped(max_grid_y, 132)
    }

    /// The emulator posing as a GPU of `sm_count` SMs, so that the tile choices made for a
    /// large GPU's large matrices (`GemmTile::Auto`) are taken at small sizes.
    pub fn emulator_with_sm_count(sm_count: u32) -> Result<Arc<Gpu>> {
        Self::emulator_shaped(65535, sm_count)
    }

    fn emulator_shaped(max_grid_y: u32, sm_count: u32) -> Result<Arc<Gpu>> {
        let lib = EmuLib::build()?;
        Ok(Arc::new(Gpu::with_backend(
            Backend::Emu {
                lib,
                allocs: Mutex::new(HashMap::new()),
            },
            DeviceInfo {
                name: "host emulator".into(),
                compute_capability: (9, 0),
                sm_count: sm_count.max(1),
                total_memory: 1 << 34,
                nvrtc: "-".into(),
                driver: "-".into(),
                max_grid_y: max_grid_y.max(1),
                max_smem_optin: 227 * 1024,
                kernels_cached: 0,
                kernels_compiled: 0,
                emulated: true,
            },
        )))
    }

    /// Makes `GemmTile::Auto` take `version` on this device, whatever `FEDCLIP_GEMM` says
    /// (tests and benches; the engine follows the variable).
    pub fn set_gemm_version(&self, version: GemmVersion) {
        *self.gemm_version.lock().unwrap() = Some(version);
    }

    /// The GEMM version `GemmTile::Auto` takes: the one set, else `FEDCLIP_GEMM`'s (an
    /// error naming a bad value).
    pub(crate) fn gemm_version(&self) -> Result<GemmVersion> {
        match *self.gemm_version.lock().unwrap() {
            Some(v) => Ok(v),
            None => GemmVersion::from_env(),
        }
    }

    /// Raises `kernel`'s dynamic shared memory limit to at least `bytes`
    /// (cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)); a launch with more than
    /// [`DEFAULT_DYNAMIC_SMEM`] fails without it, on a GPU and on the emulator alike.
    pub(crate) fn allow_dynamic_smem(&self, kernel: &'static str, bytes: u32) -> Result<()> {
        if bytes <= DEFAULT_DYNAMIC_SMEM {
            return Ok(());
        }
        let mut optin = self.smem_optin.lock().unwrap();
        if optin.get(kernel).is_some_and(|&b| b >= bytes) {
            return Ok(());
        }
        ensure!(
            bytes <= self.info.max_smem_optin,
            "{kernel}: {bytes} bytes of shared memory exceed the device's {} per block",
            self.info.max_smem_optin
        );
        match &self.backend {
            Backend::Cuda(s) => {
                self.make_current()?;
                let f = *s
                    .functions
                    .get(kernel)
                    .ok_or_else(|| anyhow!("kernel {kernel} is not loaded"))?;
                // SAFETY: a function of a loaded module; the attribute takes a byte count.
                unsafe {
                    result::function::set_function_attribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                }
                .map_err(driver_err(
                    "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                ))
                .with_context(|| format!("{kernel}: {bytes} bytes"))?;
            }
            Backend::Emu { lib, .. } => lib.set_max_dynamic_smem(kernel, bytes)?,
        }
        optin.insert(kernel, bytes);
        Ok(())
    }

    fn make_current(&self) -> Result<()> {
        if let Backend::Cuda(s) = &self.backend {
            // SAFETY: the context is retained for the lifetime of self.
            unsafe { result::ctx::set_current(s.ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        }
        Ok(())
    }

    /// `len` elements of uninitialised-looking memory: every byte 0xFF, so f32 and fp16
    /// elements read as NaN until written.
    pub fn alloc<T: Pod>(self: &Arc<Self>, len: usize) -> Result<DevBuf<T>> {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let ptr = match &self.backend {
            Backend::Cuda(_) => {
                self.make_current()?;
                // SAFETY: plain allocation; freed in DevBuf::drop.
                let ptr = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
                    driver_err("cuMemAlloc")(e).context(format!(
                        "allocating {:.1} MiB on the GPU (a smaller --batch needs less)",
                        bytes as f64 / (1 << 20) as f64
                    ))
                })?;
                // SAFETY: the range was just allocated.
                unsafe { result::memset_d8_sync(ptr, 0xFF, bytes) }
                    .map_err(driver_err("cuMemsetD8"))?;
                ptr
            }
            Backend::Emu { allocs, .. } => {
                let a = EmuAlloc::new(bytes)?;
                let ptr = a.ptr;
                // SAFETY: `bytes` writable bytes start at `ptr`.
                unsafe { std::ptr::write_bytes(ptr as *mut u8, 0xFF, bytes) };
                allocs.lock().unwrap().insert(ptr, a);
                ptr
            }
        };
        Ok(DevBuf {
            gpu: self.clone(),
            ptr,
            len,
            _t: PhantomData,
        })
    }

    /// A new buffer holding `data`.
    pub fn upload<T: Pod>(self: &Arc<Self>, data: &[T]) -> Result<DevBuf<T>> {
        let buf = self.alloc(data.len())?;
        self.write(buf.view(), data)?;
        Ok(buf)
    }

    /// Copies `data` to the start of `dst` (which must be at least as long).
    pub fn write<T: Pod>(&self, dst: View<T>, data: &[T]) -> Result<()> {
        if data.len() > dst.len {
            bail!(
                "copy of {} elements into a buffer of {}",
                data.len(),
                dst.len
            );
        }
        if data.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Cuda(_) => {
                self.make_current()?;
                // SAFETY: dst holds at least data.len() elements of T.
                unsafe { result::memcpy_htod_sync(dst.ptr, data) }
                    .map_err(driver_err("cuMemcpyHtoD"))
            }
            Backend::Emu { .. } => {
                // SAFETY: as above; emulator memory is host memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst.ptr as *mut T, data.len())
                };
                Ok(())
            }
        }
    }

    /// A host buffer of `len` zeroed elements for uploads: page-locked on a GPU
    /// (cuMemHostAlloc), so a copy from it is one DMA transfer instead of the driver's staged
    /// pageable copy; plain memory on the emulator, or when pinning fails (no error: the
    /// copy is only slower).
    pub fn host_buffer<T: Pod>(self: &Arc<Self>, len: usize) -> HostBuf<T> {
        let pageable = || HostBuf {
            mem: HostMem::Pageable(vec![T::zeroed(); len]),
            len,
        };
        let bytes = len * std::mem::size_of::<T>();
        if !matches!(self.backend, Backend::Cuda(_)) || bytes == 0 || self.make_current().is_err() {
            return pageable();
        }
        // SAFETY: plain allocation on the current context; freed in HostBuf::drop.
        match unsafe { result::malloc_host(bytes, 0) } {
            Ok(ptr) if !ptr.is_null() => {
                // Zeroed so the slice never exposes uninitialised bytes.
                // SAFETY: `bytes` writable bytes start at `ptr` (page aligned, so aligned
                // for T).
                unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
                HostBuf {
                    mem: HostMem::Pinned {
                        gpu: self.clone(),
                        ptr: ptr as *mut T,
                    },
                    len,
                }
            }
            _ => pageable(),
        }
    }

    /// Copies `src` to the host, after every kernel launched before.
    pub fn read<T: Pod>(&self, src: View<T>) -> Result<Vec<T>> {
        self.check_frees()?;
        let mut out = vec![T::zeroed(); src.len];
        if src.len == 0 {
            return Ok(out);
        }
        match &self.backend {
            Backend::Cuda(_) => {
                self.make_current()?;
                // SAFETY: src holds src.len elements of T.
                unsafe { result::memcpy_dtoh_sync(&mut out, src.ptr) }.map_err(|e| {
                    driver_err("cuMemcpyDtoH")(e)
                        .context("a kernel before this copy may have failed")
                })?;
            }
            Backend::Emu { .. } => {
                // SAFETY: as above.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.ptr as *const T, out.as_mut_ptr(), src.len)
                };
            }
        }
        Ok(out)
    }

    /// Sets every byte of `dst` to 0xFF (NaN for f32 and fp16): outputs a kernel fails to
    /// write stay visible.
    pub fn poison<T: Pod>(&self, dst: View<T>) -> Result<()> {
        let bytes = dst.len * std::mem::size_of::<T>();
        match &self.backend {
            Backend::Cuda(_) => {
                self.make_current()?;
                // SAFETY: dst's range is allocated.
                unsafe { result::memset_d8_sync(dst.ptr, 0xFF, bytes) }
                    .map_err(driver_err("cuMemsetD8"))
            }
            Backend::Emu { .. } => {
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(dst.ptr as *mut u8, 0xFF, bytes) };
                Ok(())
            }
        }
    }

    /// Waits for all launched work; reports a kernel fault here if there was one.
    pub fn synchronize(&self) -> Result<()> {
        self.check_frees()?;
        if let Backend::Cuda(_) = &self.backend {
            self.make_current()?;
            result::ctx::synchronize().map_err(driver_err("cuCtxSynchronize (a kernel failed)"))?;
        }
        Ok(())
    }

    /// The first cuMemFree failure since the last check, as an error.
    fn check_frees(&self) -> Result<()> {
        match self.free_error.lock().unwrap().take() {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(()),
        }
    }

    /// Launches `kernel`. Argument types must match the kernel's parameters; the typed
    /// wrappers in [`super::kernels`] are the only callers.
    pub(crate) fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (e.g. zero rows)
        }
        if grid.1 > self.info.max_grid_y || grid.2 > 65535 {
            bail!(
                "{kernel}: grid {grid:?} exceeds the device's limit of {} in y (65535 in z)",
                self.info.max_grid_y
            );
        }
        // Each argument's bytes in an 8-byte slot; the driver reads as many as the parameter
        // needs from the slot's start (little-endian).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Cuda(s) => {
                self.make_current()?;
                let f = *s
                    .functions
                    .get(kernel)
                    .ok_or_else(|| anyhow!("kernel {kernel} is not loaded"))?;
                // SAFETY: `params` holds one pointer per kernel parameter, to values of the
                // parameter's type (see the wrappers in kernels.rs); they outlive the call,
                // which copies them.
                self.timed(kernel, grid, block, || unsafe {
                    result::launch_kernel(f, grid, block, smem, std::ptr::null_mut(), &mut params)
                        .map_err(driver_err("cuLaunchKernel"))
                })
                .with_context(|| launch_description(kernel, grid, block, smem, args))?;
                if self.sync_launches {
                    result::ctx::synchronize()
                        .map_err(driver_err("cuCtxSynchronize after the launch"))
                        .with_context(|| launch_description(kernel, grid, block, smem, args))?;
                }
                Ok(())
            }
            // Successive launches cycle through the emulator's four schedules.
            Backend::Emu { lib, .. } => self
                .timed(kernel, grid, block, || {
                    lib.launch(
                        kernel,
                        grid,
                        block,
                        smem,
                        &mut params,
                        ((n + n / 4) % 4) as u32,
                    )
                })
                .with_context(|| launch_description(kernel, grid, block, smem, args)),
        }
    }

    /// Runs `launch`, timed when a profile is in progress (the context is current).
    fn timed(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        launch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut profile = self.profile.lock().unwrap();
        let Some(recorder) = profile.as_mut() else {
            drop(profile);
            return launch();
        };
        let started = recorder.start(Launch {
            kernel,
            grid,
            block,
        })?;
        launch()?;
        recorder.stop(started)
    }

    /// Kernel launches issued on this device so far.
    pub fn launch_count(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// Starts timing every launch, each on its own, until [`Gpu::finish_profile`]: see
    /// [`super::profile`].
    pub fn start_profile(&self) -> Result<()> {
        let mut profile = self.profile.lock().unwrap();
        ensure!(profile.is_none(), "a profile is already in progress");
        *profile = Some(Recorder::new(self.info.emulated));
        Ok(())
    }

    /// Every launch since [`Gpu::start_profile`], in launch order, with its time; waits for
    /// them to finish.
    pub fn finish_profile(&self) -> Result<Vec<LaunchTime>> {
        let recorder = self
            .profile
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| anyhow!("finish_profile without start_profile"))?;
        // Also makes the context current, as reading and destroying the events needs.
        self.synchronize()
            .context("finishing the profile (a profiled kernel failed)")?;
        recorder.finish()
    }

    fn free(&self, ptr: u64) {
        match &self.backend {
            Backend::Cuda(_) => {
                let freed = self.make_current().and_then(|()| {
                    // SAFETY: ptr came from malloc_sync and is freed once (DevBuf::drop).
                    unsafe { result::free_sync(ptr) }.map_err(driver_err("cuMemFree"))
                });
                if let Err(e) = freed {
                    // An earlier kernel's fault often surfaces here; keep the first.
                    let msg = format!("{e:#} (freeing device memory at {ptr:#x})");
                    eprintln!("fedclip: {msg}");
                    self.free_error.lock().unwrap().get_or_insert(msg);
                }
            }
            Backend::Emu { allocs, .. } => {
                allocs.lock().unwrap().remove(&ptr);
            }
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if let Backend::Cuda(s) = &self.backend {
            // SAFETY: modules loaded in open_cuda, context retained there; all buffers (which
            // hold an Arc to self) are gone.
            unsafe {
                if result::ctx::set_current(s.ctx).is_ok() {
                    for &m in &s.modules {
                        let _ = result::module::unload(m);
                    }
                }
                let _ = result::primary_ctx::release(s.dev);
            }
        }
    }
}

/// A launch, for error messages: kernel, geometry and its integer arguments (the sizes).
fn launch_description(
    kernel: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    args: &[Arg],
) -> String {
    let sizes: Vec<String> = args
        .iter()
        .filter_map(|a| match a {
            Arg::I32(v) => Some(v.to_string()),
            _ => None,
        })
        .collect();
    format!(
        "{kernel}: grid {grid:?} block {block:?} dynamic shared memory {smem} B, integer arguments [{}]",
        sizes.join(", ")
    )
}

/// # Safety
/// `image` must be a cubin for the current context's device.
unsafe fn load_module(image: &[u8]) -> Result<sys::CUmodule, result::DriverError> {
    // SAFETY: per the function contract.
    unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// Device memory holding `len` values of `T`; freed on drop.
pub struct DevBuf<T> {
    gpu: Arc<Gpu>,
    ptr: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> DevBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn view(&self) -> View<'_, T> {
        View {
            ptr: self.ptr,
            len: self.len,
            _t: PhantomData,
        }
    }

    /// Elements `start .. start + len`.
    pub fn slice(&self, start: usize, len: usize) -> View<'_, T> {
        self.view().slice(start, len)
    }
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        self.gpu.free(self.ptr);
    }
}

/// Host memory for uploads, from [`Gpu::host_buffer`]: page-locked when the driver gave it.
pub struct HostBuf<T> {
    mem: HostMem<T>,
    len: usize,
}

enum HostMem<T> {
    Pinned { gpu: Arc<Gpu>, ptr: *mut T },
    Pageable(Vec<T>),
}

// SAFETY: the pinned pointer is owned by this buffer alone (as a Vec's would be).
unsafe impl<T: Send> Send for HostBuf<T> {}
unsafe impl<T: Sync> Sync for HostBuf<T> {}

impl<T> HostBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory is page-locked (false on the emulator or when pinning failed).
    pub fn is_pinned(&self) -> bool {
        matches!(self.mem, HostMem::Pinned { .. })
    }
}

impl<T> std::ops::Deref for HostBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.mem {
            // SAFETY: `len` initialised (zeroed, then written) elements owned by self.
            HostMem::Pinned { ptr, .. } => unsafe { std::slice::from_raw_parts(*ptr, self.len) },
            HostMem::Pageable(v) => v,
        }
    }
}

impl<T> std::ops::DerefMut for HostBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.mem {
            // SAFETY: as above, borrowed mutably through self.
            HostMem::Pinned { ptr, .. } => unsafe {
                std::slice::from_raw_parts_mut(*ptr, self.len)
            },
            HostMem::Pageable(v) => v,
        }
    }
}

impl<T> Drop for HostBuf<T> {
    fn drop(&mut self) {
        if let HostMem::Pinned { gpu, ptr } = &self.mem {
            // SAFETY: ptr came from malloc_host and is freed once; copies from it are
            // synchronous, so none is in flight. A failure only leaks the buffer.
            let freed = gpu.make_current().and_then(|()| {
                unsafe { result::free_host(*ptr as *mut c_void) }
                    .map_err(driver_err("cuMemFreeHost"))
            });
            if let Err(e) = freed {
                eprintln!("fedclip: {e:#} (freeing page-locked host memory)");
            }
        }
    }
}

/// A borrowed range of device memory.
pub struct View<'a, T> {
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    _t: PhantomData<&'a T>,
}

impl<T> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for View<'_, T> {}

impl<'a, T> View<'a, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `start .. start + len` of this view.
    pub fn slice(self, start: usize, len: usize) -> View<'a, T> {
        assert!(
            start + len <= self.len,
            "device slice {start}..{} of {} elements",
            start + len,
            self.len
        );
        View {
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _t: PhantomData,
        }
    }

    /// Everything from `start` on.
    pub fn offset(self, start: usize) -> View<'a, T> {
        self.slice(start, self.len - start)
    }

    pub(crate) fn arg(self) -> Arg {
        Arg::Ptr(self.ptr)
    }

    /// The raw device address (a `CUdeviceptr`), for handing to another CUDA library on the
    /// same context (benches/gpu_encode.rs times cuBLAS on our buffers).
    pub fn device_ptr(self) -> u64 {
        self.ptr
    }

    pub(crate) fn aligned16(self) -> bool {
        self.ptr.is_multiple_of(16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator, when FEDCLIP_EMULATE=1 asks for it (it needs a C++ compiler).
    fn emulator() -> Option<Arc<Gpu>> {
        if std::env::var("FEDCLIP_EMULATE").is_ok_and(|v| v == "1") {
            Some(Gpu::emulator().unwrap())
        } else {
            eprintln!("skipped: FEDCLIP_EMULATE is not 1");
            None
        }
    }

    /// The emulator's upload buffers are plain zeroed memory (pinning is GPU-only), usable
    /// as a slice and as the source of a copy.
    #[test]
    fn host_buffers_fall_back_to_pageable_memory() {
        let Some(gpu) = emulator() else { return };
        let mut buf = gpu.host_buffer::<half::f16>(1000);
        assert!(!buf.is_pinned());
        assert_eq!(buf.len(), 1000);
        assert!(buf.iter().all(|v| v.to_bits() == 0));
        buf[999] = half::f16::from_f32(1.5);
        let dev = gpu.alloc::<half::f16>(1000).unwrap();
        gpu.write(dev.view(), &buf).unwrap();
        assert_eq!(gpu.read(dev.view()).unwrap()[999].to_f32(), 1.5);
        assert!(gpu.host_buffer::<f32>(0).is_empty());
    }

    /// Over 48 KiB of dynamic shared memory is refused, naming the kernel, its sizes and the
    /// missing cuFuncSetAttribute, until the kernel's limit is raised, as on a GPU.
    #[test]
    fn dynamic_shared_memory_over_48_kib_needs_the_attribute() {
        let Some(gpu) = emulator() else { return };
        let (rows, dim) = (3usize, 40usize);
        let x = gpu.upload(&vec![1.5f32; rows * dim]).unwrap();
        let ones = gpu.upload(&vec![1.0f32; dim]).unwrap();
        let out = gpu.alloc::<f32>(rows * dim).unwrap();
        let args = [
            x.view().arg(),
            Arg::Ptr(0),
            Arg::I32(rows as i32),
            Arg::I32(dim as i32),
            ones.view().arg(),
            ones.view().arg(),
            Arg::F32(1e-5),
            out.view().arg(),
            Arg::Ptr(0),
        ];
        let smem = DEFAULT_DYNAMIC_SMEM + 16;
        let launch = || gpu.launch("fc_layernorm", (1, 1, 1), (256, 1, 1), smem, &args);
        let msg = format!("{:#}", launch().unwrap_err());
        assert!(
            msg.contains("fc_layernorm")
                && msg.contains("cuFuncSetAttribute")
                && msg.contains("integer arguments [3, 40]"),
            "{msg}"
        );
        gpu.launch(
            "fc_layernorm",
            (1, 1, 1),
            (256, 1, 1),
            DEFAULT_DYNAMIC_SMEM,
            &args,
        )
        .unwrap();
        gpu.allow_dynamic_smem("fc_layernorm", smem).unwrap();
        launch().unwrap();
        assert!(gpu.read(out.view()).unwrap().iter().all(|v| v.is_finite()));
        let msg = format!(
            "{:#}",
            gpu.allow_dynamic_smem("fc_layernorm", 300 * 1024)
                .unwrap_err()
        );
        assert!(msg.contains("exceed the device's"), "{msg}");
    }
}
