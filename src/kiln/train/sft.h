// Chat supervised fine-tuning data: conversations ({"messages": [...]} JSONL records) rendered
// with the model's own chat template (chat/chat_template.h) and tokenized as transformers'
// apply_chat_template(tokenize=True) does (the rendered text, no special tokens added), with
// the loss on the assistant turns only.
//
// Which characters are an assistant turn is found by rendering, so it works for any template:
// for assistant message i, the conversation up to i with the generation prompt (a prefix of
// the whole rendering) ends where the turn starts, after the assistant header. The turn ends
// after the message's content (found from there on, trimmed if the template trims it) and its
// end-of-turn marker: what the conversation up to and including i renders after the content,
// up to and including its first special token (<|eot_id|>, <|im_end|>, <end_of_turn>; the
// newline after it and any header a template always appends are not part of the turn). What a
// template puts between header and content is part of the turn (Qwen3's empty think block in
// a turn after the last user message). Tokens are mapped to characters by decoding
// them one by one (the decoded ids must give back the rendered text); a token carries loss
// when its characters overlap an assistant turn.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kiln/chat/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/data.h"

namespace kiln::train {

struct ChatExample {
  std::string text;                              // the whole rendering
  std::vector<std::pair<size_t, size_t>> spans;  // assistant turns: [begin, end) characters
  std::vector<int32_t> tokens;                   // text tokenized without added specials
  std::vector<uint8_t> loss;                     // [tokens.size()]: 1 on assistant-turn tokens
};

// Renders and masks one conversation. Throws Error (prefixed by `where`) when messages is not
// an array of objects with a role, has no assistant message, an assistant message has no
// string content, the template renders the conversation inconsistently, or the tokens do not
// decode back to the text.
ChatExample render_chat(const chat::ChatTemplate& chat_template, const Tokenizer& tokenizer,
                        const nlohmann::ordered_json& messages, const std::string& where);

// True when `path` is a .jsonl file whose first record has "messages".
bool is_chat_jsonl(const std::string& path);

// One window per conversation of the JSONL file `path` (cut to `window` tokens; a window whose
// assistant tokens were all cut is dropped). Throws Error naming the file and line.
std::vector<Window> read_chat_windows(const std::string& path,
                                      const chat::ChatTemplate& chat_template,
                                      const Tokenizer& tokenizer, int64_t window);

}  // namespace kiln::train
