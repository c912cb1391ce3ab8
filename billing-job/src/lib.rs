//! The batch billing job: turns finished, unbilled runs into one bill per user.
