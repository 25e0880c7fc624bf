#!/usr/bin/env node
// The `baton` CLI (oclif). Commands live in dist/commands (built from src/commands).
const { execute } = require('@oclif/core');

execute({ dir: __dirname }).catch((err) => {
  // oclif prints its own errors; this catches failures to load at all.
  console.error(err && err.message ? err.message : err);
  process.exit(1);
});
