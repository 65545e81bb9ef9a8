// `kiln train [MODEL] --data PATH -o OUT [--steps N] [--batch B] [--seq T] [--lr LR]
// [--warmup N] [--schedule cosine|linear|constant] [--weight-decay W] [--clip C] [--seed S]
// [--eval-every N] [--val-fraction F] [--json]`: fine-tunes a model on a dataset
// (train/data.h) with AdamW and writes a HuggingFace folder (config, tokenizer files and the
// trained weights in f32 under the checkpoint's own tensor names) plus metrics.jsonl.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/language_model.h"
#include "kiln/models/loader.h"
#include "kiln/train/adamw.h"
#include "kiln/train/backward.h"
#include "kiln/train/data.h"
#include "kiln/train/train_model.h"

namespace kiln::cli {
namespace {
namespace fs = std::filesystem;

// The windows of `ids` as one batch [B, T], padded at the end with `pad` (not predicted).
void make_batch(const std::vector<train::Window>& windows, const std::vector<size_t>& ids,
                int64_t T, int32_t pad, std::vector<int32_t>& tokens,
                std::vector<int32_t>& targets) {
  const auto B = static_cast<int64_t>(ids.size());
  tokens.assign(static_cast<size_t>(B * T), pad);
  std::vector<uint8_t> mask(static_cast<size_t>(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    const train::Window& w = windows[ids[b]];
    std::copy(w.tokens.begin(), w.tokens.end(), tokens.begin() + b * T);
    std::copy(w.loss.begin(), w.loss.end(), mask.begin() + b * T);
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
    app.add_flag("--recompute", recompute_,
                 "recompute each layer's activations in the backward pass (less memory, about "
                 "a third more compute; the same result)");
    app.add_flag("--json", json_, "print a JSON summary at the end");
  }

  // Writes into OUT.partial and renames it at the end: a failed run leaves nothing.
  int run() override {
    if (model_path_.empty()) model_path_ = default_model_path();
    check(!fs::exists(output_), output_ + ": already exists (choose a new output folder)");
    final_ = output_;
    output_ += ".partial";
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

 private:
  int train() {
    const LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    check(loaded.family != nullptr,
          model_path_ +
              ": train from a HuggingFace folder (a Kiln checkpoint has no HF names to "
              "export to)");
    check(seq_ <= loaded.spec.max_position_embeddings,
          "--seq " + std::to_string(seq_) + " exceeds the model's context of " +
              std::to_string(loaded.spec.max_position_embeddings));
    // The export plan first, so that a family it cannot export fails before training.
    const std::map<std::string, std::string> hf_names = export_names(loaded);
    train::TrainModel model(loaded.spec, loaded.weights);
    model.set_recompute(recompute_);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    const int32_t eos =
        loaded.spec.eos_token_ids.empty() ? -1 : static_cast<int32_t>(loaded.spec.eos_token_ids[0]);
    std::vector<train::Window> windows = train::read_windows(data_, *tokenizer, seq_, eos);
    // Shuffle by seed, hold out the validation windows.
    std::mt19937_64 rng(seed_);
    std::shuffle(windows.begin(), windows.end(), rng);
    const auto held =
        static_cast<size_t>(std::floor(val_fraction_ * static_cast<double>(windows.size())));
    std::vector<train::Window> validation(windows.end() - static_cast<std::ptrdiff_t>(held),
                                          windows.end());
    windows.resize(windows.size() - held);
    check(!windows.empty(), data_ + ": no training windows left after the validation split");

    fs::create_directories(output_);
    std::ofstream metrics(output_ + "/metrics.jsonl");
    train::AdamW optimizer({lr_, 0.9, 0.95, 1e-8, weight_decay_, clip_});
    const int32_t pad = eos >= 0 ? eos : 0;
    std::vector<size_t> order(windows.size());
    std::iota(order.begin(), order.end(), 0);
    size_t cursor = order.size();
    int64_t first_step = 1;
    if (!resume_.empty()) first_step = load_checkpoint(model, optimizer, rng, order, cursor) + 1;
    std::vector<int32_t> tokens, targets;
    const auto start = std::chrono::steady_clock::now();
    int64_t seen_tokens = 0;
    double first_loss = 0, last_loss = 0, val_before = validation_loss(model, validation, pad),
           val_after = val_before;
    for (int64_t step = first_step; step <= steps_; ++step) {
      const double lr = learning_rate(step);
      optimizer.set_lr(lr);
      model.zero_gradients();
      double loss = 0.0;
      for (int64_t micro = 0; micro < grad_accum_; ++micro) {
        std::vector<size_t> ids;
        while (static_cast<int64_t>(ids.size()) < batch_) {
          if (cursor == order.size()) {  // a new epoch, freshly shuffled
            std::shuffle(order.begin(), order.end(), rng);
            cursor = 0;
          }
          ids.push_back(order[cursor++]);
        }
        make_batch(windows, ids, seq_, pad, tokens, targets);
        loss += model.forward_backward(tokens.data(), targets.data(), batch_, seq_);
      }
      if (grad_accum_ > 1) {
        loss /= static_cast<double>(grad_accum_);
        model.scale_gradients(1.0f / static_cast<float>(grad_accum_));
      }
      check(std::isfinite(loss), "training: the loss is " + std::to_string(loss) + " at step " +
                                     std::to_string(step) + " (lower --lr?); nothing was written");
      const double norm = optimizer.step(model.parameters(), model.gradients());
      seen_tokens += grad_accum_ * batch_ * seq_;
      if (step == first_step) first_loss = loss;
      last_loss = loss;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = static_cast<double>(seen_tokens) / seconds;
      Json line = {
          {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm}, {"tokens_per_s", rate}};
      if ((eval_every_ > 0 && step % eval_every_ == 0) || step == steps_) {
        val_after = validation_loss(model, validation, pad);
        if (!validation.empty()) line["val_loss"] = val_after;
      }
      metrics << line.dump() << "\n";
      std::fprintf(
          stderr, "\rstep %lld/%lld  loss %.4f  lr %.2e  grad norm %.3f  %.0f tokens/s  ETA %.0f s",
          static_cast<long long>(step), static_cast<long long>(steps_), loss, lr, norm, rate,
          seconds / static_cast<double>(step - first_step + 1) *
              static_cast<double>(steps_ - step));
      if (save_every_ > 0 && step % save_every_ == 0 && step < steps_)
        save_checkpoint(model, optimizer, rng, order, cursor, step);
    }
    std::fputc('\n', stderr);
    save(model, hf_names);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (json_) {
      Json summary = {{"steps", steps_},       {"first_loss", first_loss}, {"last_loss", last_loss},
                      {"tokens", seen_tokens}, {"seconds", seconds},       {"output", final_}};
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

  double learning_rate(int64_t step) const {
    if (step <= warmup_) return lr_ * static_cast<double>(step) / static_cast<double>(warmup_);
    const double progress = steps_ > warmup_ ? static_cast<double>(step - warmup_) /
                                                   static_cast<double>(steps_ - warmup_)
                                             : 1.0;
    if (schedule_ == "linear") return lr_ * (1.0 - progress) + lr_ * 0.1 * progress;
    if (schedule_ == "cosine") return lr_ * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress)));
    return lr_;
  }

  // Mean loss over the validation windows (each predicted target counts once).
  double validation_loss(const train::TrainModel& model, const std::vector<train::Window>& windows,
                         int32_t pad) const {
    double total = 0.0;
    int64_t count = 0;
    std::vector<int32_t> tokens, targets;
    for (size_t i = 0; i < windows.size(); ++i) {
      make_batch(windows, {i}, static_cast<int64_t>(windows[i].tokens.size()), pad, tokens,
                 targets);
      const int64_t n = train::count_targets(targets.data(), static_cast<int64_t>(targets.size()));
      total += model.loss(tokens.data(), targets.data(), 1, static_cast<int64_t>(tokens.size())) *
               static_cast<double>(n);
      count += n;
    }
    return count > 0 ? total / static_cast<double>(count) : 0.0;
  }

  // A resumable checkpoint of the run after `step`, written to a temporary folder and renamed
  // (a crash never leaves a partial one): the parameters and the optimizer's moments
  // (safetensors, Kiln names), and state.json (step, optimizer steps, the data order, its cursor,
  // the shuffling generator's state, and the settings that must not change on resume).
  void save_checkpoint(const train::TrainModel& model, const train::AdamW& optimizer,
                       const std::mt19937_64& rng, const std::vector<size_t>& order, size_t cursor,
                       int64_t step) const {
    const std::string dir = final_ + ".checkpoints/step-" + std::to_string(step);
    const std::string tmp = dir + ".tmp";
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    std::vector<std::pair<std::string, Tensor>> params(model.parameters().begin(),
                                                       model.parameters().end());
    write_safetensors(tmp + "/parameters.safetensors", params);
    const train::AdamW::State state = optimizer.state();
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

  // Restores a checkpoint; returns its step. Throws Error naming the file when it is missing,
  // corrupt, or from a run with other settings.
  int64_t load_checkpoint(train::TrainModel& model, train::AdamW& optimizer, std::mt19937_64& rng,
                          std::vector<size_t>& order, size_t& cursor) const {
    const std::string state_path = resume_ + "/state.json";
    const Json state = read_json_file(state_path);
    try {
      check(state.at("settings") == settings(),
            state_path + ": the checkpoint is of a run with other settings (" +
                state.at("settings").dump() + "; this run: " + settings().dump() + ")");
      const SafetensorsFile params = SafetensorsFile::open(resume_ + "/parameters.safetensors");
      for (auto& [name, value] : model.parameters()) {
        const Tensor saved = params.get(name);
        check(saved.shape() == value.shape() && saved.dtype() == DType::F32,
              resume_ + "/parameters.safetensors: tensor '" + name + "' does not match the model");
        std::memcpy(value.mutable_raw(), saved.raw(), value.nbytes());
      }
      const SafetensorsFile moments = SafetensorsFile::open(resume_ + "/optimizer.safetensors");
      train::AdamW::State restored;
      restored.steps = state.at("optimizer_steps").get<int64_t>();
      for (const auto& [name, value] : model.parameters()) {
        const Tensor m = moments.get("m/" + name), v = moments.get("v/" + name);
        check(m.numel() == value.numel() && v.numel() == value.numel(),
              resume_ + "/optimizer.safetensors: moments of '" + name + "' do not match");
        restored.m[name].assign(m.data<float>(), m.data<float>() + m.numel());
        restored.v[name].assign(v.data<float>(), v.data<float>() + v.numel());
      }
      optimizer.set_state(std::move(restored));
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
    return {{"data", fs::absolute(data_).lexically_normal().string()},
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
  }

  // Kiln name -> the checkpoint's tensor name, for families whose tensors map one to one
  // (no split, fused or transposed tensors).
  std::map<std::string, std::string> export_names(const LoadedModel& loaded) const {
    const std::unique_ptr<TensorSource> source = open_model_source(model_path_, loaded.config);
    std::map<std::string, std::string> names;
    for (const WeightMapping& m : loaded.family->map_weights(loaded.spec, *source)) {
      check(!m.transform && m.hf_names.size() == 1,
            "training: '" + m.kiln_name + "' is made from " + std::to_string(m.hf_names.size()) +
                " tensor(s) by a transform; exporting family '" + loaded.family->name() +
                "' to HuggingFace names is not implemented yet");
      names[m.kiln_name] = m.hf_names[0];
    }
    return names;
  }

  void save(const train::TrainModel& model,
            const std::map<std::string, std::string>& hf_names) const {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const auto& [name, value] : model.parameters()) {
      auto it = hf_names.find(name);
      check(it != hf_names.end(), "training: no checkpoint name for '" + name + "'");
      tensors.emplace_back(it->second, value);
    }
    write_safetensors(output_ + "/model.safetensors", tensors, {{"format", "pt"}});
    // The source's other files: config (weights now f32), generation config, tokenizer.
    for (const auto& entry : fs::directory_iterator(model_path_)) {
      const std::string file = entry.path().filename().string();
      const bool weights = entry.path().extension() == ".safetensors" ||
                           entry.path().extension() == ".bin" ||
                           file.find(".index.json") != std::string::npos;
      if (!entry.is_regular_file() || weights) continue;
      if (file == "config.json") {
        Json config = read_json_file(entry.path().string());
        config["torch_dtype"] = "float32";
        std::ofstream(output_ + "/config.json") << config.dump(2) << "\n";
      } else {
        fs::copy_file(entry.path(), output_ + "/" + file, fs::copy_options::overwrite_existing);
      }
    }
  }

  FamilyChoice family_;
  std::string model_path_, data_, output_, final_, schedule_ = "cosine";
  int64_t steps_ = 100, batch_ = 4, seq_ = 128, warmup_ = 0, eval_every_ = 0, save_every_ = 0,
          grad_accum_ = 1;
  std::string resume_;
  double lr_ = 3e-4, weight_decay_ = 0.0, clip_ = 1.0, val_fraction_ = 0.1;
  uint64_t seed_ = 0;
  bool recompute_ = false;
  bool json_ = false;
};

}  // namespace

KILN_COMMAND(TrainCommand, "train",
             "fine-tune a model on a dataset with AdamW; writes a HF folder");

}  // namespace kiln::cli
