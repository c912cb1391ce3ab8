//! The Color FaaS SDK: the `colorfaas` CLI (filled in by the SDK issue).
