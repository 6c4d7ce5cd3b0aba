// Capsule's helper for plugins written in JavaScript.
//
// It gives a JavaScript plugin what the Rust SDK's `Dispatch` gives a Rust
// one: operations looked up by name, JSON payloads parsed and written, the
// contract's `plugin-error` thrown as an ordinary error (a host service's
// refusal becomes one too), and the static manifest `capsule sign` embeds,
// built from the same declarations so it cannot drift from the code.
//
// It is one module over the bindings componentize-js generates from
// Capsule's WIT (world `plugin`); copy it next to your plugin
// (`capsule new NAME --lang js` does) and build with
//
//     componentize-js --wit wit --world-name plugin -o NAME.wasm app.js
//
// Host services are imported from `capsule:plugin/<service>@0.2.0`.
//
// A thrown value that is not a `PluginError` (a bug, a `TypeError`) is not
// caught: the call traps, and the host reports it as a `trap` carrying the
// error's text, as it reports a Rust panic.

/** The manifest format the host reads (`capsule-manifest` section). */
export const MANIFEST_FORMAT = 1;

/** Fails the call with the contract's `plugin-error` of kind `tag`. */
export class PluginError extends Error {
  constructor(tag, message) {
    super(message);
    this.tag = tag;
  }

  toWit() {
    return { tag: this.tag, val: this.message };
  }
}

/** The payload or metadata could not be understood (HTTP 400). */
export const invalidInput = (message) => new PluginError('invalid-input', message);
/** The plugin does not implement the requested operation (HTTP 404). */
export const unsupported = (message) => new PluginError('unsupported', message);
/** A host service the plugin needed was denied to it (HTTP 403). */
export const denied = (message) => new PluginError('denied', message);
/** Anything else that went wrong inside the plugin (HTTP 500). */
export const failed = (message) => new PluginError('failed', message);

// The cases of `service-error` and of `plugins.call-error` an import throws.
const IMPORT_ERRORS = [
  'denied', 'quota-exceeded', 'invalid', 'unavailable',
  'unknown-target', 'ambiguous', 'refused', 'plugin', 'failed',
];

/**
 * The error case a host import threw, or null: the bindings throw the
 * error case of a `result` (bare, or wrapped with it as `payload`).
 */
export function importError(thrown) {
  for (const value of [thrown, thrown && thrown.payload]) {
    if (value && typeof value === 'object' && IMPORT_ERRORS.includes(value.tag)) {
      return value;
    }
  }
  return null;
}

/**
 * The plugin error (as the export returns it) an import's error becomes:
 * `denied` stays `denied`; another plugin's own error passes through; a
 * quota, an invalid request, an unavailable service or a callee that was
 * stopped or never reached fails the call, naming which.
 */
export function fromImportError(error) {
  switch (error.tag) {
    case 'denied':
      return denied(error.val).toWit();
    case 'plugin':
      return error.val;
    case 'failed':
      if (error.val && typeof error.val === 'object') {
        return failed(`the callee stopped (${error.val.kind}): ${error.val.message}`).toWit();
      }
      return failed(String(error.val)).toWit();
    default:
      return failed(`${error.tag}: ${error.val}`).toWit();
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * One plugin: what it says about itself and the operations it offers.
 * `metrics` are declarations as the manifest writes them (`name`, `kind`,
 * `help`, `labels`); `config` is the JSON Schema of its configuration;
 * `requires` lists `{plugin}` or `{capability}` with a semver `version`.
 */
export class Plugin {
  constructor({ name, version, description = '', capabilities = [], metrics = [], config, requires = [] }) {
    Object.assign(this, { name, version, description, capabilities, metrics, config, requires });
    this.operations = new Map();
    this.eventHandler = null;
    this.initHandler = null;
  }

  /**
   * Declares operation `name`. `fn` gets the payload parsed as JSON and
   * returns a value written as JSON; with `raw: true` it gets the whole
   * request and returns a `Uint8Array` or a response. `input` and `output`
   * are JSON Schemas the manifest carries.
   */
  operation(name, about, fn, { raw = false, input, output } = {}) {
    if (this.operations.has(name)) throw new Error(`operation \`${name}\` is declared twice`);
    this.operations.set(name, { name, about, fn, raw, input, output });
    return this;
  }

  /** Handles events from subscribed topics (the default acknowledges). */
  onEvent(fn) {
    this.eventHandler = fn;
    return this;
  }

  /** Runs once on every fresh instance before it serves calls. */
  onInit(fn) {
    this.initHandler = fn;
    return this;
  }

  /** The static manifest as JSON, as `capsule sign` embeds it. */
  manifest() {
    const operations = [...this.operations.values()].map(({ name, about, input, output }) => {
      const entry = { name };
      if (about) entry.description = about;
      if (input !== undefined) entry.input = input;
      if (output !== undefined) entry.output = output;
      return entry;
    });
    const document = {
      format: MANIFEST_FORMAT,
      name: this.name,
      version: this.version,
      description: this.description,
      capabilities: this.capabilities,
      operations,
      requires: this.requires,
    };
    if (this.config !== undefined) document.config = this.config;
    if (this.metrics.length > 0) document.metrics = this.metrics;
    return JSON.stringify(document);
  }

  handle(request) {
    const operation = this.operations.get(request.operation);
    if (!operation) throw unsupported(`\`${this.name}\` has no operation \`${request.operation}\``).toWit();
    return guard(() => {
      if (operation.raw) {
        const result = operation.fn(request);
        return result instanceof Uint8Array ? { payload: result, metadata: [] } : result;
      }
      let input = null;
      if (request.payload.length > 0) {
        try {
          input = JSON.parse(decoder.decode(request.payload));
        } catch (err) {
          throw invalidInput(`the payload is not JSON: ${err.message}`);
        }
      }
      const output = operation.fn(input);
      return { payload: encoder.encode(JSON.stringify(output ?? null)), metadata: [] };
    });
  }

  /** The object to export as `handler` from the app module. */
  handler() {
    const plugin = this;
    return {
      describe() {
        const { name, version, description, capabilities } = plugin;
        return { name, version, description, capabilities };
      },
      manifest() {
        return plugin.manifest();
      },
      init() {
        if (plugin.initHandler) guard(() => plugin.initHandler());
      },
      handle(request) {
        return plugin.handle(request);
      },
      onEvent(event) {
        if (!plugin.eventHandler) return { tag: 'ack' };
        return guard(() => plugin.eventHandler(event));
      },
      shutdown() {},
    };
  }
}

// Runs `body`, turning a PluginError or an import's error (a host service's
// refusal, another plugin's failure) into the error case of the export's
// result; anything else is rethrown (and traps).
function guard(body) {
  try {
    return body();
  } catch (thrown) {
    if (thrown instanceof PluginError) throw thrown.toWit();
    const refusal = importError(thrown);
    if (refusal) throw fromImportError(refusal);
    throw thrown;
  }
}
