// `kiln train [MODEL] --data PATH -o OUT [--steps N] [--batch B] [--seq T] [--lr LR]
// [--warmup N] [--schedule cosine|linear|constant] [--weight-decay W] [--clip C] [--seed S]
// [--eval-every N] [--val-fraction F] [--zero 0|1] [--chat-template PATH] [--pack]
// [--weights-dtype f32|bf16] [--compute-dtype f32|bf16] [--save-dtype f32|bf16|f16|source]
// [--lora-rank R --lora-alpha A --lora-dropout P --lora-targets q,k,v,o,gate,up,down] [--json]`:
// fine-tunes a model on a dataset (train/data.h; chat JSONL, train/sft.h) with AdamW and writes a
// HuggingFace folder (config, tokenizer files and the trained weights, f32 or --save-dtype, as
// the checkpoint's own tensors: the family's mapping inverted, train/hf_export.h) plus
// metrics.jsonl; with --lora-rank, the base is frozen and OUT
// is an adapter folder (train/lora.h). Under `mpirun -np N` the ranks share each step's windows
// (train/data_parallel.h); rank 0 writes.
#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/language_model.h"
#include "kiln/models/loader.h"
#include "kiln/train/adamw.h"
#include "kiln/train/backward.h"
#include "kiln/train/collective.h"
#include "kiln/train/data.h"
#include "kiln/train/data_parallel.h"
#include "kiln/train/hf_export.h"
#include "kiln/train/lora.h"
#include "kiln/train/sft.h"
#include "kiln/train/train_model.h"

namespace kiln::cli {
namespace {
namespace fs = std::filesystem;

// The windows of `ids` as one batch [B, T], padded at the end with `pad` (not predicted);
// `segments` (when given): the packed windows' document ids, -1 on padding.
void make_batch(const std::vector<train::Window>& windows, const std::vector<size_t>& ids,
                int64_t T, int32_t pad, std::vector<int32_t>& tokens, std::vector<int32_t>& targets,
                std::vector<int32_t>* segments = nullptr) {
  const auto B = static_cast<int64_t>(ids.size());
  tokens.assign(static_cast<size_t>(B * T), pad);
  std::vector<uint8_t> mask(static_cast<size_t>(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    const train::Window& w = windows[ids[b]];
    std::copy(w.tokens.begin(), w.tokens.end(), tokens.begin() + b * T);
    std::copy(w.loss.begin(), w.loss.end(), mask.begin() + b * T);
  }
  if (segments) {
    segments->assign(static_cast<size_t>(B * T), -1);
    for (int64_t b = 0; b < B; ++b) {
      const train::Window& w = windows[ids[b]];
      if (w.segment.empty())
        std::fill_n(segments->begin() + b * T, w.tokens.size(), 0);
      else
        std::copy(w.segment.begin(), w.segment.end(), segments->begin() + b * T);
    }
  }
  targets = train::next_token_targets(tokens.data(), mask.data(), B, T);
}

class TrainCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--data", data_, "a text file, a folder of files, or JSONL")->required();
    app.add_option("-o,--output", output_, "the HuggingFace folder to write")->required();
    app.add_option("--steps", steps_, "optimizer steps (default 100)")
        ->check(CLI::Range(1, 1 << 30));
    app.add_option("--batch", batch_, "windows per step (default 4)")->check(CLI::Range(1, 4096));
    app.add_option("--seq", seq_, "tokens per window (default 128)")->check(CLI::Range(2, 1 << 20));
    app.add_option("--lr", lr_, "peak learning rate (default 3e-4)")->check(finite_positive());
    app.add_option("--grad-accum", grad_accum_,
                   "micro-batches of --batch windows per step, gradients averaged (default 1)")
        ->check(CLI::Range(1, 1 << 16));
    app.add_option("--leaf-windows", leaf_windows_,
                   "windows computed together as one batch (a leaf of the gradient sum; "
                   "default: all --batch windows of a micro-batch; under mpirun, ranks share "
                   "whole leaves)")
        ->check(CLI::Range(1, 4096));
    app.add_option("--warmup", warmup_, "linear warmup steps (default 0)")
        ->check(CLI::Range(0, 1 << 30));
    app.add_option("--schedule", schedule_, "after warmup: cosine (default), linear or constant")
        ->check(CLI::IsMember({"cosine", "linear", "constant"}));
    app.add_option("--weight-decay", weight_decay_, "AdamW weight decay (default 0.0)")
        ->check(finite_non_negative());
    app.add_option("--clip", clip_, "global gradient-norm clip (default 1.0, 0 = off)")
        ->check(finite_non_negative());
    app.add_option("--seed", seed_, "shuffling seed (default 0)");
    app.add_option("--eval-every", eval_every_,
                   "validation loss every N steps (default: at the end)")
        ->check(CLI::Range(0, 1 << 30));
    app.add_option("--val-fraction", val_fraction_, "windows held out for validation (default 0.1)")
        ->check(CLI::Range(0.0, 0.9));
    app.add_option("--save-every", save_every_,
                   "write a resumable checkpoint to OUT.checkpoints/step-N every N steps")
        ->check(CLI::Range(0, 1 << 30));
    app.add_option("--resume", resume_,
                   "continue from a checkpoint folder (OUT.checkpoints/step-N) of the same run")
        ->check(CLI::ExistingDirectory);
    app.add_option("--zero", zero_,
                   "under mpirun: 1 shards AdamW's state across the ranks (ZeRO-1; default 0)")
        ->check(CLI::Range(0, 1));
    app.add_flag("--recompute", recompute_,
                 "recompute each layer's activations in the backward pass (less memory, about "
                 "a third more compute; the same result)");
    app.add_flag("--json", json_, "print a JSON summary at the end");
    app.add_option("--save-dtype", save_dtype_,
                   "dtype of the exported weights: f32, bf16, f16, or source (each tensor's dtype "
                   "in the model read); default: f32, bf16 with --weights-dtype bf16")
        ->check(CLI::IsMember({"f32", "bf16", "f16", "source"}));
    app.add_option("--weights-dtype", weights_dtype_,
                   "f32 (default), or bf16: the passes read the weights rounded to bf16 from f32 "
                   "master copies that AdamW updates")
        ->check(CLI::IsMember({"f32", "bf16"}));
    app.add_option("--compute-dtype", compute_dtype_,
                   "f32 (default), or bf16: the linear layers' products (forward, and the "
                   "backward's dx and dw) take operands rounded to bf16 and sum in f32 "
                   "(vdpbf16ps on AVX512_BF16); weights, activations, gradients, norms, "
                   "attention, loss and AdamW stay f32")
        ->check(CLI::IsMember({"f32", "bf16"}));
    app.add_option("--chat-template", chat_template_,
                   "chat data: the template to render {\"messages\"} records with (default: "
                   "the model's own)")
        ->check(CLI::ExistingPath);
    app.add_flag("--pack", pack_,
                 "pack several short windows (prompt/completion, chat) into each row; attention "
                 "stays within each");
    app.add_option("--lora-rank", lora_rank_,
                   "train LoRA adapters of this rank on frozen weights (default 0: all weights)")
        ->check(CLI::Range(0, 1 << 16));
    app.add_option("--lora-alpha", lora_alpha_, "LoRA scale numerator: alpha / rank (default 16)")
        ->check(finite_positive());
    app.add_option("--lora-dropout", lora_dropout_, "LoRA input dropout (default 0)")
        ->check(CLI::Range(0.0, 0.99));
    app.add_option("--lora-targets", lora_targets_,
                   "modules with adapters, of q,k,v,o,gate,up,down (default q,k,v,o)");
  }

  // Writes into OUT.partial and renames it at the end: a failed run leaves nothing.
  // Under mpirun only rank 0 touches the output; a rank that fails ends the run.
  int run() override {
    comm_ = train::make_collective();
    // Every step allocates and frees the same activation buffers: keep freed memory in the
    // heap (no mmap per large buffer, no trimming) so that a step reuses the pages of the last
    // one instead of faulting in and zeroing fresh ones. (Before the single-process return:
    // it once came after it, and single-process runs spent a fifth of a ~110M step zeroing
    // fresh pages.)
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (comm_->size() == 1) return run_rank();
    // The ranks on one machine share its cores (unless OMP_NUM_THREADS says otherwise).
    if (std::getenv("OMP_NUM_THREADS") == nullptr)
      omp_set_num_threads(std::max(1, omp_get_num_procs() / comm_->local_size()));
    try {
      return run_rank();
    } catch (const std::exception& e) {
      // Rank 0 reports (and has removed OUT.partial); the others give it a moment to.
      if (comm_->rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
      std::fflush(stdout);
      std::fprintf(stderr, "\nkiln: error (rank %d of %d): %s\n", comm_->rank(), comm_->size(),
                   e.what());
      comm_->abort(1);
    }
    return 1;  // not reached: abort() ends the process
  }

 private:
  int run_rank() {
    if (model_path_.empty()) model_path_ = default_model_path();
    final_ = output_;
    output_ += ".partial";
    if (!writer()) return train();
    check(!fs::exists(final_), final_ + ": already exists (choose a new output folder)");
    fs::remove_all(output_);
    try {
      const int code = train();
      fs::rename(output_, final_);
      return code;
    } catch (...) {
      std::error_code ec;
      fs::remove_all(output_, ec);
      throw;
    }
  }

  // Rank 0 writes the output, checkpoints, metrics and progress.
  bool writer() const { return comm_->rank() == 0; }

  int train() {
    const LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    check(loaded.family != nullptr,
          model_path_ +
              ": train from a HuggingFace folder (a Kiln checkpoint has no HF names to "
              "export to)");
    check(seq_ <= loaded.spec.max_position_embeddings,
          "--seq " + std::to_string(seq_) + " exceeds the model's context of " +
              std::to_string(loaded.spec.max_position_embeddings));
    // What it cannot train, then the export plan, so that either fails before training.
    train::check_trainable(loaded.spec);
    const std::optional<DType> save_dtype = parse_save_dtype();
    std::map<std::string, std::string> hf_names;  // LoRA: the adapted modules' HF names
    if (lora_rank_ > 0)
      hf_names = export_names(loaded);
    else
      train::check_hf_exportable(loaded);
    train::TrainModel model(loaded.spec, loaded.weights, lora_rank_ > 0);
    std::unique_ptr<train::Lora> lora;  // LoRA: the adapters are the model's only parameters
    if (lora_rank_ > 0)
      lora = std::make_unique<train::Lora>(
          model, train::LoraOptions{lora_rank_, lora_alpha_, lora_dropout_,
                                    train::parse_lora_targets(lora_targets_), seed_});
    model.set_recompute(recompute_);
    // --compute-dtype for this run (restored after it: tests run commands in one process)
    const train::ComputeDtypeScope compute_dtype(compute_dtype_ == "bf16" ? DType::BF16
                                                                          : DType::F32);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    const int32_t eos =
        loaded.spec.eos_token_ids.empty() ? -1 : static_cast<int32_t>(loaded.spec.eos_token_ids[0]);
    std::vector<train::Window> windows =
        train::is_chat_jsonl(data_)
            ? train::read_chat_windows(data_, chat_template(), *tokenizer, seq_)
            : train::read_windows(data_, *tokenizer, seq_, eos);
    // Shuffle by seed, hold out the validation windows.
    std::mt19937_64 rng(seed_);
    std::shuffle(windows.begin(), windows.end(), rng);
    const auto held =
        static_cast<size_t>(std::floor(val_fraction_ * static_cast<double>(windows.size())));
    std::vector<train::Window> validation(windows.end() - static_cast<std::ptrdiff_t>(held),
                                          windows.end());
    windows.resize(windows.size() - held);
    if (pack_)
      windows = train::pack_windows(windows, seq_);  // after the split: validation unpacked
    check(!windows.empty(), data_ + ": no training windows left after the validation split");

    std::ofstream metrics;
    if (writer()) {
      fs::create_directories(output_);
      metrics.open(output_ + "/metrics.jsonl");
    }
    // --weights-dtype bf16: the forward and backward read the weights rounded to bf16 from f32
    // master copies, which AdamW updates (and checkpoints hold); f32: trained in place.
    train::ParameterMap masters;
    if (weights_dtype_ == "bf16")
      for (const auto& [name, value] : model.parameters()) masters[name] = value.contiguous(true);
    train::ParameterMap& trained = masters.empty() ? model.parameters() : masters;
    const auto round_weights = [&]() {
      for (const auto& [name, master] : masters) {
        const Tensor rounded = master.to(DType::BF16).to(DType::F32);
        std::memcpy(model.parameters().at(name).mutable_raw(), rounded.raw(), rounded.nbytes());
      }
    };
    round_weights();
    train::DataParallelOptimizer optimizer(*comm_, trained, model.gradients(),
                                           {lr_, 0.9, 0.95, 1e-8, weight_decay_, clip_}, zero_);
    const int32_t pad = eos >= 0 ? eos : 0;
    std::vector<size_t> order(windows.size());
    std::iota(order.begin(), order.end(), 0);
    size_t cursor = order.size();
    int64_t first_step = 1;
    if (!resume_.empty()) {
      first_step = load_checkpoint(trained, optimizer, rng, order, cursor) + 1;
      round_weights();
    }
    std::vector<int32_t> tokens, targets, segments;
    const auto start = std::chrono::steady_clock::now();
    int64_t seen_tokens = 0, rank_tokens = 0;
    double first_loss = 0, last_loss = 0, val_before = validation_loss(model, validation, pad),
           val_after = val_before;
    std::vector<double> rank_rates;
    const int64_t units = grad_accum_ * batch_;  // windows per step
    // The leaves of the step's gradient sum: runs of up to `leaf` consecutive windows of one
    // micro-batch, computed as one batch. They depend on the settings only (never on the rank
    // count), so ranks that share whole leaves sum them in the same tree.
    const int64_t leaf = std::min(batch_, leaf_windows_ > 0 ? leaf_windows_ : batch_);
    const int64_t leaves_per_micro = (batch_ + leaf - 1) / leaf;
    const int64_t leaves = grad_accum_ * leaves_per_micro;
    for (int64_t step = first_step; step <= steps_; ++step) {
      const double lr = learning_rate(step);
      // The step's windows, micro-batch after micro-batch (every rank draws the same).
      std::vector<size_t> ids;
      while (static_cast<int64_t>(ids.size()) < units) {
        if (cursor == order.size()) {  // a new epoch, freshly shuffled
          std::shuffle(order.begin(), order.end(), rng);
          cursor = 0;
        }
        ids.push_back(order[cursor++]);
      }
      // The loss is the mean over micro-batches of each one's mean over its targets: a leaf
      // (its mean over its own targets) of micro-batch b weighs targets(leaf) / targets(b) /
      // grad_accum.
      std::vector<double> weights(static_cast<size_t>(leaves), 0.0);
      std::vector<std::vector<size_t>> leaf_ids(static_cast<size_t>(leaves));
      for (int64_t micro = 0; micro < grad_accum_; ++micro) {
        int64_t total = 0;
        for (int64_t b = 0; b < batch_; ++b)
          total += window_targets(windows[ids[micro * batch_ + b]]);
        for (int64_t j = 0; j < leaves_per_micro; ++j) {
          const auto u = static_cast<size_t>(micro * leaves_per_micro + j);
          int64_t targets_of_leaf = 0;
          for (int64_t b = j * leaf; b < std::min(batch_, (j + 1) * leaf); ++b) {
            leaf_ids[u].push_back(ids[micro * batch_ + b]);
            targets_of_leaf += window_targets(windows[ids[micro * batch_ + b]]);
          }
          if (total > 0)
            weights[u] = static_cast<double>(targets_of_leaf) / static_cast<double>(total) /
                         static_cast<double>(grad_accum_);
        }
      }
      const double loss = optimizer.accumulate(leaves, weights, [&](int64_t u) {
        model.zero_gradients();
        const std::vector<size_t>& batch = leaf_ids[static_cast<size_t>(u)];
        make_batch(windows, batch, seq_, pad, tokens, targets, &segments);
        // LoRA dropout masks per leaf of the run: the same for any rank count.
        if (lora) lora->set_dropout_key(static_cast<uint64_t>((step - 1) * leaves + u));
        return model.forward_backward(tokens.data(), targets.data(),
                                      static_cast<int64_t>(batch.size()), seq_, 256,
                                      pack_ ? segments.data() : nullptr);
      });
      check(std::isfinite(loss), "training: the loss is " + std::to_string(loss) + " at step " +
                                     std::to_string(step) + " (lower --lr?); nothing was written");
      const double norm = optimizer.step(lr);
      round_weights();
      const auto [mine_first, mine_last] = optimizer.my_units(leaves);
      seen_tokens += units * seq_;
      for (int64_t u = mine_first; u < mine_last; ++u)
        rank_tokens += static_cast<int64_t>(leaf_ids[static_cast<size_t>(u)].size()) * seq_;
      if (step == first_step) first_loss = loss;
      last_loss = loss;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(seen_tokens) / seconds;
      Json line = {
          {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm}, {"tokens_per_s", rate}};
      if (comm_->size() > 1) {
        // Each rank's own tokens per second (the windows of its share).
        rank_rates.assign(static_cast<size_t>(comm_->size()), -0.0);
        rank_rates[static_cast<size_t>(comm_->rank())] = static_cast<double>(rank_tokens) / seconds;
        comm_->all_reduce(rank_rates.data(), comm_->size());
        line["rank_tokens_per_s"] = rank_rates;
      }
      if ((eval_every_ > 0 && step % eval_every_ == 0) || step == steps_) {
        val_after = validation_loss(model, validation, pad);
        if (!validation.empty()) line["val_loss"] = val_after;
      }
      if (writer()) {
        metrics << line.dump() << "\n";
        std::fprintf(stderr, "\rstep %lld/%lld  loss %.4f  lr %.2e  grad norm %.3f  %.0f tokens/s",
                     static_cast<long long>(step), static_cast<long long>(steps_), loss, lr, norm,
                     rate);
        if (comm_->size() > 1)
          std::fprintf(stderr, " (%d ranks, %.0f/rank)", comm_->size(),
                       rate / static_cast<double>(comm_->size()));
        std::fprintf(stderr, "  ETA %.0f s",
                     seconds / static_cast<double>(step - first_step + 1) *
                         static_cast<double>(steps_ - step));
      }
      if (save_every_ > 0 && step % save_every_ == 0 && step < steps_)
        save_checkpoint(trained, optimizer, rng, order, cursor, step);
    }
    if (!writer()) return 0;
    std::fputc('\n', stderr);
    if (lora) {
      train::save_lora(output_, *lora, hf_names, fs::absolute(model_path_).string());
    } else {
      train::write_hf_folder(loaded, model, output_, save_dtype);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (json_) {
      Json summary = {{"steps", steps_},       {"first_loss", first_loss}, {"last_loss", last_loss},
                      {"tokens", seen_tokens}, {"seconds", seconds},       {"output", final_},
                      {"ranks", comm_->size()}};
      if (comm_->size() > 1) summary["rank_tokens_per_s"] = rank_rates;
      if (!validation.empty()) {
        summary["val_loss_before"] = val_before;
        summary["val_loss_after"] = val_after;
      }
      std::printf("%s\n", summary.dump().c_str());
    } else {
      std::printf("trained %lld steps: loss %.4f -> %.4f", static_cast<long long>(steps_),
                  first_loss, last_loss);
      if (!validation.empty()) std::printf(", validation %.4f -> %.4f", val_before, val_after);
      std::printf("; wrote %s\n", final_.c_str());
    }
    return 0;
  }

  // The template of chat data: --chat-template, else the model's own.
  chat::ChatTemplate chat_template() const {
    std::optional<chat::ChatTemplate> found = find_chat_template(model_path_, chat_template_, "");
    check(found.has_value(), data_ + ": chat data needs a chat template; " + model_path_ +
                                 " has none (give --chat-template)");
    return *found;
  }

  double learning_rate(int64_t step) const {
    if (step <= warmup_) return lr_ * static_cast<double>(step) / static_cast<double>(warmup_);
    const double progress = steps_ > warmup_ ? static_cast<double>(step - warmup_) /
                                                   static_cast<double>(steps_ - warmup_)
                                             : 1.0;
    if (schedule_ == "linear") return lr_ * (1.0 - progress) + lr_ * 0.1 * progress;
    if (schedule_ == "cosine") return lr_ * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress)));
    return lr_;
  }

  // Mean loss over the validation windows (each predicted target counts once); the ranks
  // share the windows.
  double validation_loss(const train::TrainModel& model, const std::vector<train::Window>& windows,
                         int32_t pad) const {
    int64_t count = 0;
    for (const train::Window& w : windows) count += window_targets(w);
    std::vector<int32_t> tokens, targets;
    const double total =
        train::distributed_sum(*comm_, static_cast<int64_t>(windows.size()), [&](int64_t u) {
          const auto i = static_cast<size_t>(u);
          make_batch(windows, {i}, static_cast<int64_t>(windows[i].tokens.size()), pad, tokens,
                     targets);
          return model.loss(tokens.data(), targets.data(), 1, static_cast<int64_t>(tokens.size())) *
                 static_cast<double>(window_targets(windows[i]));
        });
    return count > 0 ? total / static_cast<double>(count) : 0.0;
  }

  // The targets a window predicts (tokens after the first that carry loss).
  static int64_t window_targets(const train::Window& w) {
    int64_t n = 0;
    for (size_t t = 1; t < w.loss.size(); ++t) n += w.loss[t] != 0;
    return n;
  }

  // A resumable checkpoint of the run after `step`, written to a temporary folder and renamed
  // (a crash never leaves a partial one): the parameters and the optimizer's moments
  // (safetensors, Kiln names), and state.json (step, optimizer steps, the data order, its cursor,
  // the shuffling generator's state, and the settings that must not change on resume).
  // Every rank calls it (the optimizer state is gathered); rank 0 writes.
  void save_checkpoint(const train::ParameterMap& parameters,
                       const train::DataParallelOptimizer& optimizer, const std::mt19937_64& rng,
                       const std::vector<size_t>& order, size_t cursor, int64_t step) const {
    const train::AdamW::State state = optimizer.state();
    if (!writer()) return;
    const std::string dir = final_ + ".checkpoints/step-" + std::to_string(step);
    const std::string tmp = dir + ".tmp";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    std::vector<std::pair<std::string, Tensor>> params(parameters.begin(), parameters.end());
    write_safetensors(tmp + "/parameters.safetensors", params);
    std::vector<std::pair<std::string, Tensor>> moments;
    for (const auto& [name, m] : state.m) {
      moments.emplace_back("m/" + name, Tensor::from_f32({static_cast<int64_t>(m.size())}, m));
      moments.emplace_back("v/" + name,
                           Tensor::from_f32({static_cast<int64_t>(m.size())}, state.v.at(name)));
    }
    write_safetensors(tmp + "/optimizer.safetensors", moments);
    std::ostringstream generator;
    generator << rng;
    const Json json = {{"step", step},           {"optimizer_steps", state.steps},
                       {"order", order},         {"cursor", cursor},
                       {"rng", generator.str()}, {"settings", settings()}};
    std::ofstream(tmp + "/state.json") << json.dump() << "\n";
    fs::remove_all(dir);
    fs::rename(tmp, dir);
  }

  // Restores a checkpoint (every rank reads it; any number of ranks, ZeRO or not); returns its
  // step. Throws Error naming the file when it is missing, corrupt, or from a run with other
  // settings.
  int64_t load_checkpoint(train::ParameterMap& parameters, train::DataParallelOptimizer& optimizer,
                          std::mt19937_64& rng, std::vector<size_t>& order, size_t& cursor) const {
    const std::string state_path = resume_ + "/state.json";
    const Json state = read_json_file(state_path);
    try {
      check(state.at("settings") == settings(),
            state_path + ": the checkpoint is of a run with other settings (" +
                state.at("settings").dump() + "; this run: " + settings().dump() + ")");
      const SafetensorsFile params = SafetensorsFile::open(resume_ + "/parameters.safetensors");
      for (auto& [name, value] : parameters) {
        const Tensor saved = params.get(name);
        check(saved.shape() == value.shape() && saved.dtype() == DType::F32,
              resume_ + "/parameters.safetensors: tensor '" + name + "' does not match the model");
        std::memcpy(value.mutable_raw(), saved.raw(), value.nbytes());
      }
      const SafetensorsFile moments = SafetensorsFile::open(resume_ + "/optimizer.safetensors");
      train::AdamW::State restored;
      restored.steps = state.at("optimizer_steps").get<int64_t>();
      for (const auto& [name, value] : parameters) {
        const Tensor m = moments.get("m/" + name), v = moments.get("v/" + name);
        check(m.numel() == value.numel() && v.numel() == value.numel(),
              resume_ + "/optimizer.safetensors: moments of '" + name + "' do not match");
        restored.m[name].assign(m.data<float>(), m.data<float>() + m.numel());
        restored.v[name].assign(v.data<float>(), v.data<float>() + v.numel());
      }
      optimizer.set_state(restored);
      order = state.at("order").get<std::vector<size_t>>();
      cursor = state.at("cursor").get<size_t>();
      std::istringstream generator(state.at("rng").get<std::string>());
      generator >> rng;
      check(!generator.fail(), state_path + ": key 'rng' is corrupt");
      return state.at("step").get<int64_t>();
    } catch (const Json::exception& e) {
      throw Error(state_path + ": " + e.what());
    }
  }

  // What a resumed run must share with the run that wrote the checkpoint.
  Json settings() const {
    Json s = {{"data", fs::absolute(data_).lexically_normal().string()},
              {"model", fs::absolute(model_path_).lexically_normal().string()},
              {"batch", batch_},
              {"grad_accum", grad_accum_},
              {"seq", seq_},
              {"steps", steps_},
              {"lr", lr_},
              {"warmup", warmup_},
              {"schedule", schedule_},
              {"weight_decay", weight_decay_},
              {"clip", clip_},
              {"seed", seed_},
              {"val_fraction", val_fraction_}};
    if (pack_) s["pack"] = true;
    if (weights_dtype_ != "f32") s["weights_dtype"] = weights_dtype_;
    if (compute_dtype_ != "f32") s["compute_dtype"] = compute_dtype_;
    if (leaf_windows_ > 0 && leaf_windows_ < batch_) s["leaf_windows"] = leaf_windows_;
    if (lora_rank_ > 0)
      s["lora"] = {{"rank", lora_rank_},
                   {"alpha", lora_alpha_},
                   {"dropout", lora_dropout_},
                   {"targets", lora_targets_}};
    return s;
  }

  // Kiln name -> the checkpoint's tensor name, for LoRA adapters (one-to-one families only).
  std::map<std::string, std::string> export_names(const LoadedModel& loaded) const {
    try {
      return train::hf_export_names(loaded);
    } catch (const Error& e) {
      throw Error(std::string("training: ") + e.what());
    }
  }

  // --save-dtype: f32 (the default for f32 weights), bf16 (for bf16 weights), f16, or the
  // source's own dtypes (empty).
  std::optional<DType> parse_save_dtype() const {
    if (save_dtype_ == "source") return std::nullopt;
    if (save_dtype_.empty()) return weights_dtype_ == "bf16" ? DType::BF16 : DType::F32;
    if (save_dtype_ == "bf16") return DType::BF16;
    if (save_dtype_ == "f16") return DType::F16;
    return DType::F32;
  }

  FamilyChoice family_;
  std::string model_path_, data_, output_, final_, schedule_ = "cosine";
  int64_t steps_ = 100, batch_ = 4, seq_ = 128, warmup_ = 0, eval_every_ = 0, save_every_ = 0,
          grad_accum_ = 1, leaf_windows_ = 0;
  std::string resume_;
  double lr_ = 3e-4, weight_decay_ = 0.0, clip_ = 1.0, val_fraction_ = 0.1;
  uint64_t seed_ = 0;
  bool recompute_ = false, json_ = false, pack_ = false;
  int zero_ = 0;
  std::unique_ptr<train::Collective> comm_;
  int64_t lora_rank_ = 0;
  double lora_alpha_ = 16.0, lora_dropout_ = 0.0;
  std::string lora_targets_ = "q,k,v,o", chat_template_, save_dtype_, weights_dtype_ = "f32",
              compute_dtype_ = "f32";
};

}  // namespace

KILN_COMMAND(TrainCommand, "train",
             "fine-tune a model on a dataset with AdamW; writes a HF folder");

}  // namespace kiln::cli
