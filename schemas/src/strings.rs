//! The contract's string forms of the enums, defined once: [`contract_strings!`] gives an enum
//! `ALL` (every variant, in order), `as_str` (its string in the public API), `parse` (the
//! inverse; exact, so callers trim or lower-case first where the contract allows) and `Display`.
//! Every component converts through these, never through a `match` of its own.

/// `contract_strings!(Enum { Variant => "string", ... })`.
#[macro_export]
macro_rules! contract_strings {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($s),+].len()] = [$($ty::$variant),+];

            /// The contract's string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s,)+
                }
            }

            /// The variant whose contract string is exactly `s`.
            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($s => Some($ty::$variant),)+
                    _ => None,
                }
            }

            /// The contract's strings, comma-separated, for error messages.
            pub fn choices() -> String {
                [$($s),+].join(", ")
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
