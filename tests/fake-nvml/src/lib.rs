//! A fake `libnvidia-ml.so`: the real NVML C ABI, answered from a scenario file.
//!
//! The scenario (JSON, path in `FAKE_NVML_SCENARIO`) lists GPUs whose values step over time
//! (seconds since `nvmlInit`), processes (fixed pids or pids read from a file at each call),
//! and failures: init failing, a call hanging for N seconds, a GPU lost after T seconds,
//! calls NOT_SUPPORTED (as on MIG devices). Everything nvml-wrapper calls is exported; the
//! rest of NVML is absent, which nvml-wrapper tolerates until it is called.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, c_uint, c_ulonglong, c_void};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod scenario;
use scenario::{Gpu, Scenario};

type Ret = c_uint;
const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const GPU_IS_LOST: Ret = 15;

struct State {
    scenario: Scenario,
    start: Instant,
    /// Seconds of scenario time already past at `start` (from `epoch_unix`).
    offset: f64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Current values of a GPU at `t` seconds.
#[derive(Default, Clone, Copy)]
struct Values {
    util: u32,
    mem_util: u32,
    mem_used: u64,
    power_mw: u32,
    temp: u32,
    throttle: u64,
}

fn values_at(g: &Gpu, t: f64) -> Values {
    let mut v = Values {
        temp: 40,
        power_mw: 60_000,
        ..Values::default()
    };
    for s in g.timeline.iter().filter(|s| s.at <= t) {
        v.util = s.util.unwrap_or(v.util);
        v.mem_util = s.mem_util.unwrap_or(v.mem_util);
        v.mem_used = s.mem_used.unwrap_or(v.mem_used);
        v.power_mw = s.power_mw.unwrap_or(v.power_mw);
        v.temp = s.temp.unwrap_or(v.temp);
        v.throttle = s.throttle.unwrap_or(v.throttle);
    }
    v
}

/// Energy in mJ since init: the integral of the stepped power.
fn energy_at(g: &Gpu, t: f64) -> u64 {
    let mut points: Vec<f64> = g
        .timeline
        .iter()
        .map(|s| s.at)
        .filter(|a| *a < t && *a > 0.0)
        .collect();
    points.insert(0, 0.0);
    points.push(t);
    let mut e = 0.0;
    for w in points.windows(2) {
        e += values_at(g, w[0]).power_mw as f64 * (w[1] - w[0]);
    }
    e as u64
}

/// Runs `f` on the scenario; handles hangs, lost GPUs and unsupported calls first.
fn with_gpu(call: &str, dev: *mut c_void, f: impl FnOnce(&Gpu, f64) -> Ret) -> Ret {
    let (gpu, t, hang_until) = {
        let guard = match STATE.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(st) = guard.as_ref() else {
            return UNINITIALIZED;
        };
        let idx = dev as usize;
        if idx == 0 || idx > st.scenario.gpus.len() {
            return INVALID_ARGUMENT;
        }
        let t = st.start.elapsed().as_secs_f64() + st.offset;
        let hang = st
            .scenario
            .hang
            .iter()
            .find(|h| h.call == call && t >= h.after && t < h.after + h.secs)
            .map(|h| st.start + Duration::from_secs_f64((h.after + h.secs - st.offset).max(0.0)));
        (st.scenario.gpus[idx - 1].clone(), t, hang)
    };
    if let Some(until) = hang_until {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    if gpu.lost_after.is_some_and(|l| t >= l) {
        return GPU_IS_LOST;
    }
    let short = call.trim_start_matches("nvmlDevice");
    if gpu.unsupported.iter().any(|u| u == short) {
        return NOT_SUPPORTED;
    }
    f(&gpu, t)
}

fn procs_of(g: &Gpu, only_live: bool) -> Vec<(u32, u64)> {
    g.processes
        .iter()
        .filter_map(|p| {
            let pid = p.pid.or_else(|| {
                std::fs::read_to_string(p.pid_file.as_ref()?)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })?;
            (!only_live || std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then_some((pid, p.mem))
        })
        .collect()
}

fn only_live() -> bool {
    STATE
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.scenario.only_live_pids))
        .unwrap_or(false)
}

unsafe fn write_str(s: &str, buf: *mut c_char, len: c_uint) -> Ret {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if bytes.len() + 1 > len as usize {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
    *buf.add(bytes.len()) = 0;
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    let scenario: Scenario = match std::env::var("FAKE_NVML_SCENARIO") {
        Ok(path) => match std::fs::read_to_string(&path).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                eprintln!("fake-nvml: bad scenario {path}: {e}");
                return 999;
            }
            Err(e) => {
                eprintln!("fake-nvml: cannot read scenario {path}: {e}");
                return 999;
            }
        },
        Err(_) => Scenario::default(),
    };
    if scenario.init_hang_secs > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(scenario.init_hang_secs));
    }
    if scenario.init_error != SUCCESS {
        return scenario.init_error;
    }
    let offset = scenario.epoch_unix.map_or(0.0, |e| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        now - e
    });
    if let Ok(mut g) = STATE.lock() {
        *g = Some(State {
            scenario,
            start: Instant::now(),
            offset,
        });
    }
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInit() -> Ret {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    nvmlInit_v2()
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    if let Ok(mut g) = STATE.lock() {
        *g = None;
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(code: Ret) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"Success\0",
        3 => b"Not Supported\0",
        15 => b"GPU is lost\0",
        _ => b"Fake NVML error\0",
    };
    s.as_ptr().cast()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(buf: *mut c_char, len: c_uint) -> Ret {
    write_str("999.99-fake", buf, len)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(buf: *mut c_char, len: c_uint) -> Ret {
    write_str("12.999.99-fake", buf, len)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    let g = STATE.lock();
    let Some(st) = g.as_ref().ok().and_then(|g| g.as_ref()) else {
        return UNINITIALIZED;
    };
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    *count = st.scenario.gpus.len() as c_uint;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    nvmlDeviceGetCount_v2(count)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    dev: *mut *mut c_void,
) -> Ret {
    let g = STATE.lock();
    let Some(st) = g.as_ref().ok().and_then(|g| g.as_ref()) else {
        return UNINITIALIZED;
    };
    if dev.is_null() || index as usize >= st.scenario.gpus.len() {
        return INVALID_ARGUMENT;
    }
    *dev = (index as usize + 1) as *mut c_void;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, dev: *mut *mut c_void) -> Ret {
    nvmlDeviceGetHandleByIndex_v2(index, dev)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: *mut c_void, index: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetIndex", dev, |_, _| {
        *index = dev as usize as c_uint - 1;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(dev: *mut c_void, minor: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetMinorNumber", dev, |g, _| {
        *minor = g.minor.unwrap_or(dev as usize as c_uint - 1);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_gpu("nvmlDeviceGetName", dev, |g, _| {
        write_str(&g.name, buf, len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: *mut c_void, buf: *mut c_char, len: c_uint) -> Ret {
    with_gpu("nvmlDeviceGetUUID", dev, |g, _| {
        write_str(&g.uuid, buf, len)
    })
}

#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    dev: *mut c_void,
    out: *mut Utilization,
) -> Ret {
    with_gpu("nvmlDeviceGetUtilizationRates", dev, |g, t| {
        let v = values_at(g, t);
        *out = Utilization {
            gpu: v.util,
            memory: v.mem_util,
        };
        SUCCESS
    })
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct MemoryV1 {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(dev: *mut c_void, out: *mut MemoryV2) -> Ret {
    with_gpu("nvmlDeviceGetMemoryInfo_v2", dev, |g, t| {
        let v = values_at(g, t);
        let used = v.mem_used.min(g.mem_total);
        (*out).total = g.mem_total;
        (*out).reserved = 0;
        (*out).used = used;
        (*out).free = g.mem_total - used;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, out: *mut MemoryV1) -> Ret {
    with_gpu("nvmlDeviceGetMemoryInfo", dev, |g, t| {
        let used = values_at(g, t).mem_used.min(g.mem_total);
        *out = MemoryV1 {
            total: g.mem_total,
            free: g.mem_total - used,
            used,
        };
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(dev: *mut c_void, mw: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetPowerUsage", dev, |g, t| {
        *mw = values_at(g, t).power_mw;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetEnforcedPowerLimit(dev: *mut c_void, mw: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetEnforcedPowerLimit", dev, |_, _| {
        *mw = 700_000;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    dev: *mut c_void,
    mj: *mut c_ulonglong,
) -> Ret {
    with_gpu("nvmlDeviceGetTotalEnergyConsumption", dev, |g, t| {
        *mj = energy_at(g, t);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    dev: *mut c_void,
    _sensor: c_uint,
    c: *mut c_uint,
) -> Ret {
    with_gpu("nvmlDeviceGetTemperature", dev, |g, t| {
        *c = values_at(g, t).temp;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    dev: *mut c_void,
    r: *mut c_ulonglong,
) -> Ret {
    with_gpu("nvmlDeviceGetCurrentClocksThrottleReasons", dev, |g, t| {
        *r = values_at(g, t).throttle;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFanSpeed(dev: *mut c_void, _speed: *mut c_uint) -> Ret {
    with_gpu("nvmlDeviceGetFanSpeed", dev, |_, _| NOT_SUPPORTED)
}

#[repr(C)]
pub struct ProcessInfo {
    pid: c_uint,
    used: c_ulonglong,
    gpu_instance: c_uint,
    compute_instance: c_uint,
}

unsafe fn fill_procs(list: &[(u32, u64)], count: *mut c_uint, infos: *mut ProcessInfo) -> Ret {
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    let n = list.len() as c_uint;
    if infos.is_null() || *count < n {
        *count = n;
        return if n == 0 { SUCCESS } else { INSUFFICIENT_SIZE };
    }
    for (i, (pid, mem)) in list.iter().enumerate() {
        *infos.add(i) = ProcessInfo {
            pid: *pid,
            used: *mem,
            gpu_instance: u32::MAX,
            compute_instance: u32::MAX,
        };
    }
    *count = n;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    let live = only_live();
    with_gpu("nvmlDeviceGetComputeRunningProcesses_v3", dev, |g, _| {
        fill_procs(&procs_of(g, live), count, infos)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    nvmlDeviceGetComputeRunningProcesses_v3(dev, count, infos)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    dev: *mut c_void,
    count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    with_gpu("nvmlDeviceGetGraphicsRunningProcesses_v3", dev, |_, _| {
        fill_procs(&[], count, infos)
    })
}

#[repr(C)]
pub struct ProcUtil {
    pid: c_uint,
    ts: c_ulonglong,
    sm: c_uint,
    mem: c_uint,
    enc: c_uint,
    dec: c_uint,
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    dev: *mut c_void,
    out: *mut ProcUtil,
    count: *mut c_uint,
    _last_seen: c_ulonglong,
) -> Ret {
    let live = only_live();
    with_gpu("nvmlDeviceGetProcessUtilization", dev, |g, t| {
        let procs = procs_of(g, live);
        if procs.is_empty() {
            return NOT_FOUND;
        }
        if count.is_null() {
            return INVALID_ARGUMENT;
        }
        let n = procs.len() as c_uint;
        if out.is_null() || *count < n {
            *count = n;
            return INSUFFICIENT_SIZE;
        }
        let v = values_at(g, t);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        for (i, (pid, _)) in procs.iter().enumerate() {
            *out.add(i) = ProcUtil {
                pid: *pid,
                ts,
                sm: v.util,
                mem: v.mem_util,
                enc: 0,
                dec: 0,
            };
        }
        *count = n;
        SUCCESS
    })
}
