#!/usr/bin/env node
// Builds a drover agent (or toolbox) written in TypeScript or JavaScript into a WASI 0.2
// component: bundles the module and what it imports into one ES module (esbuild; TypeScript
// types are stripped, not checked), then embeds it in the SpiderMonkey-based engine of
// componentize-js against the `agent` (or `toolbox`) world of `wit/agent.wit`.
//
//   drover-build-js <agent.ts|agent.js> [-o <name>.wasm] [--world agent|toolbox] [--wit <dir>]
//
// The component is written beside its final name and renamed into place, so a host watching
// the agents directory never loads half a file.

import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));

const usage = 'usage: drover-build-js <agent.ts|agent.js> [-o <name>.wasm] [--world agent|toolbox] [--wit <dir>]';

function fail(message) {
  console.error(`drover-build-js: ${message}`);
  process.exit(1);
}

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o' },
      world: { type: 'string', default: 'agent' },
      wit: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  fail(`${e.message}\n${usage}`);
}
if (args.values.help) {
  console.log(usage);
  process.exit(0);
}
if (args.positionals.length !== 1) {
  fail(usage);
}
const { world } = args.values;
if (world !== 'agent' && world !== 'toolbox') {
  fail(`--world is agent or toolbox, not ${world}`);
}
const entry = resolve(args.positionals[0]);
const out = resolve(args.values.out ?? `${basename(entry, extname(entry))}.wasm`);
// The WIT package: beside this script when the SDK is installed as a package, else the
// repository's `wit/`.
const wit = resolve(args.values.wit ?? join(here, '..', '..', 'wit'));

let esbuild;
let componentize;
try {
  esbuild = await import('esbuild');
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
} catch {
  fail(`the SDK's build tools are not installed: run \`npm ci\` in ${here}`);
}

const work = await mkdtemp(join(tmpdir(), 'drover-build-js-'));
try {
  const bundle = join(work, 'agent.js');
  try {
    await esbuild.build({
      entryPoints: [entry],
      outfile: bundle,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      // The host's interfaces (and WASI's) are imports of the component, not modules.
      external: ['drover:*', 'wasi:*'],
      alias: { 'drover-sdk': here },
      logLevel: 'silent',
    });
  } catch (e) {
    const errors = (e.errors ?? []).map((m) =>
      m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ${m.text}` : m.text,
    );
    fail(errors.length > 0 ? errors.join('\n') : e.message);
  }
  let component;
  try {
    ({ component } = await componentize({
      sourcePath: bundle,
      witPath: wit,
      worldName: world,
      // Agents do not serve HTTP; outbound `fetch` stays available.
      disableFeatures: ['fetch-event'],
    }));
  } catch (e) {
    fail(`componentize-js could not build ${entry}: ${e.message ?? e}`);
  }
  const partial = join(dirname(out), `.${basename(out)}.tmp`);
  await writeFile(partial, component);
  await rename(partial, out);
  console.log(`built ${out} (${(component.length / (1 << 20)).toFixed(1)} MiB)`);
} finally {
  await rm(work, { recursive: true, force: true });
}
