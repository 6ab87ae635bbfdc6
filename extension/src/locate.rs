//! Where the extension's own library file is: the game loads it from the
//! mod folder (`@icom/icom_x64.so`), which is where its config and logs
//! live. Asked of the loader by the address of a function in this library.

use std::path::PathBuf;

/// The path of the loaded library (`…/@icom/icom_x64.so`), if the platform
/// tells it.
pub(crate) fn library_path() -> Option<PathBuf> {
    platform::library_path()
}

/// The folder the library was loaded from.
pub(crate) fn library_dir() -> Option<PathBuf> {
    library_path().and_then(|p| p.parent().map(PathBuf::from))
}

#[cfg(unix)]
mod platform {
    use std::ffi::{CStr, OsStr};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use arma_rs::libc;

    pub(super) fn library_path() -> Option<PathBuf> {
        let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
        let anchor = library_path as *const () as *const libc::c_void;
        // SAFETY: dladdr only reads the address and fills `info`; a zero
        // return means it did not, and `info` is not read then.
        let found = unsafe { libc::dladdr(anchor, info.as_mut_ptr()) };
        if found == 0 {
            return None;
        }
        // SAFETY: dladdr returned non-zero, so it initialised `info`.
        let info = unsafe { info.assume_init() };
        if info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dli_fname is a NUL-terminated string owned by the loader,
        // valid while the library stays loaded; it is copied at once.
        let name = unsafe { CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
        // A library found through the search path may be named relatively.
        std::fs::canonicalize(&path).ok().or(Some(path))
    }
}

#[cfg(windows)]
mod platform {
    use std::ffi::OsString;
    use std::os::windows::ffi::OsStringExt;
    use std::path::PathBuf;

    use windows_sys::Win32::Foundation::HMODULE;
    use windows_sys::Win32::System::LibraryLoader::{
        GetModuleFileNameW, GetModuleHandleExW, GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS,
        GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
    };

    pub(super) fn library_path() -> Option<PathBuf> {
        let mut module: HMODULE = std::ptr::null_mut();
        let anchor = library_path as *const () as *const u16;
        // SAFETY: with FROM_ADDRESS the "name" is an address inside the
        // module, which `anchor` is; UNCHANGED_REFCOUNT means nothing to free.
        let ok = unsafe {
            GetModuleHandleExW(
                GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS
                    | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                anchor,
                &mut module,
            )
        };
        if ok == 0 {
            return None;
        }
        let mut buf = vec![0u16; 32_768];
        // SAFETY: the buffer is valid for `buf.len()` u16s.
        let len = unsafe { GetModuleFileNameW(module, buf.as_mut_ptr(), buf.len() as u32) };
        if len == 0 || len as usize >= buf.len() {
            return None;
        }
        Some(PathBuf::from(OsString::from_wide(&buf[..len as usize])))
    }
}

#[cfg(not(any(unix, windows)))]
mod platform {
    pub(super) fn library_path() -> Option<std::path::PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_binary_it_is_linked_into() {
        // In unit tests the code is linked into the test executable.
        let path = super::library_path().unwrap();
        assert!(path.is_file(), "{}", path.display());
        assert_eq!(
            path.canonicalize().unwrap(),
            std::env::current_exe().unwrap().canonicalize().unwrap()
        );
    }
}
