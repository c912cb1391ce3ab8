//! The contract's rules for names that more than one component checks (the SDK before a
//! deploy, the portal's API and its form pages): one definition each. The numeric bounds of a
//! function spec are in [`crate::limits`].

/// Longest function name.
pub const FUNCTION_NAME_MAX: usize = 50;

/// The function-name rule as the contract writes it.
pub const FUNCTION_NAME_RULE: &str = "^[a-z0-9][a-z0-9-]{0,49}$";

/// The same rule for an HTML `pattern` attribute, which is implicitly anchored and compiled
/// with the `v` flag in current browsers: there a `-` inside a class must be escaped (an
/// unescaped one makes the whole pattern invalid, and browsers then ignore it), and `\-` is also
/// valid under the older `u` flag.
pub const FUNCTION_NAME_HTML_PATTERN: &str = r"[a-z0-9][a-z0-9\-]{0,49}";

/// The rule in words, for error messages.
pub const FUNCTION_NAME_HELP: &str =
    "1-50 lowercase letters, digits and '-', starting with a letter or digit";

/// Whether `name` is a valid function name: `^[a-z0-9][a-z0-9-]{0,49}$`.
pub fn valid_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    let body = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    match b.first() {
        Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() => {
            b.len() <= FUNCTION_NAME_MAX && b.iter().all(body)
        }
        _ => false,
    }
}

/// Longest argument name in an `args_schema`.
pub const ARG_NAME_MAX: usize = 64;

/// The argument-name rule in words.
pub const ARG_NAME_HELP: &str =
    "letters, digits and '_', not starting with a digit, at most 64 characters";

/// Whether `name` may name an argument: an identifier of ASCII letters, digits and `_`, not
/// starting with a digit, at most [`ARG_NAME_MAX`] characters (so every runtime can bind it).
pub fn valid_arg_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ARG_NAME_MAX
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Bounds of a function's `retries` (async only: further attempts after a failed one).
pub const RETRIES: (u32, u32) = (0, 2);

/// A function's `retries` when its spec names none.
pub const DEFAULT_RETRIES: u32 = 2;

/// Bounds of a function's `max_event_age_s` (1 minute to 6 hours).
pub const MAX_EVENT_AGE_S: (u64, u64) = (60, 21_600);

/// A function's `max_event_age_s` when its spec names none.
pub const DEFAULT_MAX_EVENT_AGE_S: u64 = 21_600;

/// The wait before each retry: before attempt 2, before attempt 3 (about 1 s, then about 4 s).
/// Each is a delay queue of the broker's (`names::AmqpNames::retry_queue`).
pub const RETRY_DELAYS_MS: [u64; 2] = [1_000, 4_000];

/// Times one attempt is run again after a platform failure (a worker or container lost)
/// before the run ends failed by the platform; such re-runs use up no attempt.
pub const PLATFORM_RERUNS: u32 = 3;

/// Serde default of `FunctionDoc::retries`.
pub fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

/// Serde default of `FunctionDoc::max_event_age_s`.
pub fn default_max_event_age_s() -> u64 {
    DEFAULT_MAX_EVENT_AGE_S
}

/// Longest environment variable name (`env` and `secrets`).
pub const ENV_NAME_MAX: usize = 64;

/// The contract's rule for `env` and `secrets` names.
pub const ENV_NAME_RULE: &str = "^[A-Z_][A-Z0-9_]{0,63}$, not starting with COLORFAAS_";

/// Prefix of the variables the platform sets itself; users may not set them.
pub const RESERVED_ENV_PREFIX: &str = "COLORFAAS_";

/// Whether `name` may be an `env` or `secrets` name: `^[A-Z_][A-Z0-9_]{0,63}$` and not
/// `COLORFAAS_*`.
pub fn valid_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= ENV_NAME_MAX
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        && !name.starts_with(RESERVED_ENV_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        for ok in ["adder", "a", "0", "a-1", "9lives", &"a".repeat(50)] {
            assert!(valid_function_name(ok), "{ok}");
        }
        for bad in ["", "-a", "Adder", "a_b", "a b", "é", &"a".repeat(51)] {
            assert!(!valid_function_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_html_pattern_is_the_rule_with_the_dash_escaped() {
        let rule = FUNCTION_NAME_RULE
            .trim_start_matches('^')
            .trim_end_matches('$');
        assert_eq!(FUNCTION_NAME_HTML_PATTERN.replace(r"\-", "-"), rule);
        assert!(rule.ends_with(&format!("{{0,{}}}", FUNCTION_NAME_MAX - 1)));
    }

    #[test]
    fn arg_names() {
        for ok in ["num1", "_x", "CamelCase", &"a".repeat(64)] {
            assert!(valid_arg_name(ok), "{ok}");
        }
        for bad in ["", "1x", "a-b", "a b", "ä", &"a".repeat(65)] {
            assert!(!valid_arg_name(bad), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_", "LOG_LEVEL", "A1_B2", &"A".repeat(64)] {
            assert!(valid_env_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "1A",
            "A-B",
            "A B",
            "É",
            "COLORFAAS_X",
            "COLORFAAS_",
            &"A".repeat(65),
        ] {
            assert!(!valid_env_name(bad), "{bad}");
        }
        assert!(valid_env_name("COLORFAAS"));
    }
}
