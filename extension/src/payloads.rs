//! Large payloads: a result whose JSON would not fit the game's 10,240-byte
//! output buffer (or a callback) waits here under a handle, and SQF pulls it
//! page by page with `icom:fetch`. The store is bounded in count, bytes and
//! age; a payload leaves once every page has been fetched, or when it
//! expires.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PayloadLimits {
    /// Payloads held at once.
    pub(crate) count: usize,
    /// Bytes held at once.
    pub(crate) bytes: usize,
    /// How long a payload waits for its pages to be fetched.
    pub(crate) age: Duration,
    /// The largest page, in bytes (each page is valid UTF-8 on its own).
    pub(crate) page_bytes: usize,
}

/// A stored payload, as the `large` callback describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle {
    /// What `icom:fetch` takes.
    pub(crate) id: u64,
    /// The JSON text's length, in bytes.
    pub(crate) size: usize,
    /// How many pages to fetch, numbered from 0.
    pub(crate) pages: usize,
}

/// Why a payload was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum StoreError {
    /// The store is full now; it frees up as payloads are fetched or expire.
    #[error("the payload store is full")]
    Full,
    /// The payload is larger than the whole store: it can never fit.
    #[error("a payload of {size} bytes is larger than the store's {max}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The store's byte bound.
        max: usize,
    },
}

/// Why a page could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum FetchError {
    /// No payload has this handle: wrong handle, already fetched, or expired.
    #[error("no payload {0} (already fetched, expired, or never existed)")]
    NoPayload(u64),
    /// The page number is past the last page.
    #[error("payload {handle} has {pages} pages (0 to {last}); page {page} does not exist", last = .pages - 1)]
    NoPage {
        /// The handle.
        handle: u64,
        /// The page asked for.
        page: usize,
        /// How many pages it has.
        pages: usize,
    },
}

/// A payload the store did not take, handed back with the reason.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) error: StoreError,
    pub(crate) text: String,
}

/// Counts, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PayloadStats {
    /// Payloads held now.
    pub(crate) held: usize,
    /// Bytes held now.
    pub(crate) bytes: usize,
    /// Payloads dropped unfetched because they expired.
    pub(crate) expired: u64,
}

/// The store. Its lock is held only to copy a page or move a string.
#[derive(Debug)]
pub(crate) struct Payloads {
    limits: PayloadLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    items: BTreeMap<u64, Stored>,
    bytes: usize,
    expired: u64,
}

#[derive(Debug)]
struct Stored {
    text: String,
    /// The byte offset where each page starts.
    starts: Vec<usize>,
    fetched: Vec<bool>,
    left: usize,
    created: Instant,
}

impl Payloads {
    pub(crate) fn new(limits: PayloadLimits) -> Payloads {
        Payloads {
            limits,
            inner: Mutex::new(Inner {
                next: 1,
                ..Inner::default()
            }),
        }
    }

    /// Stores a payload and returns its handle.
    ///
    /// # Errors
    /// [`StoreError::Full`] for now, [`StoreError::TooLarge`] for ever,
    /// with the text handed back.
    pub(crate) fn insert(&self, text: String, now: Instant) -> Result<Handle, Refused> {
        let size = text.len();
        if size > self.limits.bytes {
            let error = StoreError::TooLarge {
                size,
                max: self.limits.bytes,
            };
            return Err(Refused { error, text });
        }
        let starts = page_starts(&text, self.limits.page_bytes);
        let mut inner = self.lock();
        inner.expire(now, self.limits.age);
        if inner.items.len() >= self.limits.count || inner.bytes + size > self.limits.bytes {
            return Err(Refused {
                error: StoreError::Full,
                text,
            });
        }
        let id = inner.next;
        inner.next += 1;
        let pages = starts.len();
        inner.bytes += size;
        inner.items.insert(
            id,
            Stored {
                text,
                fetched: vec![false; pages],
                left: pages,
                starts,
                created: now,
            },
        );
        Ok(Handle { id, size, pages })
    }

    /// A command's answer: `text` itself when it is at most `inline` bytes;
    /// else `text` is stored and the answer is its handle,
    /// `{"handle", "size", "pages"}`, to fetch with `icom:fetch`.
    ///
    /// # Errors
    /// The store has no room for it.
    pub(crate) fn answer(
        &self,
        text: String,
        inline: usize,
        now: Instant,
    ) -> Result<String, String> {
        if text.len() <= inline {
            return Ok(text);
        }
        let handle = self.insert(text, now).map_err(|r| r.error.to_string())?;
        Ok(serde_json::json!({
            "handle": handle.id.to_string(),
            "size": handle.size,
            "pages": handle.pages,
        })
        .to_string())
    }

    /// One page of a payload. The payload leaves the store once each of its
    /// pages has been fetched.
    ///
    /// # Errors
    /// [`FetchError`] when the handle or page does not exist.
    pub(crate) fn page(&self, id: u64, page: usize, now: Instant) -> Result<String, FetchError> {
        let mut inner = self.lock();
        inner.expire(now, self.limits.age);
        let stored = inner.items.get_mut(&id).ok_or(FetchError::NoPayload(id))?;
        let pages = stored.starts.len();
        let Some(&start) = stored.starts.get(page) else {
            return Err(FetchError::NoPage {
                handle: id,
                page,
                pages,
            });
        };
        let end = stored
            .starts
            .get(page + 1)
            .copied()
            .unwrap_or(stored.text.len());
        let text = stored.text.get(start..end).unwrap_or_default().to_owned();
        if !std::mem::replace(&mut stored.fetched[page], true) {
            stored.left -= 1;
        }
        if stored.left == 0 {
            if let Some(done) = inner.items.remove(&id) {
                inner.bytes -= done.text.len();
            }
        }
        Ok(text)
    }

    /// Drops what has waited too long.
    pub(crate) fn expire(&self, now: Instant) {
        self.lock().expire(now, self.limits.age);
    }

    pub(crate) fn stats(&self) -> PayloadStats {
        let inner = self.lock();
        PayloadStats {
            held: inner.items.len(),
            bytes: inner.bytes,
            expired: inner.expired,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (every
        // update is a single assignment after the checks), so a poisoned
        // lock is still usable.
        icom_protocol::lock(&self.inner)
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, age: Duration) {
        // Handles rise with time, so the oldest come first.
        while let Some(entry) = self.items.first_entry() {
            if now.saturating_duration_since(entry.get().created) < age {
                break;
            }
            let stored = entry.remove();
            self.bytes -= stored.text.len();
            self.expired += 1;
        }
    }
}

/// Splits `text` into pages of at most `page_bytes` bytes, each ending on a
/// character boundary. An empty text is one empty page.
fn page_starts(text: &str, page_bytes: usize) -> Vec<usize> {
    let page_bytes = page_bytes.max(4); // room for any one UTF-8 character
    let mut starts = vec![0];
    let mut start = 0;
    while text.len() - start > page_bytes {
        let mut end = start + page_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        starts.push(end);
        start = end;
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            count: 3,
            bytes: 1000,
            age: Duration::from_secs(60),
            page_bytes: 100,
        }
    }

    #[test]
    fn an_answer_is_itself_when_short_and_a_handle_when_long() {
        let store = Payloads::new(limits());
        let now = Instant::now();
        assert_eq!(store.answer("[\"a\"]".into(), 10, now).unwrap(), "[\"a\"]");
        let long = format!("[{}]", vec!["\"eu-1\""; 40].join(","));
        let notice: serde_json::Value =
            serde_json::from_str(&store.answer(long.clone(), 10, now).unwrap()).unwrap();
        let handle: u64 = notice["handle"].as_str().unwrap().parse().unwrap();
        assert_eq!(notice["size"], long.len());
        let pages = notice["pages"].as_u64().unwrap() as usize;
        let joined: String = (0..pages)
            .map(|p| store.page(handle, p, now).unwrap())
            .collect();
        assert_eq!(joined, long);
        // No room: an error, not a panic.
        let huge = "x".repeat(2000);
        assert!(store.answer(huge, 10, now).is_err());
    }

    #[test]
    fn pages_join_back_to_the_text_on_char_boundaries() {
        let text: String = "ab✓東京🚁\"".repeat(50);
        let store = Payloads::new(PayloadLimits {
            bytes: 10_000,
            ..limits()
        });
        let now = Instant::now();
        let h = store.insert(text.clone(), now).unwrap();
        assert_eq!(h.size, text.len());
        assert!(h.pages > 1);
        let mut joined = String::new();
        for p in 0..h.pages {
            let page = store.page(h.id, p, now).unwrap();
            assert!(page.len() <= 100);
            joined.push_str(&page);
        }
        assert_eq!(joined, text);
        // every page fetched: gone
        assert_eq!(store.page(h.id, 0, now), Err(FetchError::NoPayload(h.id)));
        assert_eq!(store.stats().held, 0);
        assert_eq!(store.stats().bytes, 0);
    }

    #[test]
    fn refetching_a_page_is_allowed_until_all_are_fetched() {
        let store = Payloads::new(limits());
        let now = Instant::now();
        let h = store.insert("x".repeat(250), now).unwrap();
        assert_eq!(h.pages, 3);
        assert_eq!(store.page(h.id, 0, now).unwrap().len(), 100);
        assert_eq!(store.page(h.id, 0, now).unwrap().len(), 100);
        let err = store.page(h.id, 3, now).unwrap_err();
        assert!(err.to_string().contains("0 to 2"), "{err}");
        store.page(h.id, 2, now).unwrap();
        assert_eq!(store.stats().held, 1);
        assert_eq!(store.page(h.id, 1, now).unwrap().len(), 100);
        assert_eq!(store.stats().held, 0);
    }

    #[test]
    fn bounded_in_count_bytes_and_age() {
        let store = Payloads::new(limits());
        let t0 = Instant::now();
        for _ in 0..3 {
            store.insert("y".repeat(10), t0).unwrap();
        }
        assert_eq!(
            store.insert("z".into(), t0).unwrap_err().error,
            StoreError::Full
        );
        let refused = store.insert("z".repeat(1001), t0).unwrap_err();
        assert_eq!(
            refused.error,
            StoreError::TooLarge {
                size: 1001,
                max: 1000
            }
        );
        assert_eq!(refused.text.len(), 1001);
        let later = t0 + Duration::from_secs(61);
        let h = store.insert("w".repeat(990), later).unwrap();
        let stats = store.stats();
        assert_eq!((stats.held, stats.bytes, stats.expired), (1, 990, 3));
        assert_eq!(
            store.insert("v".repeat(20), later).unwrap_err().error,
            StoreError::Full
        );
        store.expire(later + Duration::from_secs(60));
        assert_eq!(store.page(h.id, 0, later), Err(FetchError::NoPayload(h.id)));
    }

    #[test]
    fn empty_text_is_one_empty_page() {
        assert_eq!(page_starts("", 100), vec![0]);
        assert_eq!(page_starts(&"a".repeat(100), 100), vec![0]);
        assert_eq!(page_starts(&"a".repeat(101), 100), vec![0, 100]);
    }
}
