#include "kiln/train/collective.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "kiln/core/error.h"

namespace kiln::train {

void SingleProcess::reduce_scatter(const float* send, float* recv,
                                   const std::vector<int64_t>& counts) {
  check(counts.size() == 1, "reduce_scatter: one count per rank");
  std::copy(send, send + counts[0], recv);
}

void SingleProcess::all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) {
  check(counts.size() == 1, "all_gather: one count per rank");
  std::copy(send, send + counts[0], recv);
}

void SingleProcess::all_to_all(const float* send, const std::vector<int64_t>& send_counts,
                               float* recv, const std::vector<int64_t>& recv_counts) {
  check(send_counts.size() == 1 && recv_counts == send_counts, "all_to_all: one count per rank");
  std::copy(send, send + send_counts[0], recv);
}

void SingleProcess::abort(int code) {
  std::fflush(nullptr);
  std::_Exit(code);
}

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

std::pair<int64_t, int64_t> share(int64_t n, int rank, int size) {
  return {n * rank / size, n * (rank + 1) / size};
}

namespace {

// Messages of at most this many elements (MPI counts are int).
constexpr int64_t kMaxCount = int64_t{1} << 30;

void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(std::string("MPI: ") + what + ": " + std::string(text, length));
}

int as_int(int64_t n, const char* what) {
  check(n >= 0 && n <= INT_MAX,
        std::string("MPI: ") + what + ": " + std::to_string(n) + " elements exceed an int count");
  return static_cast<int>(n);
}

class Mpi final : public Collective {
 public:
  Mpi() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local),
              "split by host");
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    std::string text(version, length);
    text = text.substr(0, text.find_first_of(",\n"));
    name_ = "MPI (" + text + ")";
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return name_; }

  void all_reduce(float* data, int64_t n) override { reduce(data, n, MPI_FLOAT); }
  void all_reduce(double* data, int64_t n) override { reduce(data, n, MPI_DOUBLE); }

  void reduce_scatter(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    check(static_cast<int>(counts.size()) == size_, "reduce_scatter: one count per rank");
    std::vector<int> c(counts.size());
    for (size_t r = 0; r < counts.size(); ++r) c[r] = as_int(counts[r], "reduce_scatter");
    as_int(std::accumulate(counts.begin(), counts.end(), int64_t{0}), "reduce_scatter");
    mpi_check(MPI_Reduce_scatter(send, recv, c.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "reduce_scatter");
  }

  void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) override {
    check(static_cast<int>(counts.size()) == size_, "all_gather: one count per rank");
    std::vector<int> c(counts.size()), displacements(counts.size());
    int64_t offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      c[r] = as_int(counts[r], "all_gather");
      displacements[r] = as_int(offset, "all_gather");
      offset += counts[r];
    }
    as_int(offset, "all_gather");
    mpi_check(MPI_Allgatherv(send, c[static_cast<size_t>(rank_)], MPI_FLOAT, recv, c.data(),
                             displacements.data(), MPI_FLOAT, MPI_COMM_WORLD),
              "all_gather");
  }

  void all_to_all(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                  const std::vector<int64_t>& recv_counts) override {
    check(static_cast<int>(send_counts.size()) == size_ &&
              static_cast<int>(recv_counts.size()) == size_,
          "all_to_all: one count per rank");
    std::vector<int> sc(send_counts.size()), sd(sc.size()), rc(sc.size()), rd(sc.size());
    int64_t send_offset = 0, recv_offset = 0;
    for (size_t r = 0; r < sc.size(); ++r) {
      sc[r] = as_int(send_counts[r], "all_to_all");
      sd[r] = as_int(send_offset, "all_to_all");
      rc[r] = as_int(recv_counts[r], "all_to_all");
      rd[r] = as_int(recv_offset, "all_to_all");
      send_offset += send_counts[r];
      recv_offset += recv_counts[r];
    }
    mpi_check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(),
                            MPI_FLOAT, MPI_COMM_WORLD),
              "all_to_all");
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (int64_t start = 0; start < bytes; start += kMaxCount)
      mpi_check(MPI_Bcast(p + start, static_cast<int>(std::min(kMaxCount, bytes - start)), MPI_BYTE,
                          root, MPI_COMM_WORLD),
                "broadcast");
  }

  void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

  void abort(int code) override {
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  template <typename T>
  void reduce(T* data, int64_t n, MPI_Datatype type) {
    for (int64_t start = 0; start < n; start += kMaxCount)
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data + start,
                              static_cast<int>(std::min(kMaxCount, n - start)), type, MPI_SUM,
                              MPI_COMM_WORLD),
                "all_reduce");
  }

  int rank_ = 0, size_ = 1, local_size_ = 1;
  std::string name_;
};

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<Collective> make_mpi_collective() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Only the calling thread talks to MPI (OpenMP threads compute between the calls).
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
    std::atexit(finalize_mpi);
  }
  return std::make_unique<Mpi>();
}

std::unique_ptr<Collective> make_collective() {
  if (launched_by_mpi()) return make_mpi_collective();
  return std::make_unique<SingleProcess>();
}

}  // namespace kiln::train
