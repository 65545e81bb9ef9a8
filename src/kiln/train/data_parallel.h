// Data-parallel training over a Collective (collective.h): each rank computes the gradients
// of its share of a step's units (in `kiln train`, leaves: runs of windows computed as one
// batch), the ranks sum them, and AdamW updates the parameters, either replicated (every rank
// keeps the whole optimizer state) or, with ZeRO stage 1, sharded (reduce-scatter the
// gradients, each rank updates its shard of the parameters and keeps only that shard's
// moments, all-gather the parameters).
//
// Reproducibility: the result of a step does not depend on the number of ranks when it is a
// power of two (1, 2, 4, ... give bitwise the same parameters, optimizer state and loss; other
// counts agree to rounding) nor on ZeRO:
// - a step's gradient is a pairwise sum over its units in a fixed tree (sum(l, r) =
//   sum(l, m) + sum(m, r), m = l + (r - l) / 2); rank r of N computes the sum of its share
//   share(units, r, N) (collective.h) in that tree; for N a power of two the shares are the
//   tree's nodes at depth log2(N);
// - the ranks' sums are added in the same kind of tree over ranks (sum(a, b) = sum(a, m) +
//   sum(m, b), m = a + (b - a) / 2), which is then the unit tree's upper levels: bucket by
//   bucket, each rank receives every rank's part of its share of whole norm blocks
//   (all_to_all), adds them in that order, and without ZeRO the sums are all-gathered (a
//   reduce-scatter and all-gather whose association is ours, not the MPI library's);
// - each unit's gradient is computed alone (the callback fills the gradients with one unit's
//   gradient), then weighted, so it does not depend on which units share a rank;
// - the global gradient norm is a sum of fixed blocks of kNormBlock elements, each summed in
//   order in double, added in block order; ZeRO shards are whole blocks;
// - AdamW is element-wise (adamw_update()).
// The losses are summed in unit order the same way.
//
// Memory per rank: the flat gradient (every parameter's element, in ParameterMap order), one
// more such buffer per level of the unit tree beyond the first (ceil(log2(units per rank))),
// and the AdamW moments of the rank's shard (all of them without ZeRO).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/train/adamw.h"
#include "kiln/train/collective.h"
#include "kiln/train/train_model.h"

namespace kiln::train {

class DataParallelOptimizer {
 public:
  // Elements per block of the gradient norm (and the granularity of ZeRO shards).
  static constexpr int64_t kNormBlock = 1 << 14;

  // Trains `parameters` (f32, updated in place; every rank holds the same values) from the
  // gradients in `gradients` (same names and shapes). zero: 0 (replicated optimizer state) or
  // 1 (sharded). bucket_elements: the largest message of a collective call.
  DataParallelOptimizer(Collective& comm, ParameterMap& parameters, const ParameterMap& gradients,
                        AdamWOptions options, int zero, int64_t bucket_elements = int64_t{1} << 22);

  // The step's gradient over `units` units (weights.size() == units): for each unit u of this
  // rank's share, compute(u) must leave exactly unit u's gradient in `gradients` (zeroed
  // first) and return its loss; the gradient is weighted by weights[u]. After the call every
  // rank holds the weighted sum over all units (its shard of it with ZeRO). Returns
  // sum_u weights[u] * loss(u), the same on every rank.
  double accumulate(int64_t units, const std::vector<double>& weights,
                    const std::function<double(int64_t)>& compute);
  // One AdamW step at learning rate `lr` with the gradient of accumulate(); returns the
  // global gradient norm before clipping. Every rank ends with the same parameters.
  double step(double lr);

  // The units [first, last) of `units` this rank computes.
  std::pair<int64_t, int64_t> my_units(int64_t units) const;
  int64_t steps() const { return steps_; }
  // The whole optimizer state, gathered from the shards (collective: every rank calls it).
  AdamW::State state() const;
  // Restores a whole state (every rank passes the same); throws Error naming the parameter
  // whose moments are missing or misshapen.
  void set_state(const AdamW::State& state);
  // [first, last) elements of the flat parameter vector this rank updates.
  std::pair<int64_t, int64_t> shard() const { return {shard_first_, shard_last_}; }
  int64_t elements() const { return total_; }

 private:
  struct Entry {
    std::string name;
    float* parameter = nullptr;
    const float* gradient = nullptr;
    int64_t offset = 0, size = 0;
    bool decays = false;
  };
  // The flat range of rank r's shard.
  std::pair<int64_t, int64_t> shard_of(int rank) const;
  // Rank r's share of whole norm blocks (ZeRO's shard; the part of the gradient sum it makes).
  std::pair<int64_t, int64_t> block_share(int rank) const;
  // counts[r] = |[first, last) ∩ block_share(r)| (blocks) or |[first, last) ∩ shard r|.
  std::vector<int64_t> bucket_counts(int64_t first, int64_t last, bool blocks) const;
  // The fixed pairwise sum over ranks [a, b) of parts_'s segments of n elements into out.
  void sum_ranks(int a, int b, size_t depth, int64_t n, float* out);
  // The pairwise sum of units [l, r) into out (total_ floats); depth picks scratch buffers.
  void sum_units(int64_t l, int64_t r, size_t depth, const std::vector<double>& weights,
                 const std::function<double(int64_t)>& compute, std::vector<double>& losses,
                 float* out);
  // The gradient of this rank's shard (ZeRO: the reduce-scattered shard; else all of it).
  const float* shard_gradient() const;
  void gather(const std::vector<float>& shard, std::vector<float>& full) const;

  Collective& comm_;
  AdamWOptions options_;
  int zero_ = 0;
  int64_t bucket_ = 0, total_ = 0, shard_first_ = 0, shard_last_ = 0, steps_ = 0;
  std::vector<Entry> entries_;         // in ParameterMap order
  std::vector<float> gradient_;        // [total_]: the step's gradient (also the gather buffer)
  std::vector<float> gradient_shard_;  // [shard]: ZeRO's reduce-scattered gradient
  std::vector<std::vector<float>> scratch_;       // [depth][total_]: the unit tree's right halves
  std::vector<float> parts_;                      // [ranks][part]: a bucket's parts of all ranks
  std::vector<std::vector<float>> rank_scratch_;  // [depth][part]: the rank tree's right halves
  std::vector<float> m_, v_;                      // [shard]: AdamW's moments of this rank's shard
};

// sum over u in [0, units) of f(u), each f(u) computed by the rank whose share holds u, added
// in order of u in double (the same value on every rank and for every rank count).
double distributed_sum(Collective& comm, int64_t units, const std::function<double(int64_t)>& f);

}  // namespace kiln::train
