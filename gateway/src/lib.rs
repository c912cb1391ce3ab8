//! The invoke endpoint applications call: authenticates API keys, validates args, publishes
//! invocations to RabbitMQ and answers sync calls from the reply queue.
