// pybind11 binding of the C++ token-statistics API (mia_fast._C). It takes buffers (numpy views
// of CPU torch tensors, zero-copy; bfloat16 arrives as an int16 view), checks their layout,
// releases the GIL and calls the plain C++ API. C++ exceptions surface as ValueError
// (std::invalid_argument) and IndexError (std::out_of_range).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

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

// Streaming accumulator of the fused lm_head path: owns the per-row states, keeps the target
// arrays alive.
class Accumulator {
 public:
  Accumulator(py::array targets, py::array target_logits, int64_t ignore_index)
      : targets_(std::move(targets)), target_logits_(std::move(target_logits)), ignore_index_(ignore_index) {
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
                           states_.data() + row0, num_threads);
  }

  int64_t finalize(int64_t vocab, const std::vector<py::array>& outs, int num_threads) {
    mia_fast::TokenStatsOutputs o = as_outputs(outs, n_);
    const int64_t* t = vector_ptr<int64_t>(targets_, n_, "targets");
    const float* z = vector_ptr<float>(target_logits_, n_, "target_logits");
    py::gil_scoped_release release;
    return mia_fast::finalize_rows(states_.data(), t, z, ignore_index_, n_, vocab, o, num_threads);
  }

 private:
  py::array targets_, target_logits_;
  int64_t ignore_index_;
  int64_t n_;
  std::vector<mia_fast::RowState> states_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mia_fast C++ kernels: one-pass token statistics over a vocabulary (see csrc/token_stats.h)";
  m.def(
      "token_stats",
      [](const py::buffer& logits, const std::string& dtype, const py::array& targets, int64_t ignore_index,
         const std::vector<py::array>& outs, int num_threads) {
        Matrix mtx = as_matrix(logits, dtype);
        const int64_t* t = vector_ptr<int64_t>(targets, mtx.rows, "targets");
        mia_fast::TokenStatsOutputs o = as_outputs(outs, mtx.rows);
        py::gil_scoped_release release;
        return mia_fast::token_stats(mtx.data, mtx.dtype, mtx.rows, mtx.cols, mtx.row_stride, t, ignore_index, o,
                                     num_threads);
      },
      py::arg("logits"), py::arg("dtype"), py::arg("targets"), py::arg("ignore_index"), py::arg("outputs"),
      py::arg("num_threads"),
      "Fill the 9 output arrays (TokenStats order, mask excluded) for (rows, V) logits; returns the "
      "first bad row or -1.");
  py::class_<Accumulator>(m, "Accumulator")
      .def(py::init<py::array, py::array, int64_t>(), py::arg("targets"), py::arg("target_logits"),
           py::arg("ignore_index"))
      .def("update", &Accumulator::update, py::arg("chunk"), py::arg("dtype"), py::arg("col0"),
           py::arg("num_threads"), py::arg("row0") = 0)
      .def("finalize", &Accumulator::finalize, py::arg("vocab"), py::arg("outputs"), py::arg("num_threads"));
  m.def("simd_level", &mia_fast::simd_level, "SIMD level chosen at run time");
  m.def("simd_levels_available", &mia_fast::simd_levels_available, "levels this CPU can run, best first");
}
