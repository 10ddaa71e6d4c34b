// Error values for everything below the CLI: no exceptions cross a BlockDevice
// or format boundary (DESIGN.md). A Status carries an errno-style code (so the
// NBD and FUSE exports can map it onto their protocols) and a one-line message
// that names what went wrong.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace udm {

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  // code is an errno value (EINVAL, EIO, ENOSPC, EROFS, ...); must be non-zero.
  static Status Error(int code, std::string message) {
    Status s;
    s.code_ = code == 0 ? EIO : code;
    s.message_ = std::move(message);
    return s;
  }
  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  // "message (strerror)" or "OK".
  std::string to_string() const;
  // Prefix the message with context: "ctx: message". No-op on OK.
  Status context(std::string_view ctx) const;

 private:
  int code_ = 0;
  std::string message_;
};

inline Status Invalid(std::string msg) { return Status::Error(EINVAL, std::move(msg)); }
inline Status IoError(std::string msg) { return Status::Error(EIO, std::move(msg)); }
inline Status Corrupt(std::string msg) { return Status::Error(EUCLEAN, std::move(msg)); }
inline Status NoSpace(std::string msg) { return Status::Error(ENOSPC, std::move(msg)); }
inline Status ReadOnly(std::string msg) { return Status::Error(EROFS, std::move(msg)); }
inline Status NotSupported(std::string msg) { return Status::Error(EOPNOTSUPP, std::move(msg)); }
// Status from the current errno, "what: strerror(errno)".
Status ErrnoStatus(std::string_view what, int err = errno);

// A value or an error Status. Small and clang-14 friendly (std::expected is
// not available there, and the fuzzers are built with clang).
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(implicit)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(implicit)
    if (status_.ok()) status_ = Status::Error(EIO, "internal: Result built from OK status");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace udm

#define UDM_CONCAT_INNER(a, b) a##b
#define UDM_CONCAT(a, b) UDM_CONCAT_INNER(a, b)

// Return the Status if it is an error.
#define UDM_TRY(expr)                                  \
  do {                                                 \
    ::udm::Status udm_try_status_ = (expr);            \
    if (!udm_try_status_.ok()) return udm_try_status_; \
  } while (0)

// UDM_ASSIGN_OR_RETURN(auto x, f()); returns the error Status of a failed Result.
#define UDM_ASSIGN_OR_RETURN(lhs, expr) \
  UDM_ASSIGN_OR_RETURN_IMPL(UDM_CONCAT(udm_result_, __LINE__), lhs, expr)
#define UDM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
