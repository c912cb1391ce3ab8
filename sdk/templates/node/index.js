'use strict';
// The {{name}} function.
//
// Color FaaS calls `handle(event, context)` once per invocation: `event` is the invocation's
// JSON arguments (checked against args_schema in colorfaas.json); the value it returns (or
// resolves to) is the result and must be JSON-serializable. A thrown error or a rejected
// promise fails the run. Whatever the function logs is kept as the run's logs
// (`colorfaas logs <run_id>`).
//
// context has run_id, function, version, deadline_ms, memory_mb and remainingMs().

exports.handle = async (event, context) => {
  const name = (event && event.name) || 'world';
  console.log(`greeting ${name} (run ${context.run_id}, ${context.remainingMs()} ms left)`);
  return { message: `hello, ${name}!`, function: context.function };
};
