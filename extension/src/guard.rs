//! The last step of every command: a panic becomes an error result, and
//! an error is cut to what the game's output buffer takes.

/// Runs a command's body so that a bug in it becomes an error result,
/// never an unwind across the C ABI (which would abort the game). An error
/// is cut to [`MAX_ERROR_BYTES`], so that it always reaches the game.
pub(crate) fn guard<T>(
    command: &str,
    body: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
        .unwrap_or_else(|_| {
            Err(format!(
                "internal error in icom:{command} (please report it, with the logs)"
            ))
        })
        .map_err(fit)
}

/// The longest error a command returns: far within the game's output
/// buffer (10,240 bytes), past which the game would get code 4 and no text.
pub(crate) const MAX_ERROR_BYTES: usize = 2000;

/// `error`, cut at a character boundary to at most [`MAX_ERROR_BYTES`].
fn fit(mut error: String) -> String {
    const CUT: &str = "… (cut short)";
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES - CUT.len();
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push_str(CUT);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_cut_to_fit_at_a_character_boundary() {
        assert_eq!(fit("short".to_owned()), "short");
        for long in ["x".repeat(5000), "é".repeat(3000), "x€".repeat(1000)] {
            let cut = fit(long.clone());
            assert!(cut.len() <= MAX_ERROR_BYTES, "{} bytes", cut.len());
            assert!(cut.ends_with("… (cut short)"), "{cut}");
            assert!(long.starts_with(cut.trim_end_matches("… (cut short)")));
        }
        let err = guard("x", || -> Result<(), String> { Err("y".repeat(20_000)) });
        assert_eq!(err.unwrap_err().len(), MAX_ERROR_BYTES);
    }
}
