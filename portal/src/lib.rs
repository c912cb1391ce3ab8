//! The developer portal: handlebars pages and the `/api/v1` JSON API, served by warp.
//! Filled in by the portal issue; nothing here pretends to work yet.
