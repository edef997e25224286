#!/usr/bin/env node
// Validate glTF/GLB files with the Khronos glTF validator (npm package gltf-validator).
// Usage: node scripts/gltf_validate.cjs FILE.glb [...]
// The package is looked up in $GLTF_VALIDATOR_DIR/node_modules, then build/tools/gltf-validator/node_modules
// (where `make test-dcc` installs it), then Node's usual places. Prints one JSON object per file
// ({"file", "validator", "errors", "warnings", "infos", "hints", "messages": [first 20 issues]}) and
// exits 1 when any file has an error, 2 when the validator cannot be loaded or a file cannot be read.
"use strict";
const fs = require("fs");
const path = require("path");

function loadValidator() {
  const dirs = [];
  if (process.env.GLTF_VALIDATOR_DIR) dirs.push(path.join(process.env.GLTF_VALIDATOR_DIR, "node_modules"));
  dirs.push(path.join(__dirname, "..", "build", "tools", "gltf-validator", "node_modules"));
  for (const d of dirs) {
    try { return require(require.resolve("gltf-validator", { paths: [d] })); } catch (e) { /* next */ }
  }
  return require("gltf-validator");
}

async function main() {
  let validator;
  try { validator = loadValidator(); } catch (e) {
    console.error("gltf-validator not found (npm install gltf-validator): " + e.message);
    process.exit(2);
  }
  let failed = false;
  for (const file of process.argv.slice(2)) {
    let bytes;
    try { bytes = new Uint8Array(fs.readFileSync(file)); } catch (e) {
      console.error(file + ": " + e.message);
      process.exit(2);
    }
    const report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 1000 });
    const i = report.issues;
    console.log(JSON.stringify({
      file, validator: report.validatorVersion, errors: i.numErrors, warnings: i.numWarnings,
      infos: i.numInfos, hints: i.numHints, messages: i.messages.slice(0, 20),
    }));
    if (i.numErrors > 0) failed = true;
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => { console.error(String(e)); process.exit(2); });
