//! Per-kernel time of a stretch of launches: [`super::Gpu::start_profile`], the work,
//! [`super::Gpu::finish_profile`], then [`profile_table`].
//!
//! On a GPU each launch is bracketed by two CUDA events on the default stream, so a launch's
//! time is the device's own (queueing excluded). The events add a few microseconds of gaps
//! between launches: compare the table's total with an unprofiled run's wall time (the bench
//! prints both). On the host emulator launches run synchronously and the time is host wall
//! time: it shows which kernels the emulator spends its time in, nothing about a GPU.

use super::libcuda::{DRIVER_NAMES, driver_err};
use anyhow::{Context, Result, anyhow};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// One launch's kernel, geometry and time.
#[derive(Clone, Debug)]
pub struct LaunchTime {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub ms: f64,
}

/// One kernel's launches and time in a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTotal {
    pub kernel: &'static str,
    pub launches: usize,
    pub ms: f64,
}

/// Every kernel's total, most time first (ties by name, so the order is reproducible).
pub fn kernel_totals(launches: &[LaunchTime]) -> Vec<KernelTotal> {
    let mut by_kernel: HashMap<&'static str, KernelTotal> = HashMap::new();
    for l in launches {
        let t = by_kernel.entry(l.kernel).or_insert(KernelTotal {
            kernel: l.kernel,
            launches: 0,
            ms: 0.0,
        });
        t.launches += 1;
        t.ms += l.ms;
    }
    let mut totals: Vec<KernelTotal> = by_kernel.into_values().collect();
    totals.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.kernel.cmp(b.kernel)));
    totals
}

/// A table of [`kernel_totals`]: kernel, launches, total ms, share, mean µs per launch; then
/// a `total` line. `timing` names the clock (e.g. "CUDA events").
pub fn profile_table(launches: &[LaunchTime], timing: &str) -> String {
    let totals = kernel_totals(launches);
    let all: f64 = totals.iter().map(|t| t.ms).sum();
    let mut s = format!(
        "{:<28} {:>8} {:>11} {:>7} {:>11}   ({timing})\n",
        "kernel", "launches", "total ms", "share", "mean µs"
    );
    for t in &totals {
        let share = if all > 0.0 { 100.0 * t.ms / all } else { 0.0 };
        let _ = writeln!(
            s,
            "{:<28} {:>8} {:>11.3} {:>6.1}% {:>11.1}",
            t.kernel,
            t.launches,
            t.ms,
            share,
            1e3 * t.ms / t.launches as f64
        );
    }
    let _ = writeln!(
        s,
        "{:<28} {:>8} {:>11.3} {:>6.1}%",
        "total",
        launches.len(),
        all,
        100.0
    );
    s
}

/// The launches of a profile in progress.
pub(crate) enum Recorder {
    /// GPU: each launch's events, read when the profile finishes.
    Events(Vec<(Launch, sys::CUevent, sys::CUevent)>),
    /// Emulator: each launch's host time.
    Host(Vec<LaunchTime>),
}

/// A launch's kernel and geometry.
pub(crate) struct Launch {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Launch {
    fn took(self, ms: f64) -> LaunchTime {
        LaunchTime {
            kernel: self.kernel,
            grid: self.grid,
            block: self.block,
            ms,
        }
    }
}

/// A launch being timed: its start event (GPU) or instant (emulator).
pub(crate) enum Started {
    Event(Launch, sys::CUevent),
    Host(Launch, Instant),
}

impl Recorder {
    pub fn new(emulated: bool) -> Recorder {
        if emulated {
            Recorder::Host(Vec::new())
        } else {
            Recorder::Events(Vec::new())
        }
    }

    /// Before a launch, with the context current.
    pub fn start(&self, launch: Launch) -> Result<Started> {
        match self {
            Recorder::Host(_) => Ok(Started::Host(launch, Instant::now())),
            Recorder::Events(_) => Ok(Started::Event(launch, record_event()?)),
        }
    }

    /// After the launch `started` began.
    pub fn stop(&mut self, started: Started) -> Result<()> {
        match (self, started) {
            (Recorder::Host(v), Started::Host(l, t0)) => {
                v.push(l.took(t0.elapsed().as_secs_f64() * 1e3))
            }
            (Recorder::Events(v), Started::Event(l, start)) => v.push((l, start, record_event()?)),
            _ => unreachable!("a launch starts and stops on the same recorder"),
        }
        Ok(())
    }

    /// Every launch's time. GPU: call with the context current and the device synchronised;
    /// the events are destroyed.
    pub fn finish(self) -> Result<Vec<LaunchTime>> {
        match self {
            Recorder::Host(v) => Ok(v),
            Recorder::Events(v) => {
                let elapsed = event_elapsed_fn()?;
                let mut out = Vec::with_capacity(v.len());
                let mut first_error = None;
                for (l, start, end) in v {
                    let mut ms = 0.0f32;
                    // SAFETY: both events were created and recorded on the default stream of
                    // the current context and have completed (the caller synchronised).
                    let r = unsafe { elapsed(&mut ms, start, end) };
                    if r != sys::CUresult::CUDA_SUCCESS && first_error.is_none() {
                        first_error = Some(format!("cuEventElapsedTime for {}: {r:?}", l.kernel));
                    }
                    // SAFETY: created by record_event, destroyed once.
                    unsafe {
                        let _ = result::event::destroy(start);
                        let _ = result::event::destroy(end);
                    }
                    out.push(l.took(ms as f64));
                }
                match first_error {
                    Some(e) => Err(anyhow!(e)),
                    None => Ok(out),
                }
            }
        }
    }
}

/// A new event, recorded on the default stream.
fn record_event() -> Result<sys::CUevent> {
    let e = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
        .map_err(driver_err("cuEventCreate"))?;
    // SAFETY: an event just created; the null stream is the context's default stream.
    unsafe { result::event::record(e, std::ptr::null_mut()) }
        .map_err(driver_err("cuEventRecord"))?;
    Ok(e)
}

type ElapsedFn = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;

/// `cuEventElapsedTime_v2` (CUDA 12.8 and later; 13 has only it), else `cuEventElapsedTime`
/// (older drivers): looked up here because cudarc, built for CUDA 13, would panic on a driver
/// that lacks the `_v2` name.
fn event_elapsed_fn() -> Result<ElapsedFn> {
    static FOUND: OnceLock<Result<(libloading::Library, ElapsedFn), String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        // SAFETY: the driver library, already loaded by cudarc; loading it again only adds a
        // reference.
        let lib = DRIVER_NAMES
            .iter()
            .find_map(|n| unsafe { libloading::Library::new(*n) }.ok())
            .ok_or("libcuda.so.1 cannot be loaded")?;
        let f = [
            &b"cuEventElapsedTime_v2\0"[..],
            &b"cuEventElapsedTime\0"[..],
        ]
        .iter()
        // SAFETY: both names have this signature (cuda.h).
        .find_map(|n| unsafe { lib.get::<ElapsedFn>(*n) }.ok().map(|s| *s))
        .ok_or("the driver has neither cuEventElapsedTime_v2 nor cuEventElapsedTime")?;
        Ok((lib, f))
    });
    found
        .as_ref()
        .map(|(_, f)| *f)
        .map_err(|e| anyhow!("{e}"))
        .context("timing launches with CUDA events")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(kernel: &'static str, ms: f64) -> LaunchTime {
        LaunchTime {
            kernel,
            grid: (1, 1, 1),
            block: (32, 1, 1),
            ms,
        }
    }

    #[test]
    fn totals_add_each_kernels_launches_most_time_first() {
        let l = [
            launch("b", 1.0),
            launch("a", 0.5),
            launch("b", 2.0),
            launch("c", 0.5),
        ];
        let t = kernel_totals(&l);
        let got: Vec<(&str, usize, f64)> = t.iter().map(|t| (t.kernel, t.launches, t.ms)).collect();
        assert_eq!(got, [("b", 2, 3.0), ("a", 1, 0.5), ("c", 1, 0.5)]);
        let table = profile_table(&l, "test clock");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].contains("test clock"));
        assert!(
            lines[1].starts_with('b') && lines[1].contains("75.0%"),
            "{table}"
        );
        assert!(lines[1].contains("1500.0"), "mean µs of b: {table}");
        assert!(
            lines[4].starts_with("total") && lines[4].contains("4.000"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_profile_is_a_table_of_nothing() {
        let table = profile_table(&[], "x");
        assert_eq!(table.lines().count(), 2);
        assert!(table.lines().last().unwrap().contains(" 0 "));
    }
}
