// __NAME__: a Capsule plugin written in JavaScript.
//
// - `greet` with `{"name": "Ada"}` answers `{"greeting": "Hello, Ada!"}`. The
//   operator can change the greeting word with the config value `greeting`.
// - Any other operation is answered with the `unsupported` plugin error.
//
// `capsule.js` (beside this file) dispatches by operation and reads and
// writes JSON; host services are imported from the bindings componentize-js
// generates from `wit/plugin.wit` (`capsule:plugin/<service>@__CONTRACT__`).

import { get } from 'capsule:plugin/config@__CONTRACT__';
import { log } from 'capsule:plugin/log@__CONTRACT__';

import { Plugin, invalidInput } from './capsule.js';

const plugin = new Plugin({ name: '__NAME__', version: '0.1.0', description: 'A Capsule plugin written in JavaScript' });

plugin.operation('greet', 'Greets someone by name', (input) => {
  const name = input?.name;
  if (typeof name !== 'string' || name.trim() === '') throw invalidInput('`name` must be a non-empty string');
  // A denied host service throws; the helper turns it into a plugin error.
  const word = get('greeting') ?? 'Hello';
  log('info', `greeting ${name}`);
  return { greeting: `${word}, ${name}!` };
}, {
  input: { type: 'object', properties: { name: { type: 'string', minLength: 1 } }, required: ['name'] },
});

export const handler = plugin.handler();
