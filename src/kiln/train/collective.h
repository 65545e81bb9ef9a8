// Collective communication between the processes of a data-parallel run: the operations of
// MPI and NCCL that training needs, behind one interface, so that a run is written once and
// works in one process (SingleProcess), across processes and machines over MPI
// (make_mpi_collective(), Open MPI), and later over NCCL on GPUs (the same five operations on
// device buffers, called in the same order by every rank).
//
// Every operation is collective: every rank calls it, in the same order, with the same
// sizes; it returns when this rank's part is done (buffers may then be reused). Sums are f32
// or f64 element-wise sums; with two ranks each element is a + b, which is exact in either
// order (IEEE addition commutes), so two ranks give bitwise the result of one process adding
// the same two partial sums. With more ranks the library chooses the association (results
// then agree to rounding).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln::train {

class Collective {
 public:
  virtual ~Collective() = default;
  // This process's rank in [0, size()) and the number of ranks.
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The number of ranks on this machine (this one included).
  virtual int local_size() const = 0;
  // What carries the messages, for logs: "single process", "MPI (Open MPI v4.1.4)".
  virtual std::string name() const = 0;

  // data[i] = the sum over ranks of data[i] (in place), n elements.
  virtual void all_reduce(float* data, int64_t n) = 0;
  virtual void all_reduce(double* data, int64_t n) = 0;
  // send holds sum(counts) elements, counts.size() == size(): segment r (counts[r] elements,
  // after the segments of the ranks before r) summed over ranks lands in this rank's recv
  // when r == rank() (recv holds counts[rank()] elements).
  virtual void reduce_scatter(const float* send, float* recv,
                              const std::vector<int64_t>& counts) = 0;
  // recv (sum(counts) elements) = the ranks' send buffers (counts[r] elements each) one
  // after the other in rank order.
  virtual void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) = 0;
  // Rank r's send holds one segment per rank q in rank order (send_counts[q] elements), which
  // lands in rank q's recv as its segment r; recv holds one segment per rank in rank order
  // (recv_counts[q] elements from rank q). (NCCL: grouped send/recv.)
  virtual void all_to_all(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                          const std::vector<int64_t>& recv_counts) = 0;
  // The root's `bytes` bytes at data are copied to every rank's data.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Returns when every rank has called it.
  virtual void barrier() = 0;
  // Ends every rank of the run now with `code` (a rank that failed calls this after printing
  // its error, so that the others do not wait forever in a collective). Does not return.
  [[noreturn]] virtual void abort(int code) = 0;
};

// One rank: sums and gathers copy; nothing is sent.
class SingleProcess final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_size() const override { return 1; }
  std::string name() const override { return "single process"; }
  void all_reduce(float*, int64_t) override {}
  void all_reduce(double*, int64_t) override {}
  void reduce_scatter(const float* send, float* recv, const std::vector<int64_t>& counts) override;
  void all_gather(const float* send, float* recv, const std::vector<int64_t>& counts) override;
  void all_to_all(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                  const std::vector<int64_t>& recv_counts) override;
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override;
};

// True when this process was started by an MPI launcher (mpirun / mpiexec / srun: the
// environment names a world size), so that plain `kiln` never initializes MPI.
bool launched_by_mpi();

// MPI_COMM_WORLD, initializing MPI on the first call (MPI_Finalize runs at exit). Works
// without a launcher too (a singleton world of one rank). Throws Error when MPI fails to
// initialize.
std::unique_ptr<Collective> make_mpi_collective();

// make_mpi_collective() when launched_by_mpi(), else SingleProcess.
std::unique_ptr<Collective> make_collective();

// The contiguous share [first, last) of `n` items that rank `rank` of `size` takes:
// [n * rank / size, n * (rank + 1) / size). The shares are in rank order and cover [0, n).
std::pair<int64_t, int64_t> share(int64_t n, int rank, int size);

}  // namespace kiln::train
