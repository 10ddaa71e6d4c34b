// Reusable per-thread scratch vectors that stay correct when a call re-enters
// itself on the same thread (a stacked device: a snapshot whose COW or origin
// is another udm device whose target takes the same path). A plain
// `thread_local std::vector` would be clobbered by the inner call; a Scratch
// takes a vector from this thread's pool and gives it back (capacity kept)
// when it goes out of scope, so each nesting level has its own.
//
//   Scratch<uint8_t> buf;          // buf->resize(n); buf->data() ...
#pragma once

#include <utility>
#include <vector>

namespace udm {

template <class T>
class Scratch {
 public:
  Scratch() {
    auto& p = pool();
    if (!p.empty()) {
      v_ = std::move(p.back());
      p.pop_back();
    }
    v_.clear();
  }
  ~Scratch() {
    auto& p = pool();
    if (p.size() < 8) p.push_back(std::move(v_));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  std::vector<T>& operator*() { return v_; }
  std::vector<T>* operator->() { return &v_; }

 private:
  static std::vector<std::vector<T>>& pool() {
    thread_local std::vector<std::vector<T>> p;
    return p;
  }
  std::vector<T> v_;
};

}  // namespace udm
