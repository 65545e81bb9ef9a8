#include "kiln/verify/quality.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kiln/core/error.h"
#include "kiln/layers/workspace.h"

namespace kiln {
namespace {

// log softmax of one row of logits, in double.   logits: [vocab]; out: [vocab]
void log_softmax(const float* logits, int64_t vocab, std::vector<double>& out) {
  out.resize(static_cast<size_t>(vocab));
  double top = logits[0];
  for (int64_t v = 1; v < vocab; ++v) top = std::max(top, static_cast<double>(logits[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - top);
  const double log_sum = top + std::log(sum);
  for (int64_t v = 0; v < vocab; ++v) out[v] = logits[v] - log_sum;
}

int64_t argmax(const float* logits, int64_t vocab) {
  return std::max_element(logits, logits + vocab) - logits;
}

}  // namespace

QualityReport compare_models(const Model& model, const Model& base,
                             const std::vector<train::Window>& windows) {
  const int64_t vocab = model.spec().vocab_size;
  check(vocab == base.spec().vocab_size, "verify --against: the models' vocabularies differ (" +
                                             std::to_string(vocab) + " and " +
                                             std::to_string(base.spec().vocab_size) + " tokens)");
  check(!windows.empty(), "verify --against: no tokens to compare on");
  QualityReport report;
  std::vector<double> kls, log_p, log_q;
  double loss = 0.0, base_loss = 0.0;
  int64_t agree = 0;
  Workspace workspace, base_workspace;
  for (const train::Window& w : windows) {
    const auto T = static_cast<int64_t>(w.tokens.size());
    if (T == 0) continue;
    KvCache cache = model.make_cache(1, T), base_cache = base.make_cache(1, T);
    const float* logits = model.forward(w.tokens.data(), 1, T, cache, workspace);
    const float* base_logits = base.forward(w.tokens.data(), 1, T, base_cache, base_workspace);
    for (int64_t t = 0; t < T; ++t) {
      const float* q_row = logits + t * vocab;       // [vocab]
      const float* p_row = base_logits + t * vocab;  // [vocab]
      log_softmax(p_row, vocab, log_p);
      log_softmax(q_row, vocab, log_q);
      double kl = 0.0;
      for (int64_t v = 0; v < vocab; ++v) kl += std::exp(log_p[v]) * (log_p[v] - log_q[v]);
      kls.push_back(std::max(0.0, kl));
      agree += argmax(q_row, vocab) == argmax(p_row, vocab);
      if (t + 1 < T && w.loss[t + 1]) {
        loss -= log_q[w.tokens[t + 1]];
        base_loss -= log_p[w.tokens[t + 1]];
        ++report.targets;
      }
    }
  }
  check(!kls.empty(), "verify --against: no tokens to compare on");
  report.positions = static_cast<int64_t>(kls.size());
  double sum = 0.0;
  for (double kl : kls) sum += kl;
  report.kl_mean = sum / static_cast<double>(kls.size());
  std::sort(kls.begin(), kls.end());
  report.kl_max = kls.back();
  const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(kls.size())));
  report.kl_p99 = kls[std::max<size_t>(rank, 1) - 1];
  report.top1_agreement = static_cast<double>(agree) / static_cast<double>(kls.size());
  if (report.targets > 0) {
    report.perplexity = std::exp(loss / static_cast<double>(report.targets));
    report.base_perplexity = std::exp(base_loss / static_cast<double>(report.targets));
  }
  return report;
}

}  // namespace kiln
