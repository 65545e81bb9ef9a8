// The chat page `kiln serve` answers at `/`: one static HTML page (no external assets) that
// streams replies from /v1/chat/completions, with a stop button, the model's name and the
// reply's tokens/s. `/?prompt=TEXT` sends TEXT on load (links, and the headless-browser test).
#pragma once

namespace kiln::serve {

extern const char* const kChatPage;

}  // namespace kiln::serve
