//! A stand-in for the game's side of the extension ABI, shared by the ABI
//! test and the benchmark: loads the library with `dlopen`, calls the
//! `RVExtension*` symbols with a 10,240-byte output buffer, and registers a
//! callback that queues what it gets and, like an engine whose queue is
//! full, answers -1 to every fifth call (arma-rs then retries). Like the
//! addon's handler, it returns credit with `icom:ready` and pulls `large`
//! payloads with `icom:fetch`.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use libloading::Library;
use serde_json::Value;

/// The engine's output buffer.
pub const OUTPUT_SIZE: usize = 10240;
/// How long a callback may take to come.
pub const CALLBACK_WAIT: Duration = Duration::from_secs(30);

/// How string arguments are passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// As they are (debug builds of arma-rs extensions accept this).
    Unquoted,
    /// As SQF's `str` writes them: quoted, inner quotes doubled.
    Sqf,
}

pub type ArgsFn = unsafe extern "system" fn(
    *mut c_char,
    usize,
    *const c_char,
    *const *const c_char,
    c_int,
) -> c_int;
type VersionFn = unsafe extern "system" fn(*mut c_char, usize) -> c_int;
type CallbackFn = extern "system" fn(*const c_char, *const c_char, *const c_char) -> c_int;
type RegisterFn = unsafe extern "system" fn(CallbackFn);

/// What one library's callback received.
struct Inbox {
    queue: Mutex<VecDeque<(String, String, String)>>,
    ready: Condvar,
    calls: AtomicUsize,
    refusals: AtomicUsize,
    arrived: AtomicUsize,
}

impl Inbox {
    const fn new() -> Inbox {
        Inbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            calls: AtomicUsize::new(0),
            refusals: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
        }
    }
}

/// One inbox per library loaded in this process (the callback is a plain
/// function, so it can only find its inbox through a static).
static INBOXES: [Inbox; 2] = [Inbox::new(), Inbox::new()];

extern "system" fn callback<const N: usize>(
    name: *const c_char,
    function: *const c_char,
    data: *const c_char,
) -> c_int {
    let inbox = &INBOXES[N];
    let call = inbox.calls.fetch_add(1, Ordering::Relaxed) + 1;
    if call.is_multiple_of(5) {
        inbox.refusals.fetch_add(1, Ordering::Relaxed);
        return -1;
    }
    // SAFETY: the extension passes NUL-terminated strings, valid for the call.
    let text = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    let entry = (text(name), text(function), text(data));
    inbox.queue.lock().unwrap().push_back(entry);
    inbox.arrived.fetch_add(1, Ordering::Relaxed);
    inbox.ready.notify_all();
    0
}

/// The game, for one loaded library.
pub struct Game {
    args: ArgsFn,
    version: VersionFn,
    register: RegisterFn,
    flags: *const u64,
    slot: usize,
    quoting: Quoting,
    credited: usize,
    pending: VecDeque<(String, Value)>,
    pages: usize,
}

impl Game {
    /// Loads the library (for good: the game never unloads it either, and
    /// arma-rs's callback thread must not outlive its code). `slot` (0 or 1)
    /// picks the callback and its inbox.
    pub fn load(path: &Path, slot: usize, quoting: Quoting) -> Game {
        assert!(path.is_file(), "no library at {}", path.display());
        // SAFETY: loading our own extension, whose initialisers are arma-rs's.
        let lib: &'static Library =
            Box::leak(Box::new(unsafe { Library::new(path) }.expect("dlopen")));
        // SAFETY: the symbols are the ones arma-rs exports, with these types.
        unsafe {
            Game {
                args: *lib.get::<ArgsFn>(b"RVExtensionArgs").unwrap(),
                version: *lib.get::<VersionFn>(b"RVExtensionVersion").unwrap(),
                register: *lib
                    .get::<RegisterFn>(b"RVExtensionRegisterCallback")
                    .unwrap(),
                flags: *lib.get::<*const u64>(b"RVExtensionFeatureFlags").unwrap(),
                slot,
                quoting,
                credited: 0,
                pending: VecDeque::new(),
                pages: 0,
            }
        }
    }

    /// `RVExtensionFeatureFlags`, read as the engine does before each call.
    pub fn feature_flags(&self) -> u64 {
        // SAFETY: the symbol is a u64 the library exports.
        unsafe { std::ptr::read_volatile(self.flags) }
    }

    /// `RVExtensionVersion`, with the engine's 32-byte buffer.
    pub fn version(&self) -> String {
        let mut out = [0 as c_char; 32];
        // SAFETY: the buffer is as large as we say.
        unsafe { (self.version)(out.as_mut_ptr(), out.len()) };
        // SAFETY: the extension wrote a NUL-terminated string.
        unsafe { CStr::from_ptr(out.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// `RVExtensionRegisterCallback`.
    pub fn register_callback(&self) {
        let cb: CallbackFn = match self.slot {
            0 => callback::<0>,
            _ => callback::<1>,
        };
        // SAFETY: the callback has the engine's signature and lives for ever.
        unsafe { (self.register)(cb) };
    }

    /// A string argument, as the chosen quoting passes it.
    pub fn s(&self, text: &str) -> String {
        match self.quoting {
            Quoting::Unquoted => text.to_owned(),
            Quoting::Sqf => format!("\"{}\"", text.replace('"', "\"\"")),
        }
    }

    /// `RVExtensionArgs`: returns the output and the return code.
    pub fn call(&self, function: &str, args: &[String]) -> (String, i32) {
        let function = CString::new(function).unwrap();
        let args: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap())
            .collect();
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        let mut out = vec![0 as c_char; OUTPUT_SIZE];
        let code = self.call_raw(&function, &argv, &mut out);
        // SAFETY: the buffer holds a NUL-terminated string (zeroed, then
        // written with a terminator, or left empty).
        let text = unsafe { CStr::from_ptr(out.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        (text, code)
    }

    /// `RVExtensionArgs` with prepared arguments, for timing.
    pub fn call_raw(&self, function: &CStr, argv: &[*const c_char], out: &mut [c_char]) -> i32 {
        // SAFETY: every pointer is a live NUL-terminated string, and the
        // output buffer is as large as we say.
        unsafe {
            (self.args)(
                out.as_mut_ptr(),
                out.len(),
                function.as_ptr(),
                argv.as_ptr(),
                argv.len() as c_int,
            )
        }
    }

    /// The next callback for which `wanted(kind, data)` holds; the others
    /// stay queued. `large` payloads are fetched on the way, as the addon
    /// does, and credit is returned for everything that arrived.
    pub fn next(&mut self, wanted: impl Fn(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + CALLBACK_WAIT;
        loop {
            self.drain();
            if let Some(i) = self.pending.iter().position(|(k, v)| wanted(k, v)) {
                return self.pending.remove(i).map(|(_, v)| v).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no wanted callback; queued: {:?}",
                self.pending
            );
            let inbox = &INBOXES[self.slot];
            let queue = inbox.queue.lock().unwrap();
            if queue.is_empty() {
                let _ = inbox
                    .ready
                    .wait_timeout(queue, Duration::from_millis(20))
                    .unwrap();
            }
        }
    }

    /// Returns credit for what arrived and forgets it (a frame that handled
    /// every callback), after giving the extension a moment to answer.
    pub fn settle(&mut self) {
        std::thread::sleep(Duration::from_millis(2));
        self.drain();
        self.pending.clear();
    }

    /// Pages fetched so far.
    pub fn fetched_pages(&self) -> usize {
        self.pages
    }

    /// Times the callback answered -1.
    pub fn refusals(&self) -> usize {
        INBOXES[self.slot].refusals.load(Ordering::Relaxed)
    }

    /// Returns credit for what arrived; moves it into `pending`, fetching
    /// large payloads.
    fn drain(&mut self) {
        let inbox = &INBOXES[self.slot];
        let arrived = inbox.arrived.load(Ordering::Relaxed);
        if arrived > self.credited {
            let (_, code) = self.call("icom:ready", &[(arrived - self.credited).to_string()]);
            assert_eq!(code, 0);
            self.credited = arrived;
        }
        let taken: Vec<_> = inbox.queue.lock().unwrap().drain(..).collect();
        for (name, kind, data) in taken {
            assert_eq!(name, "icom");
            let value: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("{kind} callback is not JSON ({e}): {data}"));
            if kind == "large" {
                let (kind, value) = self.fetch(&value);
                self.pending.push_back((kind, value));
            } else {
                self.pending.push_back((kind, value));
            }
        }
    }

    /// A command's answer: the JSON it returned, or, when that is a handle
    /// (`{"handle", "size", "pages"}`), the JSON its pages hold.
    pub fn answer(&mut self, out: &str) -> Value {
        let value: Value = serde_json::from_str(out).unwrap();
        if value.get("handle").is_none() {
            return value;
        }
        serde_json::from_str(&self.fetch_text(&value)).unwrap()
    }

    fn fetch(&mut self, notice: &Value) -> (String, Value) {
        let text = self.fetch_text(notice);
        let kind = notice["kind"].as_str().unwrap().to_owned();
        (kind, serde_json::from_str(&text).unwrap())
    }

    /// The text of a stored payload, page by page.
    fn fetch_text(&mut self, notice: &Value) -> String {
        let handle = notice["handle"].as_str().unwrap().to_owned();
        let pages = notice["pages"].as_u64().unwrap();
        let mut text = String::new();
        for page in 0..pages {
            let (chunk, code) = self.call("icom:fetch", &[self.s(&handle), page.to_string()]);
            assert_eq!(code, 0, "{chunk}");
            assert!(chunk.len() < OUTPUT_SIZE);
            text.push_str(&chunk);
            self.pages += 1;
        }
        assert_eq!(text.len() as u64, notice["size"].as_u64().unwrap());
        text
    }
}

/// The library built with the test executable: cargo leaves it beside it
/// (`target/debug/deps/libicom.so`) when it builds it for the tests, and
/// copies it one folder up when it builds the library itself.
pub fn built_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = libloading::library_filename("icom");
    let beside = deps.join(&name);
    if beside.is_file() {
        beside
    } else {
        deps.parent().unwrap().join(name)
    }
}

/// Waits until the file at `path` holds `needle`; returns its text.
pub fn wait_for_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {needle:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
