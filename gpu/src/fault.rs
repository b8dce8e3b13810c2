//! Failures that happen where the caller cannot see them.
//!
//! CubeCL runs every allocation, compilation and launch on a device-service thread of its own
//! (named `DSU-…`/`DSD-…` at 0.10). A failure there (a buffer past the driver's limit, a shader the
//! driver rejects, wgpu's validation) is a panic on that thread, which CubeCL catches, logs and
//! forgets: the caller's handle then names memory that was never filled, and reads succeed with
//! whatever bytes were there. [`watch`] installs a panic hook that records those panics, and each
//! [`Gpu`](crate::Gpu) asks after every blocking read whether one happened since it last looked.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, Once};

/// Messages of the panics seen on device-service threads, oldest first.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread is inside [`guarded`].
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `call` (a CubeCL call that panics on the caller's thread when its task failed on the
/// device thread: a read unwraps the channel's error), recording a panic as a device failure
/// instead of printing it. `None` when it panicked.
pub(crate) fn guarded<T>(call: impl FnOnce() -> T) -> Option<T> {
    GUARDED.with(|g| g.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(call)).ok();
    GUARDED.with(|g| g.set(false));
    result
}

/// Installs the hook (once per process). Panics on other threads go to the hook that was there
/// before; a device thread's panic is recorded instead of printed, since the backend that owns
/// the device reports it as an error.
pub(crate) fn watch() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if on_device_thread() || GUARDED.with(Cell::get) {
                PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(describe(info));
            } else {
                previous(info);
            }
        }));
    });
}

/// How many device-thread panics have been recorded so far.
pub(crate) fn seen() -> usize {
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// The first device-thread panic recorded after the first `since`, if any.
pub(crate) fn first_since(since: usize) -> Option<String> {
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).get(since).cloned()
}

fn on_device_thread() -> bool {
    std::thread::current().name().is_some_and(|name| name.starts_with("DSU-") || name.starts_with("DSD-"))
}

fn describe(info: &PanicHookInfo) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("the device thread panicked");
    // CubeCL's errors append a backtrace section after the first line.
    let message = message.lines().next().unwrap_or_default();
    match info.location() {
        Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
        None => message.to_string(),
    }
}
