#include "kiln/train/data_parallel.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"

namespace kiln::train {

DataParallelOptimizer::DataParallelOptimizer(Collective& comm, ParameterMap& parameters,
                                             const ParameterMap& gradients, AdamWOptions options,
                                             int zero, int64_t bucket_elements)
    : comm_(comm), options_(options), zero_(zero), bucket_(bucket_elements) {
  check(zero == 0 || zero == 1, "--zero " + std::to_string(zero) + ": stage 0 or 1");
  check(bucket_elements > 0, "data parallel: the bucket size must be positive");
  for (auto& [name, p] : parameters) {
    const auto it = gradients.find(name);
    check(it != gradients.end(), "data parallel: no gradient for parameter '" + name + "'");
    check(it->second.shape() == p.shape() && it->second.dtype() == DType::F32 &&
              p.dtype() == DType::F32,
          "data parallel: the gradient of '" + name + "' is not an f32 " + p.shape_string());
    entries_.push_back({name, p.mutable_data<float>(), it->second.data<float>(), total_, p.numel(),
                        decays(name, p)});
    total_ += p.numel();
  }
  std::tie(shard_first_, shard_last_) = shard_of(comm_.rank());
  gradient_.resize(static_cast<size_t>(total_));
  if (zero_ == 1) gradient_shard_.resize(static_cast<size_t>(shard_last_ - shard_first_));
  m_.assign(static_cast<size_t>(shard_last_ - shard_first_), 0.0f);
  v_.assign(m_.size(), 0.0f);
}

std::pair<int64_t, int64_t> DataParallelOptimizer::shard_of(int rank) const {
  if (zero_ == 0) return {0, total_};
  return block_share(rank);
}

std::pair<int64_t, int64_t> DataParallelOptimizer::block_share(int rank) const {
  const int64_t blocks = (total_ + kNormBlock - 1) / kNormBlock;
  const auto [first, last] = share(blocks, rank, comm_.size());
  return {std::min(total_, first * kNormBlock), std::min(total_, last * kNormBlock)};
}

std::vector<int64_t> DataParallelOptimizer::bucket_counts(int64_t first, int64_t last,
                                                          bool blocks) const {
  std::vector<int64_t> counts(static_cast<size_t>(comm_.size()));
  for (int r = 0; r < comm_.size(); ++r) {
    const auto [s, e] = blocks ? block_share(r) : shard_of(r);
    counts[static_cast<size_t>(r)] = std::max<int64_t>(0, std::min(last, e) - std::max(first, s));
  }
  return counts;
}

std::pair<int64_t, int64_t> DataParallelOptimizer::my_units(int64_t units) const {
  return share(units, comm_.rank(), comm_.size());
}

void DataParallelOptimizer::sum_units(int64_t l, int64_t r, size_t depth,
                                      const std::vector<double>& weights,
                                      const std::function<double(int64_t)>& compute,
                                      std::vector<double>& losses, float* out) {
  if (r - l == 1) {
    losses[static_cast<size_t>(l)] = compute(l) * weights[static_cast<size_t>(l)];
    const auto w = static_cast<float>(weights[static_cast<size_t>(l)]);
    for (const Entry& e : entries_) {
      float* o = out + e.offset;
      const float* g = e.gradient;
#pragma omp parallel for schedule(static) if (e.size >= 65536)
      for (int64_t i = 0; i < e.size; ++i) o[i] = g[i] * w;
    }
    return;
  }
  const int64_t m = l + (r - l) / 2;
  sum_units(l, m, depth + 1, weights, compute, losses, out);
  // (scratch_ may grow in the call below: keep the buffer's address, not a reference to it.)
  if (scratch_.size() <= depth) scratch_.resize(depth + 1);
  scratch_[depth].resize(static_cast<size_t>(total_));
  float* right = scratch_[depth].data();
  sum_units(m, r, depth + 1, weights, compute, losses, right);
  const float* add = right;
#pragma omp parallel for schedule(static) if (total_ >= 65536)
  for (int64_t i = 0; i < total_; ++i) out[i] += add[i];
}

double DataParallelOptimizer::accumulate(int64_t units, const std::vector<double>& weights,
                                         const std::function<double(int64_t)>& compute) {
  check(static_cast<int64_t>(weights.size()) == units, "data parallel: one weight per unit");
  // -0.0 is the additive identity of IEEE sums (-0 + x == x for every x, +0 and -0 included).
  std::vector<double> losses(static_cast<size_t>(units), -0.0);
  const auto [first, last] = my_units(units);
  if (first == last)
    std::fill(gradient_.begin(), gradient_.end(), -0.0f);
  else
    sum_units(first, last, 0, weights, compute, losses, gradient_.data());
  // The ranks' sums, bucket by bucket: each rank receives every rank's part of its block
  // share of the bucket (all-to-all), adds them in the fixed tree over ranks, and (without
  // ZeRO) the sums are all-gathered: a reduce-scatter and all-gather whose association does
  // not depend on the MPI library.
  if (comm_.size() == 1) {
    if (zero_ == 1) std::copy(gradient_.begin(), gradient_.end(), gradient_shard_.begin());
  } else {
    const auto n = static_cast<size_t>(comm_.size());
    const auto [block_first, block_last] = block_share(comm_.rank());
    std::vector<float> summed;
    for (int64_t start = 0; start < total_; start += bucket_) {
      const int64_t end = std::min(total_, start + bucket_);
      const std::vector<int64_t> counts = bucket_counts(start, end, true);
      const int64_t mine = counts[static_cast<size_t>(comm_.rank())];
      parts_.resize(n * static_cast<size_t>(mine));
      comm_.all_to_all(gradient_.data() + start, counts, parts_.data(),
                       std::vector<int64_t>(n, mine));
      const int64_t part_first = std::clamp(start, block_first, block_last);
      summed.resize(static_cast<size_t>(mine));
      float* out =
          zero_ == 1 ? gradient_shard_.data() + (part_first - shard_first_) : summed.data();
      sum_ranks(0, comm_.size(), 0, mine, out);
      if (zero_ == 0) comm_.all_gather(summed.data(), gradient_.data() + start, counts);
    }
  }
  comm_.all_reduce(losses.data(), units);
  double loss = 0.0;
  for (double l : losses) loss += l;
  return loss;
}

void DataParallelOptimizer::sum_ranks(int a, int b, size_t depth, int64_t n, float* out) {
  if (b - a == 1) {
    const float* part = parts_.data() + static_cast<size_t>(a) * static_cast<size_t>(n);
    std::copy(part, part + n, out);
    return;
  }
  const int m = a + (b - a) / 2;
  sum_ranks(a, m, depth + 1, n, out);
  if (rank_scratch_.size() <= depth) rank_scratch_.resize(depth + 1);
  rank_scratch_[depth].resize(static_cast<size_t>(n));
  float* right = rank_scratch_[depth].data();
  sum_ranks(m, b, depth + 1, n, right);
  for (int64_t i = 0; i < n; ++i) out[i] += right[i];
}

const float* DataParallelOptimizer::shard_gradient() const {
  return zero_ == 1 ? gradient_shard_.data() : gradient_.data() + shard_first_;
}

double DataParallelOptimizer::step(double lr) {
  options_.lr = lr;
  // The global norm from fixed blocks: this rank's blocks, the others' from the collective.
  const int64_t blocks = (total_ + kNormBlock - 1) / kNormBlock;
  std::vector<double> block_sums(static_cast<size_t>(blocks), -0.0);
  const float* g = shard_gradient();
  const int64_t first_block = shard_first_ / kNormBlock;
  const int64_t my_blocks = (shard_last_ - shard_first_ + kNormBlock - 1) / kNormBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < my_blocks; ++b) {
    const int64_t s = b * kNormBlock, e = std::min(shard_last_ - shard_first_, s + kNormBlock);
    double sum = 0.0;
    for (int64_t i = s; i < e; ++i) sum += static_cast<double>(g[i]) * g[i];
    block_sums[static_cast<size_t>(first_block + b)] = sum;
  }
  if (zero_ == 1) comm_.all_reduce(block_sums.data(), blocks);
  double squares = 0.0;
  for (double s : block_sums) squares += s;
  const double norm = std::sqrt(squares);
  const float clip = clip_factor(options_.clip_norm, norm);
  ++steps_;
  // AdamW on this rank's shard, tensor piece by tensor piece.
  for (const Entry& e : entries_) {
    const int64_t s = std::max(e.offset, shard_first_),
                  t = std::min(e.offset + e.size, shard_last_);
    if (s >= t) continue;
    const int64_t k = s - shard_first_;
    adamw_update(options_, steps_, clip, e.decays, e.parameter + (s - e.offset), g + k,
                 m_.data() + k, v_.data() + k, t - s);
  }
  if (zero_ == 1) {
    // Every rank's updated shard to every rank (the gradient buffer is free now).
    std::vector<float> mine(static_cast<size_t>(shard_last_ - shard_first_));
    for (const Entry& e : entries_) {
      const int64_t s = std::max(e.offset, shard_first_),
                    t = std::min(e.offset + e.size, shard_last_);
      if (s < t)
        std::copy(e.parameter + (s - e.offset), e.parameter + (t - e.offset),
                  mine.begin() + (s - shard_first_));
    }
    gather(mine, gradient_);
    for (const Entry& e : entries_)
      std::copy(gradient_.begin() + e.offset, gradient_.begin() + e.offset + e.size, e.parameter);
  }
  return norm;
}

void DataParallelOptimizer::gather(const std::vector<float>& shard,
                                   std::vector<float>& full) const {
  full.resize(static_cast<size_t>(total_));
  if (zero_ == 0) {
    std::copy(shard.begin(), shard.end(), full.begin());
    return;
  }
  for (int64_t start = 0; start < total_; start += bucket_) {
    const int64_t end = std::min(total_, start + bucket_);
    const int64_t from = std::clamp(start, shard_first_, shard_last_) - shard_first_;
    comm_.all_gather(shard.data() + from, full.data() + start, bucket_counts(start, end, false));
  }
}

AdamW::State DataParallelOptimizer::state() const {
  std::vector<float> m, v;
  gather(m_, m);
  gather(v_, v);
  AdamW::State state;
  state.steps = steps_;
  for (const Entry& e : entries_) {
    state.m[e.name].assign(m.begin() + e.offset, m.begin() + e.offset + e.size);
    state.v[e.name].assign(v.begin() + e.offset, v.begin() + e.offset + e.size);
  }
  return state;
}

void DataParallelOptimizer::set_state(const AdamW::State& state) {
  for (const Entry& e : entries_) {
    const auto m = state.m.find(e.name), v = state.v.find(e.name);
    check(m != state.m.end() && v != state.v.end() &&
              static_cast<int64_t>(m->second.size()) == e.size &&
              static_cast<int64_t>(v->second.size()) == e.size,
          "optimizer state: the moments of '" + e.name + "' are missing or misshapen");
    const int64_t s = std::max(e.offset, shard_first_),
                  t = std::min(e.offset + e.size, shard_last_);
    if (s >= t) continue;
    std::copy(m->second.begin() + (s - e.offset), m->second.begin() + (t - e.offset),
              m_.begin() + (s - shard_first_));
    std::copy(v->second.begin() + (s - e.offset), v->second.begin() + (t - e.offset),
              v_.begin() + (s - shard_first_));
  }
  steps_ = state.steps;
}

double distributed_sum(Collective& comm, int64_t units, const std::function<double(int64_t)>& f) {
  std::vector<double> values(static_cast<size_t>(units), -0.0);
  const auto [first, last] = share(units, comm.rank(), comm.size());
  for (int64_t u = first; u < last; ++u) values[static_cast<size_t>(u)] = f(u);
  comm.all_reduce(values.data(), units);
  double sum = 0.0;
  for (double v : values) sum += v;
  return sum;
}

}  // namespace kiln::train
