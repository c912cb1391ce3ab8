'use strict';
// A local test of the handler, without the platform: `node test.js`.
const assert = require('assert');
const fs = require('fs');
const path = require('path');
const { handle } = require('./index');

const context = () => {
  const deadline = Date.now() + 3000;
  return {
    run_id: 'local-test',
    function: '{{name}}',
    version: 0,
    deadline_ms: deadline,
    memory_mb: 128,
    remainingMs: () => Math.max(0, deadline - Date.now()),
  };
};

(async () => {
  const event = JSON.parse(fs.readFileSync(path.join(__dirname, 'event.json'), 'utf8'));
  const result = await handle(event, context());
  JSON.stringify(result); // the result must be JSON
  assert.strictEqual(result.message, `hello, ${event.name}!`);
  assert.strictEqual((await handle({}, context())).message, 'hello, world!');
  console.log('ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
