// CPU feature checks and the KILN_KERNELS switch.
#include "kiln/ops/kernels.h"

#include <atomic>
#include <cstdlib>

#include "kiln/core/error.h"

namespace kiln::ops {

namespace {

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
}

const cpu::KernelTable& table_named(const std::string& name) {
  const std::vector<std::string> available = available_kernels();
  if (name.empty() || name == "auto") return table_named(available.back());
  if (name == "reference") return cpu::reference_table();
  std::string list;
  for (const std::string& a : available) list += (list.empty() ? "" : ", ") + a;
  if (name == "avx2" && cpu_has_avx2()) return cpu::avx2_table();
  if (name == "avx512" && cpu_has_avx512()) return cpu::avx512_table();
  throw Error("KILN_KERNELS=" + name + ": not a kernel set this CPU can run (" + list + ")");
}

std::atomic<const cpu::KernelTable*> active{nullptr};

}  // namespace

std::vector<std::string> available_kernels() {
  std::vector<std::string> names = {"reference"};
  if (cpu_has_avx2()) names.push_back("avx2");
  if (cpu_has_avx512()) names.push_back("avx512");
  return names;
}

const cpu::KernelTable& active_kernels() {
  const cpu::KernelTable* table = active.load(std::memory_order_acquire);
  if (table) return *table;
  const char* env = std::getenv("KILN_KERNELS");
  table = &table_named(env ? env : "auto");
  active.store(table, std::memory_order_release);
  return *table;
}

void use_kernels(const std::string& name) {
  active.store(&table_named(name));
}

namespace {
// -1 until the first bf16_gemv() reads KILN_BF16_GEMV.
std::atomic<int> bf16_gemv_mode{-1};
}  // namespace

const char* bf16_gemv_name(Bf16Gemv mode) {
  switch (mode) {
    case Bf16Gemv::kSplit:
      return "split";
    case Bf16Gemv::kRounded:
      return "rounded";
    case Bf16Gemv::kWiden:
      return "widen";
  }
  return "?";
}

Bf16Gemv bf16_gemv_named(const std::string& name) {
  for (const Bf16Gemv mode : {Bf16Gemv::kSplit, Bf16Gemv::kRounded, Bf16Gemv::kWiden})
    if (name == bf16_gemv_name(mode)) return mode;
  throw Error("KILN_BF16_GEMV=" + name + ": not a bf16 GEMV mode (split, rounded, widen)");
}

Bf16Gemv bf16_gemv() {
  const int mode = bf16_gemv_mode.load(std::memory_order_acquire);
  if (mode >= 0) return static_cast<Bf16Gemv>(mode);
  const char* env = std::getenv("KILN_BF16_GEMV");
  const Bf16Gemv chosen = env && *env ? bf16_gemv_named(env) : Bf16Gemv::kSplit;
  bf16_gemv_mode.store(static_cast<int>(chosen), std::memory_order_release);
  return chosen;
}

void use_bf16_gemv(Bf16Gemv mode) {
  bf16_gemv_mode.store(static_cast<int>(mode), std::memory_order_release);
}

}  // namespace kiln::ops
