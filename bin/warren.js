#!/usr/bin/env node
// Runs the TypeScript CLI through tsx so that `npm link`/`npx warren` work without a build step.
import { register } from 'node:module';
import { pathToFileURL } from 'node:url';

register('tsx/esm', pathToFileURL('./'));
await import(new URL('../src/cli/main.ts', import.meta.url).href);
