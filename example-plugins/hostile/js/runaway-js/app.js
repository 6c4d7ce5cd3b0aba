// runaway-js: a hostile plugin in JavaScript. Each operation misbehaves the
// way a JavaScript plugin can, to show the sandbox stops it with the same
// typed errors as a Rust plugin:
//
// - `spin` loops for ever (`timeout`, or `out_of_fuel` under a fuel budget);
// - `hoard` allocates without bound (`memory_limit`);
// - `throw` throws an error nothing catches (`trap`, with the error's text);
// - `recurse` recurses without bound (the engine's own recursion limit stops
//   it with `InternalError: too much recursion`, so this too is a `trap`).

import { Plugin } from './capsule.js';

const plugin = new Plugin({ name: 'runaway-js', version: '0.1.0', description: 'Misbehaves in JavaScript on purpose' });

const RAW = { raw: true };

plugin.operation('spin', 'Loops for ever', () => {
  for (let n = 0; ; n++) {
    // nothing
  }
}, RAW);

plugin.operation('hoard', 'Allocates without bound', () => {
  const kept = [];
  for (;;) kept.push(new Uint8Array(1 << 20).fill(1));
}, RAW);

plugin.operation('throw', 'Throws an error nothing catches', () => {
  throw new TypeError('runaway-js gave up on purpose');
}, RAW);

function down(n) {
  return down(n + 1) + 1;
}

plugin.operation('recurse', 'Recurses without bound', () => down(0), RAW);

export const handler = plugin.handler();
