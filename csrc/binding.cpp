// pybind11 binding of the C++ token-statistics API (mia_fast._C). It takes buffers (numpy views
// of CPU torch tensors, zero-copy; bfloat16 arrives as an int16 view), checks their layout,
// releases the GIL and calls the plain C++ API. C++ exceptions surface as ValueError
// (std::invalid_argument) and IndexError (std::out_of_range).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "amx_matmul.h"
#include "token_stats.h"

namespace py = pybind11;
using mia_fast::LogitDType;

namespace {

LogitDType parse_dtype(const std::string& name, const py::buffer_info& info) {
  LogitDType dtype;
  if (name == "float32") dtype = LogitDType::kFloat32;
  else if (name == "float16") dtype = LogitDType::kFloat16;
  else if (name == "bfloat16") dtype = LogitDType::kBFloat16;
  else throw std::invalid_argument("logits: expected dtype float32, float16 or bfloat16, got " + name);
  const py::ssize_t want = dtype == LogitDType::kFloat32 ? 4 : 2;
  if (info.itemsize != want)
    throw std::invalid_argument("logits: a " + name + " buffer must have " + std::to_string(want) +
                                "-byte items, got " + std::to_string(info.itemsize));
  return dtype;
}

struct Matrix {
  const void* data;
  LogitDType dtype;
  int64_t rows, cols, row_stride;  // row_stride in elements
};

Matrix as_matrix(const py::buffer& buffer, const std::string& dtype_name) {
  py::buffer_info info = buffer.request();
  Matrix m{info.ptr, parse_dtype(dtype_name, info), 0, 0, 0};
  if (info.ndim != 2)
    throw std::invalid_argument("logits: expected a 2-d (rows, vocab) buffer, got " +
                                std::to_string(info.ndim) + " dimensions");
  m.rows = info.shape[0];
  m.cols = info.shape[1];
  if (m.cols > 1 && info.strides[1] != info.itemsize)
    throw std::invalid_argument("logits: the vocabulary dimension must be contiguous");
  if (info.strides[0] % info.itemsize != 0)
    throw std::invalid_argument("logits: the row stride must be a whole number of elements");
  m.row_stride = m.rows > 1 ? info.strides[0] / info.itemsize : m.cols;
  return m;
}

template <class T>
T* vector_ptr(const py::array& a, int64_t n, const char* what) {
  if (a.ndim() != 1 || a.shape(0) != n || a.itemsize() != static_cast<py::ssize_t>(sizeof(T)) ||
      (n > 1 && a.strides(0) != static_cast<py::ssize_t>(sizeof(T))))
    throw std::invalid_argument(std::string(what) + ": expected a contiguous 1-d array of " +
                                std::to_string(n) + " " + std::to_string(sizeof(T)) + "-byte items");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// The tempered outputs: none, or 3 arrays of n x betas.size() (logprob_t, entropy_t, max_logprob_t).
void add_tempered(mia_fast::TokenStatsOutputs& o, const std::vector<double>& betas,
                  const std::vector<py::array>& outs, int64_t n) {
  if (outs.size() != (betas.empty() ? 0u : 3u))
    throw std::invalid_argument("tempered_outputs: expected 3 arrays (0 without temperatures), got " +
                                std::to_string(outs.size()));
  o.temperatures.n = static_cast<int>(betas.size());
  o.temperatures.beta = betas.data();
  if (betas.empty()) return;
  const int64_t total = n * static_cast<int64_t>(betas.size());
  float** fields[3] = {&o.logprob_t, &o.entropy_t, &o.max_logprob_t};
  const char* names[3] = {"logprob_t", "entropy_t", "max_logprob_t"};
  for (int k = 0; k < 3; ++k) {
    const py::array& a = outs[k];
    if (a.size() != total || a.itemsize() != 4 || !(a.flags() & py::array::c_style))
      throw std::invalid_argument(std::string(names[k]) + ": expected a C-contiguous float32 array of " +
                                  std::to_string(total) + " items");
    *fields[k] = static_cast<float*>(const_cast<void*>(a.data()));
  }
}

mia_fast::TokenStatsOutputs as_outputs(const std::vector<py::array>& outs, int64_t n) {
  if (outs.size() != 9) throw std::invalid_argument("outputs: expected 9 arrays");
  mia_fast::TokenStatsOutputs o;
  o.logprob = vector_ptr<float>(outs[0], n, "logprob");
  o.lse = vector_ptr<float>(outs[1], n, "lse");
  o.entropy = vector_ptr<float>(outs[2], n, "entropy");
  o.var_logp = vector_ptr<float>(outs[3], n, "var_logp");
  o.max_logprob = vector_ptr<float>(outs[4], n, "max_logprob");
  o.argmax = vector_ptr<int64_t>(outs[5], n, "argmax");
  o.log1m_p = vector_ptr<float>(outs[6], n, "log1m_p");
  o.margin = vector_ptr<float>(outs[7], n, "margin");
  o.rank = vector_ptr<int64_t>(outs[8], n, "rank");
  return o;
}

// A 2-d buffer of 2- or 4-byte items with contiguous rows, for amx_bf16_matmul_nt.
struct Operand {
  void* data;
  int64_t rows, cols, row_stride;
};

Operand as_operand(const py::buffer& buffer, const char* name, py::ssize_t itemsize, bool writable) {
  py::buffer_info info = buffer.request(writable);
  if (info.ndim != 2 || info.itemsize != itemsize)
    throw std::invalid_argument(std::string(name) + ": expected a 2-d buffer of " + std::to_string(itemsize) +
                                "-byte items, got " + std::to_string(info.ndim) + " dimensions of " +
                                std::to_string(info.itemsize) + "-byte items");
  if (info.shape[1] > 1 && info.strides[1] != itemsize)
    throw std::invalid_argument(std::string(name) + ": its rows must be contiguous");
  if (info.strides[0] % itemsize != 0 || info.strides[0] < 0)
    throw std::invalid_argument(std::string(name) + ": the row stride must be a whole, positive number of items");
  const int64_t rows = info.shape[0], cols = info.shape[1];
  return {info.ptr, rows, cols, rows > 1 ? static_cast<int64_t>(info.strides[0] / itemsize) : cols};
}

// Streaming accumulator of the fused lm_head path: owns the per-row states, keeps the target
// arrays alive.
class Accumulator {
 public:
  Accumulator(py::array targets, py::array target_logits, int64_t ignore_index, std::vector<double> inv_temperatures)
      : targets_(std::move(targets)), target_logits_(std::move(target_logits)), ignore_index_(ignore_index),
        betas_(std::move(inv_temperatures)) {
    n_ = targets_.ndim() == 1 ? targets_.shape(0) : -1;
    vector_ptr<int64_t>(targets_, n_, "targets");
    vector_ptr<float>(target_logits_, n_, "target_logits");
    states_.resize(static_cast<size_t>(n_));
    mia_fast::init_row_states(states_.data(), n_);
  }

  // Folds a tile of logits: rows [row0, row0 + tile rows) and columns [col0, col0 + tile cols).
  void update(const py::buffer& chunk, const std::string& dtype, int64_t col0, int num_threads, int64_t row0) {
    Matrix m = as_matrix(chunk, dtype);
    if (row0 < 0 || m.rows > n_ - row0)
      throw std::invalid_argument("chunk: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + m.rows) +
                                  ") do not fit in the " + std::to_string(n_) + " rows of the accumulator");
    const int64_t* t = vector_ptr<int64_t>(targets_, n_, "targets") + row0;
    const float* z = vector_ptr<float>(target_logits_, n_, "target_logits") + row0;
    py::gil_scoped_release release;
    mia_fast::fold_columns(m.data, m.dtype, m.rows, m.cols, m.row_stride, col0, t, z, ignore_index_,
                           states_.data() + row0, num_threads,
                           {static_cast<int>(betas_.size()), betas_.data()});
  }

  // Folds the logits hidden @ weight.T (+ bias) of columns [col0, col0 + weight rows), computed on
  // the AMX tiles from bf16 bit patterns (int16 views) and never stored (amx_bf16_fold_columns).
  void update_amx(const py::buffer& hidden, const py::buffer& weight, const py::object& bias, int64_t col0,
                  int num_threads) {
    const Operand A = as_operand(hidden, "hidden", 2, false), W = as_operand(weight, "weight", 2, false);
    if (A.rows != n_)
      throw std::invalid_argument("hidden: expected " + std::to_string(n_) + " rows, got " + std::to_string(A.rows));
    if (A.cols != W.cols)
      throw std::invalid_argument("weight: expected " + std::to_string(A.cols) + " columns (the hidden size), got " +
                                  std::to_string(W.cols));
    const float* b = nullptr;
    py::array bias_array;
    if (!bias.is_none()) {
      bias_array = bias.cast<py::array>();
      b = vector_ptr<float>(bias_array, W.rows, "bias");
    }
    const int64_t* t = vector_ptr<int64_t>(targets_, n_, "targets");
    const float* z = vector_ptr<float>(target_logits_, n_, "target_logits");
    py::gil_scoped_release release;
    mia_fast::amx_bf16_fold_columns(static_cast<const uint16_t*>(A.data), A.row_stride,
                                    static_cast<const uint16_t*>(W.data), W.row_stride, b, n_, W.rows, A.cols, col0, t,
                                    z, ignore_index_, states_.data(), num_threads,
                                    {static_cast<int>(betas_.size()), betas_.data()});
  }

  int64_t finalize(int64_t vocab, const std::vector<py::array>& outs, int num_threads,
                   const std::vector<py::array>& tempered_outs) {
    mia_fast::TokenStatsOutputs o = as_outputs(outs, n_);
    add_tempered(o, betas_, tempered_outs, n_);
    const int64_t* t = vector_ptr<int64_t>(targets_, n_, "targets");
    const float* z = vector_ptr<float>(target_logits_, n_, "target_logits");
    py::gil_scoped_release release;
    return mia_fast::finalize_rows(states_.data(), t, z, ignore_index_, n_, vocab, o, num_threads);
  }

 private:
  py::array targets_, target_logits_;
  int64_t ignore_index_;
  int64_t n_;
  std::vector<double> betas_;
  std::vector<mia_fast::RowState> states_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mia_fast C++ kernels: one-pass token statistics over a vocabulary (see csrc/token_stats.h)";
  m.def(
      "token_stats",
      [](const py::buffer& logits, const std::string& dtype, const py::array& targets, int64_t ignore_index,
         const std::vector<py::array>& outs, int num_threads, const std::vector<double>& inv_temperatures,
         const std::vector<py::array>& tempered_outs) {
        Matrix mtx = as_matrix(logits, dtype);
        const int64_t* t = vector_ptr<int64_t>(targets, mtx.rows, "targets");
        mia_fast::TokenStatsOutputs o = as_outputs(outs, mtx.rows);
        add_tempered(o, inv_temperatures, tempered_outs, mtx.rows);
        py::gil_scoped_release release;
        return mia_fast::token_stats(mtx.data, mtx.dtype, mtx.rows, mtx.cols, mtx.row_stride, t, ignore_index, o,
                                     num_threads);
      },
      py::arg("logits"), py::arg("dtype"), py::arg("targets"), py::arg("ignore_index"), py::arg("outputs"),
      py::arg("num_threads"), py::arg("inv_temperatures") = std::vector<double>{},
      py::arg("tempered_outputs") = std::vector<py::array>{},
      "Fill the 9 output arrays (TokenStats order, mask excluded) for (rows, V) logits, and the 3 "
      "(rows, T) tempered arrays at the inverse temperatures; returns the first bad row or -1.");
  py::class_<Accumulator>(m, "Accumulator")
      .def(py::init<py::array, py::array, int64_t, std::vector<double>>(), py::arg("targets"),
           py::arg("target_logits"), py::arg("ignore_index"), py::arg("inv_temperatures") = std::vector<double>{})
      .def("update", &Accumulator::update, py::arg("chunk"), py::arg("dtype"), py::arg("col0"),
           py::arg("num_threads"), py::arg("row0") = 0)
      .def("update_amx", &Accumulator::update_amx, py::arg("hidden"), py::arg("weight"), py::arg("bias"),
           py::arg("col0"), py::arg("num_threads"))
      .def("finalize", &Accumulator::finalize, py::arg("vocab"), py::arg("outputs"), py::arg("num_threads"),
           py::arg("tempered_outputs") = std::vector<py::array>{});
  m.def("amx_bf16_available", &mia_fast::amx_bf16_available,
        "whether this CPU and OS run AMX-BF16 tiles for this process (MIA_FAST_AMX=0 turns them off)");
  m.def(
      "amx_bf16_matmul_nt",
      [](const py::buffer& a, const py::buffer& w, const py::buffer& out, int num_threads) {
        const Operand A = as_operand(a, "hidden", 2, false), W = as_operand(w, "weight", 2, false);
        const Operand C = as_operand(out, "out", 4, true);
        if (A.cols != W.cols)
          throw std::invalid_argument("weight: expected " + std::to_string(A.cols) + " columns (the hidden size), got " +
                                      std::to_string(W.cols));
        if (C.rows != A.rows || C.cols != W.rows)
          throw std::invalid_argument("out: expected shape (" + std::to_string(A.rows) + ", " + std::to_string(W.rows) +
                                      "), got (" + std::to_string(C.rows) + ", " + std::to_string(C.cols) + ")");
        py::gil_scoped_release release;
        mia_fast::amx_bf16_matmul_nt(static_cast<const uint16_t*>(A.data), A.row_stride,
                                     static_cast<const uint16_t*>(W.data), W.row_stride, A.rows, W.rows, A.cols,
                                     static_cast<float*>(C.data), C.row_stride, num_threads);
      },
      py::arg("hidden"), py::arg("weight"), py::arg("out"), py::arg("num_threads"),
      "out = hidden @ weight.T in fp32 from bf16 bit patterns (int16 views) on AMX tiles; hidden size a "
      "multiple of 32");
  m.def("simd_level", &mia_fast::simd_level, "SIMD level chosen at run time");
  m.def("simd_levels_available", &mia_fast::simd_levels_available, "levels this CPU can run, best first");
  m.def("thread_pool", &mia_fast::thread_pool, "openmp (the process's OpenMP team, torch's) or own (std::thread)");
}
