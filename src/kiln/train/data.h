// Training and evaluation data: text files or folders (documents joined with the model's EOS
// and packed into windows of T tokens) and JSONL files ({"text"}, or {"prompt", "completion"}
// with the loss on the completion only, one window per record).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/tokenizer/tokenizer.h"

namespace kiln::train {

struct Window {
  std::vector<int32_t> tokens;  // [<= T]
  std::vector<uint8_t> loss;    // [tokens.size()]: 1 where the token is a target
  // Packed windows (pack_windows()): the document id of each token; empty: one document.
  std::vector<int32_t> segment = {};
};

// Packs windows, in order, into windows of at most `window` tokens: each window is appended to
// the current packed one while it fits (else it starts a new one), with its own segment id.
// Every window's first token must carry no loss (readers guarantee it), so no document is
// predicted from another. TrainModel's `segments` keeps attention within each document.
std::vector<Window> pack_windows(const std::vector<Window>& windows, int64_t window);

// Reads `path` (a .jsonl file, another file read as text, or a folder of such files in name
// order) into windows of at most `window` tokens. Text documents are encoded with the
// tokenizer's special tokens (BOS) and separated by `eos` (when >= 0), then cut into
// consecutive windows; a JSONL prompt/completion record is one window (cut to `window`).
// Throws Error naming the file (and line) for a missing or unreadable file, invalid UTF-8,
// malformed JSON or a record without "text" or "prompt"/"completion", and for data that gives
// no window with a target.
std::vector<Window> read_windows(const std::string& path, const Tokenizer& tokenizer,
                                 int64_t window, int32_t eos);

}  // namespace kiln::train
