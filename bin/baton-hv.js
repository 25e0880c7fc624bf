#!/usr/bin/env node
// baton-hv: one hypervisor process per running domain (see src/hypervisor/main.ts).
require('../dist/hypervisor/main.js').main(process.argv.slice(2));
