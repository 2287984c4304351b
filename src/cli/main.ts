#!/usr/bin/env node
// The `sparsevila` executable: runs the command line (program.ts) and exits with its code.
import { main } from './program.js';

process.exitCode = await main(process.argv.slice(2));
