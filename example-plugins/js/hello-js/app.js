// hello-js: the hello plugin, written in JavaScript.
//
// - `greet` with `{"name": "..."}` answers `{"greeting": "Hello, <name>!"}`;
//   the operator may change the greeting word with the config key
//   `greeting`. It counts greetings per name in the kv namespace it was
//   granted (a greeting is still given without the grant) and by greeting
//   word in the metric `greetings` when `metrics` is granted.
// - `count` with `{"name": "..."}` answers `{"name": ..., "count": N}`: how
//   often that name was greeted; without a kv grant the call is `denied`.
// - `announce` with `{"topic": "...", "name": "..."}` publishes the greeting
//   as an event; topics the operator did not grant are denied.
//
// Built with componentize-js against Capsule's WIT (world `plugin`), with the
// helper `capsule.js` for dispatch and JSON; every host service is imported
// from the generated bindings.

import { log } from 'capsule:plugin/log@0.2.0';
import { get as configGet } from 'capsule:plugin/config@0.2.0';
import { get as kvGet, increment } from 'capsule:plugin/kv@0.2.0';
import { publish } from 'capsule:plugin/events@0.2.0';
import { counterAdd } from 'capsule:plugin/metrics@0.2.0';

import { Plugin, invalidInput } from './capsule.js';

const NAME = { type: 'string', minLength: 1, maxLength: 64 };
const NAMED = { type: 'object', properties: { name: NAME }, required: ['name'] };

const plugin = new Plugin({
  name: 'hello-js',
  version: '0.1.0',
  description: "Greets people; the greeting word comes from the operator's config (JavaScript)",
  capabilities: ['greeting'],
  metrics: [{ name: 'greetings', kind: 'counter', help: 'Greetings given, by greeting word', labels: ['word'] }],
});

function greeting(name) {
  const word = configGet('greeting') ?? 'Hello';
  try {
    counterAdd('greetings', [word], 1.0);
  } catch {
    // A metric is never worth failing a greeting for.
  }
  return `${word}, ${name}!`;
}

function nameOf(input) {
  if (typeof input?.name !== 'string' || input.name.length === 0) {
    throw invalidInput('expected {"name": "..."} with a non-empty name');
  }
  return input.name;
}

plugin.operation('greet', "Greets someone by name, with the operator's greeting word", (input) => {
  const name = nameOf(input);
  log('info', `greeting ${name}`);
  try {
    increment(`greeted/${name}`, 1n);
  } catch (err) {
    log('debug', `not counted: ${JSON.stringify(err?.payload ?? err)}`);
  }
  return { greeting: greeting(name) };
}, {
  input: NAMED,
  output: { type: 'object', properties: { greeting: { type: 'string' } }, required: ['greeting'] },
});

plugin.operation('count', 'How often a name was greeted (needs a kv grant)', (input) => {
  const name = nameOf(input);
  const stored = kvGet(`greeted/${name}`);
  // `increment` keeps a counter as a little-endian signed 64-bit integer.
  const count = stored === undefined
    ? 0
    : Number(new DataView(stored.buffer, stored.byteOffset, stored.byteLength).getBigInt64(0, true));
  return { name, count };
}, { input: NAMED });

plugin.operation('announce', 'Publishes a greeting as an event on a granted topic', (input) => {
  if (typeof input?.topic !== 'string') throw invalidInput('expected {"topic": "...", "name": "..."}');
  const text = greeting(nameOf(input));
  publish(input.topic, new TextEncoder().encode(JSON.stringify({ greeting: text })));
  return { topic: input.topic, published: true };
});

export const handler = plugin.handler();
