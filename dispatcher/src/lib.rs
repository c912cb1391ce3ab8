//! The dispatcher: a ZooKeeper-elected leader that schedules invocations across users with DRF
//! and routes them to per-worker queues.
