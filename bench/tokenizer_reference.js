#!/usr/bin/env node
// HF tokenizers (Rust, through the @anush008/tokenizers Node binding) encoding the chunks that
// kiln_tokenizer_bench wrote, one encode call per chunk, one after another, exactly as the
// fixtures' bench_throughput.js measures its baseline.
//   NODE_PATH=<node_modules> node tokenizer_reference.js <tokenizer.json> <chunks.json>
// Prints one JSON line: load_s, encode_s, bytes, tokens, MB_per_s.
"use strict";
const fs = require("fs");
const { Tokenizer } = require("@anush008/tokenizers");

async function main() {
  const chunks = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
  const bytes = chunks.reduce((a, c) => a + Buffer.byteLength(c, "utf8"), 0);
  const t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(process.argv[2]);
  await tok.encode("warm up", null, { addSpecialTokens: false });
  const t1 = process.hrtime.bigint();
  let tokens = 0;
  for (const c of chunks) {
    const enc = await tok.encode(c, null, { addSpecialTokens: false });
    tokens += enc.getLength();
  }
  const t2 = process.hrtime.bigint();
  const encodeS = Number(t2 - t1) / 1e9;
  console.log(JSON.stringify({
    load_s: Number(t1 - t0) / 1e9, encode_s: encodeS, bytes, tokens,
    MB_per_s: bytes / 1e6 / encodeS,
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
